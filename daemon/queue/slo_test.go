package queue

// Admission against the latency objective.

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// With a latency objective, a request that would be served too late is
// refused at once (reason slo), with the time after which it would fit in
// Retry-After, and a queued one waits no longer than the objective minus
// the engine's time.
func TestSLOAdmission(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait, c.SLO = 1, 10, 10*time.Second, 3500*time.Millisecond
		q := New(c, nil, nil)
		// 1 s a request; its tail, before any spread is measured, 1 s at
		// the starting level (the median).
		q.SetModel(perRequest(time.Second))
		tail := q.Model().Predict(1, enginemodel.Shape{}, q.Level()).Tail
		ctx := context.Background()
		a, _ := q.Acquire(ctx, Request{Weight: 1})
		// a ends in 1 s; b waits 1 s, cc 2 s: plus the tail, both fit 3.5 s.
		b := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		cc := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		// 3 s + the tail > 4 s: refused at once, to retry when it would
		// fit.
		_, err := q.Acquire(ctx, Request{Weight: 1})
		ref := refusal(t, err)
		if want := 3*time.Second + tail - c.SLO; ref.Reason != ReasonSLO || ref.RetryAfter != want || ref.RetryAfterSeconds() != 1 {
			t.Fatalf("a request that would miss the SLO: %+v, want slo with Retry-After %v (1 s)", ref, want)
		}
		// Batch work has no latency objective: it queues.
		bb := acquireAsync(q, ctx, Request{Weight: 1, Class: Batch})
		synctest.Wait()
		// a never ends: queued requests wait at most 3.5 s - 1 s.
		start := time.Now()
		for _, ch := range []<-chan result{b, cc} {
			r := <-ch
			if ref := refusal(t, r.err); ref.Reason != ReasonQueueTimeout || time.Since(start) != 2500*time.Millisecond {
				t.Fatalf("queued past the objective: %+v after %s", ref, time.Since(start))
			}
		}
		a.Release()
		synctest.Wait()
		r := <-bb
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.t.Release()
	})
}

// Every request is judged, those that find a free slot too: with 64 slots
// on an engine whose time grows with its batch, requests are refused once
// the batch they would join makes them late, though slots are free.
func TestEveryRequestJudged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.SLO = 64, 64, 5*time.Second
		rec := &recordingObserver{}
		q := New(c, nil, rec)
		// 0.1 s + 0.1 s per request in flight, its tail at the starting
		// level (the median) the same: within 5 s up to 49 in flight.
		q.SetModel(enginemodel.New(enginemodel.Seed{StepFixed: 100 * time.Millisecond, PerToken: 100 * time.Millisecond}))
		fits := 0
		for n := 1; q.Model().Predict(float64(n), enginemodel.Shape{}, q.Level()).Tail <= c.SLO; n++ {
			fits = n
		}
		if fits != 49 {
			t.Fatalf("the model fits %d in flight within 5 s, want 49", fits)
		}
		ctx := context.Background()
		var held []*Ticket
		var refused []*Refusal
		for range 64 {
			tk, err := q.Acquire(ctx, Request{Weight: 1})
			if err != nil {
				refused = append(refused, refusal(t, err))
				continue
			}
			held = append(held, tk)
		}
		if len(held) != fits || len(refused) != 64-fits || refused[0].Reason != ReasonSLO {
			t.Fatalf("admitted %d and refused %d (first: %+v), want %d admitted and the rest refused for the objective", len(held), len(refused), refused[0], fits)
		}
		if s := q.Stats(); s.Queued != 0 || s.Inflight != fits {
			t.Fatalf("Stats = %+v, want %d in flight and none queued", s, fits)
		}
		for _, tk := range held {
			tk.Release()
		}
		// 1 s + 3 s per request in flight: one alone fits (4.8 s at the
		// tail), a second beside it does not; a long answer that could not
		// fit even alone is served without the objective.
		q.SetModel(enginemodel.New(enginemodel.Seed{StepFixed: time.Second, PerToken: 3 * time.Second}))
		tk, err := q.Acquire(ctx, Request{Weight: 1})
		if err != nil {
			t.Fatalf("a request that fits alone: %v", err)
		}
		if _, err := q.Acquire(ctx, Request{Weight: 1}); refusal(t, err).Reason != ReasonSLO {
			t.Fatalf("a second request, predicted 8.4 s: %v, want slo", err)
		}
		long, err := q.Acquire(ctx, Request{Weight: 1, Shape: enginemodel.Shape{MaxTokens: 100}})
		if err != nil {
			t.Fatalf("a request that cannot meet the objective even alone: %v, want it served", err)
		}
		tk.Release()
		long.Release()
	})
}
