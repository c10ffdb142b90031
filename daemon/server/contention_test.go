package server

import (
	"context"
	"github.com/llmlab/llmlab/internal/lockedbuf"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeContention struct {
	mu      sync.Mutex
	factor  float64
	told    []float64
	changed chan struct{}
}

func (f *fakeContention) Contention() (float64, float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.factor, 1 - 1/f.factor
}

func (f *fakeContention) SetContention(x float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.told) == 0 || f.told[len(f.told)-1] != x {
		f.told = append(f.told, x)
		select {
		case f.changed <- struct{}{}:
		default:
		}
	}
}

func (f *fakeContention) last() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.told[len(f.told)-1]
}

// The engine model follows the GPU's contention reading by reading, the
// log says when other work starts and stops slowing the engine, and at the
// end the model is left expecting the engine alone.
func TestContentionFromGPU(t *testing.T) {
	f := &fakeContention{factor: 1, changed: make(chan struct{}, 8)}
	var on atomic.Bool
	on.Store(true)
	var logs lockedbuf.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		contentionFromGPU(ctx, slog.New(slog.NewTextHandler(&logs, nil)), f, f, on.Load, time.Millisecond)
		close(done)
	}()
	wait := func(want float64) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for f.last() != want {
			select {
			case <-f.changed:
			case <-deadline:
				t.Fatalf("the model was told %v, want %v", f.told, want)
			}
		}
	}
	// The loop tells the model, then logs: wait for the line.
	waitLog := func(line string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(logs.String(), line) {
			if time.Now().After(deadline) {
				t.Fatalf("no log line %q:\n%s", line, logs.String())
			}
			time.Sleep(time.Millisecond)
		}
	}
	<-f.changed
	wait(1)
	f.mu.Lock()
	f.factor = 2
	f.mu.Unlock()
	wait(2)
	waitLog("other work on the GPU slows the engine")
	f.mu.Lock()
	f.factor = 1
	f.mu.Unlock()
	wait(1)
	waitLog("the engine has the GPU to itself again")
	f.mu.Lock()
	f.factor = 3
	f.mu.Unlock()
	wait(3)
	// gpu.contention turned off by a reload: the engine alone.
	on.Store(false)
	wait(1)
	on.Store(true)
	wait(3)
	cancel()
	<-done
	if got := f.last(); got != 1 {
		t.Fatalf("after the loop ended the model expects %v, want 1", got)
	}
}
