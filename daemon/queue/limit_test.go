package queue

// The in-flight limit set from outside: SetLimit and SetHold.

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// The limit set with SetLimit caps dispatch below MaxInflight; raising it
// releases waiters; the engine time is a recent average of the times
// requests held their slots.
func TestSetLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 4
		q := newQueue(c, nil, nil, 10)
		q.SetLimit(1)
		ctx := context.Background()
		a, _ := q.Acquire(ctx, Request{Weight: 1})
		b := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		if s := q.Stats(); s.Inflight != 1 || s.Queued != 1 || s.Limit != 1 {
			t.Fatalf("with limit 1: %+v", s)
		}
		time.Sleep(300 * time.Millisecond)
		q.SetLimit(2)
		synctest.Wait()
		rb := <-b
		if rb.err != nil {
			t.Fatal(rb.err)
		}
		time.Sleep(200 * time.Millisecond)
		a.Release()
		rb.t.Release()
		if got := q.EngineTime(); got <= 200*time.Millisecond || got >= 500*time.Millisecond {
			t.Fatalf("engine time %s, want between the two samples (500ms, then 200ms)", got)
		}
	})
}

// A saturated engine (SetHold) gets nothing more while it has work of
// ours; an idle one still gets the first request.
func TestHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 4
		rec := &recordingObserver{}
		q := newQueue(c, nil, rec, 1)
		q.SetHold(true)
		ctx := context.Background()
		a, err := q.Acquire(ctx, Request{Weight: 1})
		if err != nil {
			t.Fatalf("the first request to an idle engine under hold: %v", err)
		}
		b := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		if s := q.Stats(); s.Inflight != 1 || s.Queued != 1 || !s.Hold {
			t.Fatalf("under hold: %+v", s)
		}
		q.SetHold(false)
		synctest.Wait()
		rb := <-b
		if rb.err != nil {
			t.Fatal(rb.err)
		}
		a.Release()
		rb.t.Release()
		if got := rec.got(); !slices.Contains(got, "interactive queue engine_saturated") {
			t.Fatalf("decisions %q lack the saturation", got)
		}
	})
}
