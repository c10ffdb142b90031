package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/daemon/ratelimit"
	"github.com/llmlab/llmlab/daemon/supervisor"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

type alwaysOn struct{}

func (alwaysOn) Wake()                   {}
func (alwaysOn) State() supervisor.State { return supervisor.Ready }

type fixture struct {
	gw     *Gateway
	srv    *httptest.Server
	engine *httptest.Server
	reg    *prometheus.Registry
}

func testConfig() Config {
	return Config{
		Limits:       testLimits,
		MaxBodyBytes: 4096,
		Queue:        queue.Config{MaxInflight: 4, MaxQueued: 8, MaxWait: 5 * time.Second, MaxBatch: 4},
		AccessLog:    true,
	}
}

func newFixture(t *testing.T, cfg Config, keys *auth.Keys, engine http.Handler) *fixture {
	t.Helper()
	es := httptest.NewServer(engine)
	t.Cleanup(es.Close)
	u, _ := url.Parse(es.URL)
	cfg.EngineURL = u
	reg := prometheus.NewRegistry()
	gw := New(cfg, keys, alwaysOn{}, nil, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewServer(gw.Handler())
	t.Cleanup(srv.Close)
	return &fixture{gw: gw, srv: srv, engine: es, reg: reg}
}

func (f *fixture) post(t *testing.T, path, body string, hdr ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", f.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// apiErr decodes an OpenAI-shaped error answer.
func apiErr(t *testing.T, resp *http.Response) apiError {
	t.Helper()
	defer resp.Body.Close()
	var e struct {
		Error *apiError `json:"error"`
	}
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Fatalf("answer %d %s is not an OpenAI-shaped error", resp.StatusCode, data)
	}
	if e.Error.RequestID == "" || e.Error.RequestID != resp.Header.Get("X-Request-Id") {
		t.Fatalf("error request id %q, header %q: want equal and set", e.Error.RequestID, resp.Header.Get("X-Request-Id"))
	}
	return *e.Error
}

func TestNonStreamedPassesThroughIntact(t *testing.T) {
	var got struct {
		body []byte
		hdr  http.Header
	}
	const answer = `{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"hello"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`
	engine := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.body, _ = io.ReadAll(r.Body)
		got.hdr = r.Header.Clone()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answer)
	})
	f := newFixture(t, testConfig(), nil, engine)
	in := `{"model":"m","prompt":"hi","max_tokens":5}`
	resp := f.post(t, "/v1/completions", in, "X-Request-Id", "req-42", "Connection", "close")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != answer {
		t.Fatalf("answer = %d %s, want 200 %s", resp.StatusCode, body, answer)
	}
	if string(got.body) != in {
		t.Errorf("engine got %s, want %s", got.body, in)
	}
	if got.hdr.Get("X-Request-Id") != "req-42" || resp.Header.Get("X-Request-Id") != "req-42" {
		t.Errorf("request id: engine %q, client %q, want req-42 both", got.hdr.Get("X-Request-Id"), resp.Header.Get("X-Request-Id"))
	}
	if v := metricValue(f.gw.metrics.requests.WithLabelValues("completions", "ok", "200"), 1); v != 1 {
		t.Errorf("requests_total{ok,200} = %v, want 1", v)
	}
	if v := metricValue(f.gw.metrics.clientTokens.WithLabelValues("anonymous", "completion"), 1); v != 1 {
		t.Errorf("client completion tokens = %v, want 1 (from usage)", v)
	}
}

func TestAuthorizationNotForwarded(t *testing.T) {
	keys, _ := auth.Parse("k", []byte("alice sk-0123456789abcdef\n"))
	eng := &fakeengine.Engine{}
	f := newFixture(t, testConfig(), keys, eng)
	resp := f.post(t, "/v1/completions", `{"prompt":"x"}`, "Authorization", "Bearer sk-0123456789abcdef")
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if h := eng.Headers()[0]; h.Get("Authorization") != "" {
		t.Errorf("engine saw Authorization %q", h.Get("Authorization"))
	}
	if v := metricValue(f.gw.metrics.clientReqs.WithLabelValues("alice"), 1); v != 1 {
		t.Errorf("client_requests_total{client=alice} = %v, want 1", v)
	}
}

// The engine sends one event, then waits: the client must see that event
// before the engine finishes, so events are flushed as they arrive.
func TestStreamFlushedPerEvent(t *testing.T) {
	release := make(chan struct{})
	engine := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"text\":\"b\"}]}\n\ndata: [DONE]\n\n")
	})
	f := newFixture(t, testConfig(), nil, engine)
	resp := f.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"stream":true}`)
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type = %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || !strings.Contains(line, `"text":"a"`) {
		t.Fatalf("first event = %q, %v", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if !strings.HasSuffix(string(rest), "data: [DONE]\n\n") || !strings.Contains(string(rest), `"text":"b"`) {
		t.Fatalf("rest of stream = %q", rest)
	}
}

func TestStreamIntact(t *testing.T) {
	eng := &fakeengine.Engine{}
	f := newFixture(t, testConfig(), nil, eng)
	resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":200,"stream":true,"stream_options":{"include_usage":true}}`)
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if n := strings.Count(string(data), `"text":" tok"`); n != 200 {
		t.Errorf("stream carried %d tokens, want 200", n)
	}
	if !strings.HasSuffix(string(data), "data: [DONE]\n\n") {
		t.Errorf("stream does not end with [DONE]")
	}
	if v := metricValue(f.gw.metrics.clientTokens.WithLabelValues("anonymous", "completion"), 200); v != 200 {
		t.Errorf("completion tokens counted = %v, want 200", v)
	}
	waitFor(t, func() bool { return testutil.CollectAndCount(f.gw.metrics.ttft) == 1 }, "a ttft observation")
	if n := testutil.CollectAndCount(f.gw.metrics.ttft); n != 1 {
		t.Errorf("ttft series = %d, want 1", n)
	}
}

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

func TestDisconnectCancelsUpstreamAndFreesSlot(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	eng := &fakeengine.Engine{Hold: hold}
	cfg := testConfig()
	cfg.Queue.MaxInflight = 1
	f := newFixture(t, cfg, nil, eng)
	started := eng.Started()

	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	go doCtx(ctx1, f.srv.URL+"/v1/completions", `{"prompt":"in flight","stream":true}`)
	<-started
	go doCtx(ctx2, f.srv.URL+"/v1/completions", `{"prompt":"queued"}`)
	waitFor(t, func() bool { return f.gw.queue.Stats().Queued == 1 }, "a queued request")

	cancel2() // the queued client leaves
	waitFor(t, func() bool { return f.gw.queue.Stats().Queued == 0 }, "the queued request to leave")
	cancel1() // the in-flight client leaves
	waitFor(t, func() bool { return eng.Stats().Cancelled == 1 }, "the engine to see the cancellation")
	waitFor(t, func() bool { return f.gw.queue.Stats().Inflight == 0 }, "the slot to be freed")
	if n := eng.Stats().Requests; n != 1 {
		t.Errorf("engine got %d requests, want 1 (the queued one never reached it)", n)
	}
}

func doCtx(ctx context.Context, url, body string) {
	req, _ := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
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

func TestModelsFromConfig(t *testing.T) {
	f := newFixture(t, testConfig(), nil, &fakeengine.Engine{})
	f.engine.Close() // answered without the engine
	resp, err := http.Get(f.srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Data []struct{ ID string } `json:"data"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(list.Data) != 1 || list.Data[0].ID != "m" {
		t.Fatalf("/v1/models = %d %+v", resp.StatusCode, list)
	}
}

func TestCoalesce(t *testing.T) {
	eng := &fakeengine.Engine{}
	cfg := testConfig()
	cfg.Coalesce = true
	cfg.Queue.BatchWindow = 50 * time.Millisecond
	cfg.Queue.MaxBatch = 3
	f := newFixture(t, cfg, nil, eng)

	type answer struct {
		prompt string
		body   map[string]any
	}
	answers := make(chan answer, 3)
	for i, p := range []string{"a", "b", "c"} {
		go func() {
			resp := f.post(t, "/v1/completions", `{"model":"m","prompt":"`+p+`","max_tokens":`+[]string{"3", "3", "3"}[i]+`}`)
			var m map[string]any
			json.NewDecoder(resp.Body).Decode(&m)
			resp.Body.Close()
			answers <- answer{p, m}
		}()
	}
	for range 3 {
		a := <-answers
		choices, _ := a.body["choices"].([]any)
		if len(choices) != 1 {
			t.Fatalf("answer for %s: %v, want one choice", a.prompt, a.body)
		}
		ch := choices[0].(map[string]any)
		if ch["index"] != float64(0) || ch["token_ids"] != nil || ch["prompt_token_ids"] != nil {
			t.Errorf("choice %v: want index 0 and no token ids", ch)
		}
		u := a.body["usage"].(map[string]any)
		if u["prompt_tokens"] != float64(10) || u["completion_tokens"] != float64(3) || u["total_tokens"] != float64(13) {
			t.Errorf("usage = %v, want the member's own 10 + 3", u)
		}
	}
	if n := eng.Stats().Requests; n != 1 {
		t.Fatalf("engine got %d requests, want 1 coalesced", n)
	}
	var up map[string]any
	json.Unmarshal(eng.Bodies()[0], &up)
	if ps, _ := up["prompt"].([]any); len(ps) != 3 {
		t.Fatalf("upstream prompt = %v, want the 3 prompts", up["prompt"])
	}
	if f.gw.queue.Stats().Inflight != 0 {
		t.Fatal("slots not released after the coalesced request")
	}
}

// metricValue waits briefly for c to reach want (requests are counted just
// after their answer is written) and returns its value.
func metricValue(c prometheus.Collector, want float64) float64 {
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := testutil.ToFloat64(c)
		if v == want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(time.Millisecond)
	}
}

// histogramCount waits briefly for h to count want observations and
// returns its count.
func histogramCount(t *testing.T, h prometheus.Observer, want uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var m dto.Metric
		if err := h.(prometheus.Metric).Write(&m); err != nil {
			t.Fatal(err)
		}
		n := m.GetHistogram().GetSampleCount()
		if n == want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(time.Millisecond)
	}
}

// An engine that dies in the middle of a stream: the client's stream ends
// with an OpenAI-shaped error event rather than a cut connection.
func TestStreamEndsWithErrorEventWhenEngineDies(t *testing.T) {
	engine := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n")
		w.(http.Flusher).Flush()
		conn, _, _ := http.NewResponseController(w).Hijack()
		conn.Close() // the engine crashes
	})
	f := newFixture(t, testConfig(), nil, engine)
	resp := f.post(t, "/v1/completions", `{"prompt":"x","stream":true}`)
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading the stream: %v (want a clean end)", err)
	}
	if !strings.Contains(string(data), `"text":"a"`) || !strings.HasSuffix(string(data), sseError) {
		t.Fatalf("stream = %q, want the token and then the error event", data)
	}
	// The status was 200 when the stream began; the outcome says it failed.
	if v := metricValue(f.gw.metrics.requests.WithLabelValues("completions", "engine_error", "200"), 1); v != 1 {
		t.Errorf("requests_total{engine_error,200} = %v, want 1", v)
	}
}
