package gateway

// Streamed answers: flushed per event, intact, ended with an error event
// when the engine dies, and cancelled upstream when the client goes.

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

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
