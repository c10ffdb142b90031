package queue

// Helpers shared by the queue's tests: a small config, engine models of a
// fixed time per request, and an observer that records what it is told.

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

func cfg() Config {
	return Config{MaxInflight: 2, MaxQueued: 4, MaxWait: 4 * time.Second, MaxBatch: 2}
}

// perRequest is an engine model in which every request takes d, whatever
// else runs.
func perRequest(d time.Duration) *enginemodel.Model {
	return enginemodel.New(enginemodel.Seed{StepFixed: d})
}

// newQueue is New with an engine that completes rate sequences a second
// at c's MaxInflight: each request takes MaxInflight/rate.
func newQueue(c Config, w Warmup, o Observer, rate float64) *Queue {
	q := New(c, w, o)
	q.SetModel(perRequest(time.Duration(float64(c.MaxInflight) / rate * float64(time.Second))))
	return q
}

// result is what an Acquire in a goroutine ended with.
type result struct {
	t   *Ticket
	err error
}

func acquireAsync(q *Queue, ctx context.Context, r Request) <-chan result {
	ch := make(chan result, 1)
	go func() {
		t, err := q.Acquire(ctx, r)
		ch <- result{t, err}
	}()
	return ch
}

func refusal(t *testing.T, err error) *Refusal {
	t.Helper()
	var r *Refusal
	if !errors.As(err, &r) {
		t.Fatalf("error = %v, want a *Refusal", err)
	}
	return r
}

type recordingObserver struct {
	mu        sync.Mutex
	sizes     []int
	decisions []string
	served    map[string]float64 // tokens by flow
}

func (r *recordingObserver) Dispatched(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sizes = append(r.sizes, n)
}

func (r *recordingObserver) Decided(class Class, decision, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.decisions = append(r.decisions, ClassName(class)+" "+decision+" "+reason)
}

func (r *recordingObserver) Served(class Class, flow string, tokens float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.served == nil {
		r.served = map[string]float64{}
	}
	r.served[flow] += tokens
}

func (r *recordingObserver) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.decisions...)
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
