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
// Retry-After; a queued one waits no longer than the objective minus the
// engine's fastest time, or half as long again as it was predicted to.
func TestSLOAdmission(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait, c.SLO = 1, 10, 10*time.Second, 3500*time.Millisecond
		q := New(c, nil, nil)
		// 1 s a request; before any spread is measured its tail is 1.2 s
		// and its chance of taking 1.167 times its mean (3.5 s over 3 s)
		// about 8%.
		q.SetModel(perRequest(time.Second))
		tail := q.Model().Predict(1, enginemodel.Shape{}, TailLevel).Tail
		ctx := context.Background()
		a, _ := q.Acquire(ctx, Request{Weight: 1})
		// a ends in 1 s; b waits 1 s (2 s in all, no chance of being
		// late), cc 2 s (3 s in all: 8%, which the budget of 4% over the
		// three admitted affords).
		b := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		cc := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		// d, 4 s: an 89% chance, which a fresh budget (25 answers in time
		// counted before any came) still affords: (0.08 + 0.89) / 29.
		d := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		// 5 s, certain to be late, past the budget: refused at once, to
		// retry when it would fit.
		_, err := q.Acquire(ctx, Request{Weight: 1})
		ref := refusal(t, err)
		if want := 4*time.Second + tail - c.SLO; ref.Reason != ReasonSLO || ref.RetryAfter != want || ref.RetryAfterSeconds() != 2 {
			t.Fatalf("a request that would miss the SLO: %+v, want slo with Retry-After %v (2 s)", ref, want)
		}
		// Batch work has no latency objective: it queues.
		bb := acquireAsync(q, ctx, Request{Weight: 1, Class: Batch})
		synctest.Wait()
		// a never ends: b waits 3.5 s - 1 s, cc 1.5 x 2 s, d 1.5 x 3 s.
		start := time.Now()
		for i, ch := range []<-chan result{b, cc, d} {
			r := <-ch
			want := []time.Duration{2500 * time.Millisecond, 3 * time.Second, 4500 * time.Millisecond}[i]
			if ref := refusal(t, r.err); ref.Reason != ReasonQueueTimeout || time.Since(start) != want {
				t.Fatalf("queued past the objective: %+v after %s, want queue_timeout after %s", ref, time.Since(start), want)
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
		// 0.1 s + 0.1 s per request in flight: its mean within 5 s up to
		// 49 in flight; before any spread is measured, its chance of being
		// late at most LateTarget up to 40 (4.1 s, 1.22 times its mean short
		// of the objective). Past 40 each request is a chance of lateness
		// that the budget affords while the expected share of late answers
		// (25 answers in time counted before any came) stays within
		// LateTarget: some past 40, and none certain to be late (past 52,
		// 5.4 s).
		q.SetModel(enginemodel.New(enginemodel.Seed{StepFixed: 100 * time.Millisecond, PerToken: 100 * time.Millisecond}))
		ctx := context.Background()
		var held []*Ticket
		var refused []*Refusal
		for range 64 {
			tk, err := q.Acquire(ctx, Request{Weight: 1})
			if err != nil {
				refused = append(refused, refusal(t, err))
				continue
			}
			if len(refused) > 0 {
				t.Fatalf("request %d admitted after %d refused: the budget should not come back while the batch only grows", len(held)+len(refused)+1, len(refused))
			}
			held = append(held, tk)
		}
		if len(held) <= 40 || len(held) > 52 || refused[0].Reason != ReasonSLO {
			t.Fatalf("admitted %d and refused %d (first: %+v), want 41-52 admitted and the rest refused for the objective", len(held), len(refused), refused[0])
		}
		if s := q.Stats(); s.Queued != 0 || s.Inflight != len(held) {
			t.Fatalf("Stats = %+v, want %d in flight and none queued", s, len(held))
		}
		for _, tk := range held {
			tk.Release()
		}
		// 1 s + 3 s per request in flight: one alone fits (4 s); a second
		// beside it (7 s) is certain to be late, which a budget that has
		// seen no answer affords once (1 in 26), a third (10 s) not; a
		// long answer that could not fit even alone is served without the
		// objective.
		q.SetModel(enginemodel.New(enginemodel.Seed{StepFixed: time.Second, PerToken: 3 * time.Second}))
		tk, err := q.Acquire(ctx, Request{Weight: 1})
		if err != nil {
			t.Fatalf("a request that fits alone: %v", err)
		}
		second, err := q.Acquire(ctx, Request{Weight: 1})
		if err != nil {
			t.Fatalf("a second request, predicted 7 s, on a fresh budget: %v, want it admitted", err)
		}
		if _, err := q.Acquire(ctx, Request{Weight: 1}); refusal(t, err).Reason != ReasonSLO {
			t.Fatalf("a third request, predicted 10 s: %v, want slo", err)
		}
		second.Release()
		long, err := q.Acquire(ctx, Request{Weight: 1, Shape: enginemodel.Shape{MaxTokens: 100}})
		if err != nil {
			t.Fatalf("a request that cannot meet the objective even alone: %v, want it served", err)
		}
		tk.Release()
		long.Release()
	})
}
