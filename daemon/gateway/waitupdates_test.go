package gateway

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// readUntil reads the stream's lines until one has the prefix, and
// returns the lines read; it fails at the end of the stream.
func readUntil(t *testing.T, r *bufio.Reader, prefix string) []string {
	t.Helper()
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if line != "" {
			lines = append(lines, strings.TrimRight(line, "\n"))
		}
		if strings.HasPrefix(line, prefix) {
			return lines
		}
		if err != nil {
			t.Fatalf("the stream ended without a line starting %q: %q", prefix, lines)
		}
	}
}

// A streamed request that waits is answered 200 at once and told its
// place in comment lines, then gets its answer in the same stream, with
// the time it waited.
func TestWaitUpdates(t *testing.T) {
	c := testConfig()
	c.Queue.MaxInflight = 1
	c.WaitUpdates = 100 * time.Millisecond
	eng := &fakeengine.Engine{Hold: make(chan struct{})}
	f := newFixture(t, c, nil, eng)
	first := make(chan int, 1)
	go func() {
		resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":2}`)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		first <- resp.StatusCode
	}()
	<-eng.Started()
	resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":2,"stream":true}`)
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("a waiting streamed request: %d %q, want 200 and an event stream at once", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	r := bufio.NewReader(resp.Body)
	lines := readUntil(t, r, ": llmlab queued:")
	if want := ": llmlab queued: 0 ahead, predicted start in "; !strings.HasPrefix(lines[len(lines)-1], want) {
		t.Errorf("the update %q, want it to start %q", lines[len(lines)-1], want)
	}
	close(eng.Hold)
	lines = readUntil(t, r, "data: [DONE]")
	text := strings.Join(lines, "\n")
	if !strings.Contains(text, ": llmlab waited ") || strings.Count(text, `"text"`) < 2 {
		t.Errorf("the rest of the stream:\n%s\nwant the time waited and the answer's two tokens", text)
	}
	if code := <-first; code != 200 {
		t.Errorf("the first request: %d", code)
	}
}

// A refusal after the status went out (here the queue's deadline) comes
// as an OpenAI-shaped error event in the stream, and is counted with the
// status it would have had.
func TestWaitUpdatesThenRefused(t *testing.T) {
	c := testConfig()
	c.Queue.MaxInflight = 1
	c.Queue.MaxWait = 600 * time.Millisecond
	c.WaitUpdates = 100 * time.Millisecond
	eng := &fakeengine.Engine{Hold: make(chan struct{})}
	f := newFixture(t, c, nil, eng)
	defer close(eng.Hold)
	go func() {
		resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":2}`)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
	<-eng.Started()
	resp := f.post(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":2,"stream":true}`)
	defer resp.Body.Close()
	lines := readUntil(t, bufio.NewReader(resp.Body), "data: ")
	last := lines[len(lines)-1]
	if resp.StatusCode != 200 || !strings.Contains(last, `"code":"queue_timeout"`) || !strings.Contains(last, `"type":"service_unavailable"`) ||
		lines[len(lines)-2] != ": llmlab status 503" {
		t.Errorf("%d, last lines %q: want 200, then the status the refusal would have had and a queue_timeout error event", resp.StatusCode, lines[max(0, len(lines)-2):])
	}
	resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(f.gw.metrics.requests.WithLabelValues(routeChat, "queue_timeout", "503")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the refusal is not counted as a 503 queue_timeout")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An engine's error answer after the status went out comes as an error
// event carrying the engine's message, counted with the engine's status.
func TestWaitUpdatesThenEngineError(t *testing.T) {
	c := testConfig()
	c.Queue.MaxInflight = 1
	c.WaitUpdates = 100 * time.Millisecond
	release, started := make(chan struct{}), make(chan struct{}, 2)
	engine := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"object":"error","message":"the engine says no","type":"BadRequestError","param":null,"code":400}`)
	})
	f := newFixture(t, c, nil, engine)
	go func() {
		resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":2}`)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
	<-started
	resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":2,"stream":true}`)
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	readUntil(t, r, ": llmlab queued:")
	close(release)
	lines := readUntil(t, r, "data: ")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, `data: {"error":{"object":"error","message":"the engine says no"`) {
		t.Errorf("last line %q: want the engine's error as an error event", last)
	}
	resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	// Both requests: the first answered 400 as usual, the second in its stream.
	for testutil.ToFloat64(f.gw.metrics.requests.WithLabelValues(routeCompletions, "invalid", "400")) != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the engine's error is not counted as a 400")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
