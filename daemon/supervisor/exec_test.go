package supervisor

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestExecStopsWithSIGTERM(t *testing.T) {
	e := &Exec{Argv: []string{"sleep", "60"}, Grace: func() time.Duration { return 5 * time.Second }, Output: io.Discard}
	p, err := e.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("stopping took %s; sleep exits on SIGTERM at once", d)
	}
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
}

// A process that ignores SIGTERM, and its children (the whole group), are
// killed after the grace period, as it is when the stop begins (a reload
// may have changed it since the start).
func TestExecKillsGroupAfterGrace(t *testing.T) {
	var grace atomic.Int64
	grace.Store(int64(20 * time.Second))
	e := &Exec{Argv: []string{"sh", "-c", "trap '' TERM; sleep 60 & wait"}, Grace: func() time.Duration { return time.Duration(grace.Load()) }, Output: io.Discard}
	p, err := e.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	grace.Store(int64(300 * time.Millisecond))
	time.Sleep(100 * time.Millisecond) // let the trap install
	start := time.Now()
	err = p.Stop(context.Background())
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Stop = %v, want a report that the engine was killed", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Fatalf("stopped after %s, want just after the 300ms grace", d)
	}
}

func TestExecNoCommand(t *testing.T) {
	if _, err := (&Exec{}).Start(context.Background()); err == nil {
		t.Fatal("Start with no command: want an error")
	}
}

// An engine that exits on its own says how, and its last line of output
// says why (vLLM's last line is its error).
func TestExecReportsExit(t *testing.T) {
	var out bytes.Buffer
	e := &Exec{Argv: []string{"sh", "-c", `echo starting; echo "ValueError: not enough KV cache" >&2; printf "\n"; exit 3`}, Grace: func() time.Duration { return time.Second }, Output: &out}
	p, err := e.Start(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	status, last := p.(exitReporter).Exit()
	if status != "exit status 3" || last != "ValueError: not enough KV cache" {
		t.Fatalf("Exit() = %q, %q; want exit status 3 and the last line written", status, last)
	}
	if !strings.Contains(out.String(), "starting") {
		t.Fatalf("the engine's output did not reach Output: %q", out.String())
	}
}
