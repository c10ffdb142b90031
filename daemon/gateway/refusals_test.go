package gateway

// Requests the gateway refuses or fails: its error answers, rate limits, a
// flood, and an engine that is down.

import (
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/ratelimit"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

func TestErrors(t *testing.T) {
	keys, _ := auth.Parse("k", []byte("alice sk-0123456789abcdef\n"))
	f := newFixture(t, testConfig(), keys, &fakeengine.Engine{})
	good := "Bearer sk-0123456789abcdef"
	tests := []struct {
		name, path, body, authz string
		status                  int
		code                    string
	}{
		{"no key", "/v1/completions", `{"prompt":"x"}`, "", 401, "invalid_api_key"},
		{"wrong key", "/v1/completions", `{"prompt":"x"}`, "Bearer sk-wrong-000000000000", 401, "invalid_api_key"},
		{"too large", "/v1/completions", `{"prompt":"` + strings.Repeat("x", 5000) + `"}`, good, 413, "request_too_large"},
		{"bad json", "/v1/completions", `{"prompt":`, good, 400, "invalid_json"},
		{"unknown model", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user"}]}`, good, 404, "model_not_found"},
		{"unknown route", "/v1/embeddings", `{}`, good, 404, "unknown_url"},
		{"too many sequences", "/v1/completions", `{"prompt":["a","b","c"],"n":2}`, good, 400, "too_many_sequences"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.post(t, tt.path, tt.body, "Authorization", tt.authz)
			e := apiErr(t, resp)
			if resp.StatusCode != tt.status || e.Code != tt.code {
				t.Errorf("answer %d %q (%s), want %d %q", resp.StatusCode, e.Code, e.Message, tt.status, tt.code)
			}
		})
	}
	// A body of unknown length (chunked) is held to the same limit.
	for _, tt := range []struct {
		size   int
		status int
	}{{5000, 413}, {3000, 200}} {
		body := io.MultiReader(strings.NewReader(`{"prompt":"`), strings.NewReader(strings.Repeat("x", tt.size)), strings.NewReader(`"}`))
		req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/completions", body)
		req.Header.Set("Authorization", good)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if req.ContentLength != 0 || resp.StatusCode != tt.status {
			t.Errorf("chunked body of %d bytes: %d (sent with length %d), want %d", tt.size, resp.StatusCode, req.ContentLength, tt.status)
		}
	}
	resp, _ := http.Get(f.srv.URL + "/v1/completions")
	if e := apiErr(t, resp); resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET /v1/completions = %d %+v, want 405 with Allow: POST", resp.StatusCode, e)
	}
	if v := metricValue(f.gw.metrics.requests.WithLabelValues("completions", "unauthorized", "401"), 2); v != 2 {
		t.Errorf("unauthorized counted %v times, want 2", v)
	}
}

func TestRateLimited(t *testing.T) {
	cfg := testConfig()
	cfg.RateLimit = ratelimit.Config{Rate: 0.5, Burst: 2}
	f := newFixture(t, cfg, nil, &fakeengine.Engine{})
	for i := range 2 {
		resp := f.post(t, "/v1/completions", `{"prompt":"x"}`)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d within burst: %d", i, resp.StatusCode)
		}
	}
	resp := f.post(t, "/v1/completions", `{"prompt":"x"}`)
	e := apiErr(t, resp)
	if resp.StatusCode != 429 || e.Code != "rate_limit_exceeded" || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("answer %d %q Retry-After %q, want 429 rate_limit_exceeded Retry-After 2", resp.StatusCode, e.Code, resp.Header.Get("Retry-After"))
	}
}

// A flood beyond max_inflight + max_queued is refused at once, and the
// engine never runs more than max_inflight.
func TestFloodRefusedFast(t *testing.T) {
	hold := make(chan struct{})
	eng := &fakeengine.Engine{Hold: hold}
	cfg := testConfig()
	cfg.Queue.MaxInflight, cfg.Queue.MaxQueued = 2, 3
	f := newFixture(t, cfg, nil, eng)
	started := eng.Started()

	type answer struct {
		status int
		retry  string
		took   time.Duration
	}
	const total = 20
	answers := make(chan answer, total)
	var wg sync.WaitGroup
	for range total {
		wg.Go(func() {
			start := time.Now()
			resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":1}`)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answers <- answer{resp.StatusCode, resp.Header.Get("Retry-After"), time.Since(start)}
		})
	}
	// 2 reach the engine, 3 wait; the other 15 must be answered while the
	// engine still holds the first two.
	<-started
	<-started
	refused := 0
	for refused < total-5 {
		select {
		case a := <-answers:
			if a.status != 429 && a.status != 503 {
				t.Fatalf("answer during the flood: %d, want 429 or 503", a.status)
			}
			if a.retry == "" {
				t.Fatalf("%d without Retry-After", a.status)
			}
			refused++
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d refusals arrived while the engine was busy", refused, total-5)
		}
	}
	if s := f.gw.queue.Stats(); s.Inflight != 2 || s.Queued != 3 {
		t.Fatalf("queue = %+v, want 2 in flight and 3 queued", s)
	}
	close(hold)
	wg.Wait()
	close(answers)
	ok := 0
	for a := range answers {
		if a.status == 200 {
			ok++
		}
	}
	if ok != 5 {
		t.Errorf("%d answered 200 after the engine resumed, want 5", ok)
	}
	// The duration histogram keeps answers and refusals apart, so that the
	// fast refusals do not pull the answered requests' percentiles down.
	for res, want := range map[string]uint64{"ok": 5, "refused": total - 5} {
		if n := histogramCount(t, f.gw.metrics.duration.WithLabelValues(routeCompletions, res), want); n != want {
			t.Errorf("llmlab_request_duration_seconds{result=%q}: %d observations, want %d", res, n, want)
		}
	}
	if m := eng.Stats().MaxRunning; m > 2 {
		t.Errorf("the engine ran %d requests at once, want at most 2", m)
	}
}

func TestEngineDown(t *testing.T) {
	f := newFixture(t, testConfig(), nil, &fakeengine.Engine{})
	f.engine.Close()
	resp := f.post(t, "/v1/completions", `{"prompt":"x"}`)
	e := apiErr(t, resp)
	if resp.StatusCode != 503 || e.Code != "engine_unavailable" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("engine down: %d %q Retry-After %q, want 503 engine_unavailable with Retry-After", resp.StatusCode, e.Code, resp.Header.Get("Retry-After"))
	}
	if f.gw.queue.Stats().Inflight != 0 {
		t.Fatal("slot not released after an engine failure")
	}
}
