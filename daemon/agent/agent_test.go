package agent

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCapacity(t *testing.T) {
	warm := Inputs{Engine: "ready", Limit: 24, Rate: 5, Tail: 4 * time.Second, SLO: 5 * time.Second, MaxWait: 4 * time.Second, Balancers: 1}
	for _, c := range []struct {
		name string
		in   func(Inputs) Inputs
		want int
	}{
		{"warm: the limit and half of a second of queue at 5/s", func(i Inputs) Inputs { return i }, 26},
		{"external engines are warm", func(i Inputs) Inputs { i.Engine = "external"; return i }, 26},
		{"sleeping is warm", func(i Inputs) Inputs { i.Engine = "sleeping"; return i }, 26},
		{"deep sleep is cold", func(i Inputs) Inputs { i.Engine = "deep_sleeping"; return i }, 24},
		{"a tail past the objective leaves no queue", func(i Inputs) Inputs { i.Tail = 6 * time.Second; return i }, 24},
		{"no objective: half of max_wait's queue", func(i Inputs) Inputs { i.SLO = 0; return i }, 34},
		{"cold: the limit", func(i Inputs) Inputs { i.Engine = "stopped"; return i }, 24},
		{"starting is cold", func(i Inputs) Inputs { i.Engine = "starting"; return i }, 24},
		{"failed: one at a time", func(i Inputs) Inputs { i.Engine = "failed"; return i }, 1},
		{"two balancers share it", func(i Inputs) Inputs { i.Balancers = 2; return i }, 13},
		{"never 0, which HAProxy reads as no limit", func(i Inputs) Inputs { i.Engine = "failed"; i.Balancers = 3; return i }, 1},
	} {
		if got := Capacity(c.in(warm)).MaxConn; got != c.want {
			t.Errorf("%s: maxconn %d, want %d", c.name, got, c.want)
		}
	}
}

// Each connection gets one line in HAProxy's agent syntax, whatever the
// checker sends first (agent-send), and the line follows the state.
func TestServeAnswersEachCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	n.Store(29)
	reg := prometheus.NewRegistry()
	s := New(func() State { return State{MaxConn: int(n.Load())} }, reg, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()

	ask := func(send string) string {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if send != "" {
			if _, err := c.Write([]byte(send)); err != nil {
				t.Fatal(err)
			}
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		all, err := io.ReadAll(c) // the agent closes after its line
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		return string(all)
	}
	if got := ask(""); got != "up ready maxconn:29\n" {
		t.Fatalf("answer %q", got)
	}
	if got := ask("llmlab/box1\n"); got != "up ready maxconn:29\n" {
		t.Fatalf("answer after agent-send %q", got)
	}
	n.Store(0)
	line, _ := bufio.NewReader(strings.NewReader(ask(""))).ReadString('\n')
	if line != "up ready maxconn:1\n" {
		t.Fatalf("answer for 0: %q, want maxconn:1 (HAProxy reads 0 as no limit)", line)
	}
	if got := testutil.ToFloat64(s.checks); got != 3 {
		t.Errorf("checks counted %v, want 3", got)
	}
	if got := testutil.ToFloat64(s.maxconn); got != 1 {
		t.Errorf("maxconn gauge %v, want 1", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("the listener still accepts after Serve returned")
	}
}
