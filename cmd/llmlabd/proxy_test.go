package main_test

// Integration: requests proxied to the engine, streamed or not, a flood
// past the queue, and a client that disconnects.

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

func TestProxiesStreamedAndNonStreamed(t *testing.T) {
	eng := &fakeengine.Engine{}
	es := httptest.NewServer(eng)
	defer es.Close()
	d := start(t, nil, nil, "--config", writeConfig(t, baseConfig(es.URL, "")))

	resp, body := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"hi","max_tokens":7}`)
	var c struct {
		Choices []struct{ Text string }
		Usage   struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if err := json.Unmarshal(body, &c); err != nil || resp.StatusCode != 200 || len(c.Choices) != 1 || c.Usage.CompletionTokens != 7 {
		t.Fatalf("non-streamed: %d %s", resp.StatusCode, body)
	}
	if c.Choices[0].Text != strings.Repeat(" tok", 7) {
		t.Errorf("text = %q", c.Choices[0].Text)
	}

	resp, body = post(t, d.api+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":200,"stream":true}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("streamed: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := strings.Count(string(body), "data: ")
	if events != 201 || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Fatalf("stream had %d events, want 200 tokens and [DONE]", events)
	}

	// /metrics counts both, on the metrics listener only.
	mresp, err := http.Get(d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mdata, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`llmlab_requests_total{code="200",outcome="ok",route="completions"} 1`,
		`llmlab_requests_total{code="200",outcome="ok",route="chat"} 1`,
	} {
		if !strings.Contains(string(mdata), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if r, _ := http.Get(d.api + "/metrics"); r.StatusCode != 404 {
		t.Errorf("/metrics on the API listener: %d, want 404", r.StatusCode)
	}
	var st struct {
		Engine struct{ State string }
		Queue  struct {
			MaxInflight int `json:"max_inflight"`
		}
	}
	r, _ := http.Get(d.api + "/status")
	json.NewDecoder(r.Body).Decode(&st)
	r.Body.Close()
	if st.Engine.State == "" || st.Queue.MaxInflight != 256 {
		t.Errorf("/status = %+v", st)
	}
	// Access log line with the request id.
	if !strings.Contains(d.logs.String(), "msg=request request_id=") {
		t.Errorf("no access-log line:\n%s", d.logs.String())
	}
}

// A flood beyond max_inflight + max_queued gets fast 429/503 with
// Retry-After, and the engine never runs more than max_inflight.
func TestFlood(t *testing.T) {
	eng := &fakeengine.Engine{Delay: 300 * time.Millisecond}
	es := httptest.NewServer(eng)
	defer es.Close()
	d := start(t, nil, nil, "--config", writeConfig(t, baseConfig(es.URL,
		"max_inflight = 4\nmax_queued = 4\nmax_batch = 4\nmax_wait = \"5s\"")))

	const total = 40
	type answer struct {
		code  int
		retry string
		took  time.Duration
	}
	ch := make(chan answer, total)
	var wg sync.WaitGroup
	for range total {
		wg.Go(func() {
			start := time.Now()
			resp, _ := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"x","max_tokens":1}`)
			ch <- answer{resp.StatusCode, resp.Header.Get("Retry-After"), time.Since(start)}
		})
	}
	wg.Wait()
	close(ch)
	ok, refused := 0, 0
	for a := range ch {
		switch a.code {
		case 200:
			ok++
		case 429, 503:
			refused++
			if a.retry == "" {
				t.Errorf("%d without Retry-After", a.code)
			}
			if a.took > 250*time.Millisecond {
				// Refusals come at once, well before the engine's 300 ms answer.
				t.Errorf("refusal took %s", a.took)
			}
		default:
			t.Errorf("unexpected status %d", a.code)
		}
	}
	if ok < 8 || ok+refused != total {
		t.Errorf("%d ok, %d refused of %d; want at least max_inflight+max_queued = 8 ok and the rest refused", ok, refused, total)
	}
	if m := eng.Stats().MaxRunning; m > 4 {
		t.Errorf("engine ran %d at once, want at most 4", m)
	}
}

// A client that disconnects frees its slot: with max_inflight 1, the next
// request is served as soon as the first client leaves, and the engine saw
// the first request cancelled.
func TestDisconnectFreesSlot(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	eng := &fakeengine.Engine{Hold: hold}
	es := httptest.NewServer(eng)
	defer es.Close()
	d := start(t, nil, nil, "--config", writeConfig(t, baseConfig(es.URL, "max_inflight = 1\nmax_batch = 1\nmax_wait = \"30s\"")))
	started := eng.Started()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", d.api+"/v1/completions", strings.NewReader(`{"model":"m","prompt":"a","stream":true}`))
	go http.DefaultClient.Do(req)
	<-started
	waitStatus(t, d, func(q queueStatus) bool { return q.Inflight == 1 })
	cancel()
	waitStatus(t, d, func(q queueStatus) bool { return q.Inflight == 0 })
	deadline := time.Now().Add(5 * time.Second)
	for eng.Stats().Cancelled != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the engine did not see the client leave")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
