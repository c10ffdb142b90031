package main_test

// Integration: SIGTERM drains, and SIGHUP reloads the config.

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

// SIGTERM: queued requests get 503 at once, the in-flight one finishes,
// the process exits 0.
// drainingDaemon starts llmlabd with one engine slot and a request held in
// it; release lets the engine answer, and waitExit checks that the held
// request got 200 and llmlabd then exited 0.
func drainingDaemon(t *testing.T) (d *daemon, release func(), waitExit func()) {
	t.Helper()
	hold := make(chan struct{})
	eng := &fakeengine.Engine{Hold: hold}
	es := httptest.NewServer(eng)
	t.Cleanup(es.Close)
	d = start(t, nil, nil, "--config", writeConfig(t, baseConfig(es.URL, "max_inflight = 1\nmax_batch = 1\nmax_wait = \"30s\"")))
	started := eng.Started()
	inflight := make(chan int, 1)
	go func() {
		resp, _ := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"a","max_tokens":3}`)
		inflight <- resp.StatusCode
	}()
	<-started
	waitExit = func() {
		t.Helper()
		if code := <-inflight; code != 200 {
			t.Errorf("in-flight request finished with %d, want 200", code)
		}
		select {
		case err := <-d.exited:
			if err != nil {
				t.Fatalf("exit: %v, want 0", err)
			}
			d.exited <- nil
		case <-time.After(10 * time.Second):
			t.Fatal("did not exit after draining")
		}
	}
	return d, func() { close(hold) }, waitExit
}

func TestSIGTERMDrains(t *testing.T) {
	d, release, waitExit := drainingDaemon(t)
	queued := make(chan *http.Response, 1)
	go func() {
		resp, _ := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"b","max_tokens":3}`)
		queued <- resp
	}()
	waitStatus(t, d, func(q queueStatus) bool { return q.Queued == 1 })

	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case resp := <-queued:
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("queued request on SIGTERM: %d, want 503 with Retry-After", resp.StatusCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued request not answered on SIGTERM")
	}
	select {
	case err := <-d.exited:
		t.Fatalf("exited (%v) while a request was still in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	waitExit()
}

// A connection accepted before SIGTERM whose request comes after it is
// answered: net/http's Shutdown alone closes such a connection unanswered,
// which a client sees as a bare EOF.
func TestSIGTERMAnswersAcceptedConnection(t *testing.T) {
	d, release, waitExit := drainingDaemon(t)
	addr := strings.TrimPrefix(d.api, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Let llmlabd accept it (a connection still in the kernel's backlog
	// when the listener closes is reset, which is another matter).
	time.Sleep(time.Second)
	d.cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break // the listener is closed: the drain has begun
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections 5 s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}

	body := `{"model":"m","prompt":"b","max_tokens":3}`
	fmt.Fprintf(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("request on a connection accepted before SIGTERM: %v, want an answer", err)
	}
	resp.Body.Close()
	// The engine's one slot is taken, so it would have to queue: 503.
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !resp.Close {
		t.Errorf("answer %d, Retry-After %q, Connection: close %v; want 503 with Retry-After, closing", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close)
	}
	release()
	waitExit()
}

// SIGHUP applies a new config without dropping connections, and refuses a
// bad one, keeping the old.
func TestSIGHUPReloads(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	path := writeConfig(t, baseConfig(es.URL, ""))
	d := start(t, nil, nil, "--config", path)
	req := `{"model":"m","prompt":"x","max_tokens":500}`
	if resp, body := post(t, d.api+"/v1/completions", req); resp.StatusCode != 200 {
		t.Fatalf("before reload: %d %s", resp.StatusCode, body)
	}
	os.WriteFile(path, []byte(baseConfig(es.URL, "")+"[limits]\nmax_tokens = 100\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "msg=reloaded")
	if !strings.Contains(d.logs.String(), "limits.max_tokens: 1024 -> 100") {
		t.Errorf("reload log does not say what changed:\n%s", d.logs.String())
	}
	if resp, _ := post(t, d.api+"/v1/completions", req); resp.StatusCode != 400 {
		t.Fatalf("after reload to max_tokens=100: %d, want 400", resp.StatusCode)
	}
	os.WriteFile(path, []byte(baseConfig(es.URL, "max_inflight = -1")), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "reload refused")
	if !strings.Contains(d.logs.String(), "queue.max_inflight = -1") {
		t.Errorf("refusal does not name key and value:\n%s", d.logs.String())
	}
	if resp, _ := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"x","max_tokens":50}`); resp.StatusCode != 200 {
		t.Fatalf("after a refused reload: %d, want 200 (old config kept)", resp.StatusCode)
	}
}
