package gateway

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// waitFreed waits for every slot to be free and returns how long it took.
func waitFreed(t *testing.T, f *fixture, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for s := f.gw.queue.Stats(); s.Inflight != 0 || s.Queued != 0; s = f.gw.queue.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("slots still held after %s: %+v", within, s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Bodies that are not what they claim get a 400 with a short,
// OpenAI-shaped error and never reach the engine.
func TestHostileBodies(t *testing.T) {
	eng := &countingEngine{}
	f := newFixture(t, testConfig(), nil, eng)
	deep := `{"prompt":"x","stop":` + strings.Repeat("[", 2000) + strings.Repeat("]", 2000) + `}`
	for name, body := range map[string]string{
		"nested 2,000 deep": deep,
		"invalid UTF-8":     "{\"prompt\":\"a\xff\xfeb\",\"max_tokens\":5}",
	} {
		resp := f.post(t, "/v1/completions", body)
		e := apiErr(t, resp)
		if resp.StatusCode != 400 || e.Code != "invalid_json" || len(e.Message) > 400 {
			t.Errorf("%s: %d %s (%d bytes of message), want 400 invalid_json with a short message", name, resp.StatusCode, e.Message, len(e.Message))
		}
	}
	if n := eng.n.Load(); n != 0 {
		t.Errorf("the engine got %d of them", n)
	}
}

type countingEngine struct{ n atomic.Int64 }

func (c *countingEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.n.Add(1)
	io.WriteString(w, `{}`)
}

// A body sent a byte at a time, slower than gateway.client_timeout, gets
// 408 with an OpenAI-shaped error; nothing reaches the engine.
func TestSlowBody(t *testing.T) {
	cfg := testConfig()
	cfg.ClientTimeout = 300 * time.Millisecond
	eng := &countingEngine{}
	f := newFixture(t, cfg, nil, eng)
	c, err := net.Dial("tcp", strings.TrimPrefix(f.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"prompt":"x","max_tokens":5}`
	fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	start := time.Now()
	go func() {
		for i := range len(body) {
			if _, err := c.Write([]byte{body[i]}); err != nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	e := apiErr(t, resp)
	if resp.StatusCode != http.StatusRequestTimeout || e.Code != "request_timeout" {
		t.Fatalf("a slow body: %d %+v, want 408 request_timeout", resp.StatusCode, e)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("the 408 came after %s; the timeout is 300ms", d)
	}
	if eng.n.Load() != 0 {
		t.Error("the engine got the slow request")
	}
}

// endless is an engine that streams events until its client goes, and
// says when that was.
type endless struct{ gone chan struct{} }

func (e *endless) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/event-stream")
	event := "data: " + strings.Repeat("x", 4000) + "\n\n"
	for r.Context().Err() == nil {
		if _, err := io.WriteString(w, event); err != nil {
			break
		}
		w.(http.Flusher).Flush()
	}
	close(e.gone)
}

// A client that asks for a stream and never reads it is disconnected once
// it has read nothing for gateway.client_timeout: the engine's request is
// cancelled, the slot freed, and the request counted as cancelled.
func TestClientThatNeverReads(t *testing.T) {
	cfg := testConfig()
	cfg.ClientTimeout = 300 * time.Millisecond
	eng := &endless{gone: make(chan struct{})}
	f := newFixture(t, cfg, nil, eng)
	d := net.Dialer{}
	c, err := d.Dial("tcp", strings.TrimPrefix(f.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	body := `{"prompt":"x","stream":true}`
	fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	select {
	case <-eng.gone:
	case <-time.After(20 * time.Second):
		t.Fatal("the engine still streams to a client that reads nothing")
	}
	waitFreed(t, f, 5*time.Second)
	if n := metricValue(f.gw.metrics.requests.WithLabelValues(routeCompletions, "cancelled", "499"), 1); n != 1 {
		t.Errorf("llmlab_requests_total{outcome=cancelled,code=499} = %v, want 1", n)
	}
}

// hanging is an engine that accepts a request and never answers, or, with
// stall, starts a stream and then sends nothing more.
type hanging struct {
	stall bool
	gone  chan struct{}
}

func (h *hanging) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body) // as an engine does; then net/http notices a client that leaves
	if h.stall {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n")
		w.(http.Flusher).Flush()
	}
	<-r.Context().Done()
	h.gone <- struct{}{}
}

// An engine that sends nothing for engine.response_timeout: a non-streamed
// request gets 504 engine_timeout, a stream under way ends with an SSE
// error event; the engine's requests are cancelled and the slots freed.
func TestEngineThatHangs(t *testing.T) {
	cfg := testConfig()
	cfg.ResponseTimeout = 300 * time.Millisecond
	t.Run("never answers", func(t *testing.T) {
		eng := &hanging{gone: make(chan struct{}, 1)}
		f := newFixture(t, cfg, nil, eng)
		start := time.Now()
		resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":5}`)
		e := apiErr(t, resp)
		if resp.StatusCode != http.StatusGatewayTimeout || e.Code != "engine_timeout" || !strings.Contains(e.Message, "engine.response_timeout") {
			t.Fatalf("%d %+v, want 504 engine_timeout naming engine.response_timeout", resp.StatusCode, e)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("answered after %s; the timeout is 300ms", d)
		}
		<-eng.gone
		waitFreed(t, f, 5*time.Second)
	})
	t.Run("stalls mid-stream", func(t *testing.T) {
		eng := &hanging{stall: true, gone: make(chan struct{}, 1)}
		f := newFixture(t, cfg, nil, eng)
		resp := f.post(t, "/v1/completions", `{"prompt":"x","stream":true}`)
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(data), `"text":"a"`) || !strings.Contains(string(data), `"code":"engine_error"`) {
			t.Fatalf("the stream: %s, want the first event, then an error event", data)
		}
		<-eng.gone
		waitFreed(t, f, 5*time.Second)
		if n := testutil.ToFloat64(f.gw.metrics.requests.WithLabelValues(routeCompletions, "ok", "200")); n != 0 {
			t.Errorf("the failed stream counted as ok")
		}
	})
}
