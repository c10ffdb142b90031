package connlimit

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Past the cap a connection gets a 503 with Retry-After and an
// OpenAI-shaped error at once; the connections within it keep working,
// and once one closes a new one is served.
func TestCap(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	l := New(raw, func() int64 { return 2 }, m)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(l)
	defer srv.Close()
	addr := raw.Addr().String()

	get := func(c net.Conn) (*http.Response, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		if err := req.Write(c); err != nil {
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		return http.ReadResponse(bufio.NewReader(c), req)
	}
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	// The held connections are accepted (a request on each proves it).
	for _, c := range held {
		resp, err := get(c)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("a connection within the cap: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
	}
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(extra), nil)
	if err != nil {
		t.Fatalf("past the cap: %v, want a 503 without asking", err)
	}
	var e struct {
		Error struct{ Code, Type string } `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "1" ||
		e.Error.Code != "too_many_connections" || e.Error.Type != "service_unavailable" {
		t.Fatalf("past the cap: %d %v %+v (%v)", resp.StatusCode, resp.Header, e, err)
	}
	if n := testutil.ToFloat64(m.refused); n != 1 || m.Open() != 2 {
		t.Fatalf("refused %v, open %d; want 1 and 2", n, m.Open())
	}
	// One closes; the next connection is served.
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for m.Open() != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("open = %d after a close, want 1", m.Open())
		}
		time.Sleep(time.Millisecond)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp, err := get(c); err != nil || resp.StatusCode != 200 {
		t.Fatalf("after a close: %v %v", resp, err)
	}
}
