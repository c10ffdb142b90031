package queue

// Admission's limits and refusals: the in-flight limit and FIFO, a full
// queue, waits past max_wait or the deadline, cancelled waiters, weights,
// draining, and Retry-After.

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

func TestAdmitsUpToMaxInflightThenQueuesFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(cfg(), nil, nil, 1)
		ctx := context.Background()
		a, _ := q.Acquire(ctx, Request{Weight: 1})
		b, _ := q.Acquire(ctx, Request{Weight: 1})
		if s := q.Stats(); s.Inflight != 2 || s.Queued != 0 {
			t.Fatalf("Stats = %+v, want 2 in flight, 0 queued", s)
		}
		c := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		d := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		if s := q.Stats(); s.Queued != 2 {
			t.Fatalf("Stats.Queued = %d, want 2", s.Queued)
		}
		a.Release()
		synctest.Wait()
		select {
		case r := <-c:
			if r.err != nil {
				t.Fatalf("first queued request: %v", r.err)
			}
			r.t.Release()
		default:
			t.Fatal("first queued request not dispatched after a release")
		}
		synctest.Wait()
		r := <-d // FIFO: d follows c
		if r.err != nil {
			t.Fatal(r.err)
		}
		b.Release()
		r.t.Release()
		if s := q.Stats(); s.Inflight != 0 || s.Queued != 0 {
			t.Fatalf("Stats after all released = %+v", s)
		}
	})
}

func TestQueueFullIs429WithRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxWait = time.Hour // only the size limit applies
		q := newQueue(c, nil, nil, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for range 2 {
			if _, err := q.Acquire(ctx, Request{Weight: 1}); err != nil {
				t.Fatal(err)
			}
		}
		for range 4 {
			acquireAsync(q, ctx, Request{Weight: 1})
		}
		synctest.Wait()
		_, err := q.Acquire(ctx, Request{Weight: 1})
		r := refusal(t, err)
		if r.Reason != ReasonQueueFull {
			t.Fatalf("refusal = %+v, want 429 queue_full", r)
		}
		// 4 sequences queued at 1/s drain in 4 s.
		if got := r.RetryAfterSeconds(); got != 4 {
			t.Errorf("RetryAfterSeconds() = %d, want 4", got)
		}
	})
}

func TestPredictedWaitBeyondMaxWaitIs503(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxQueued = 100
		c.MaxWait = 2500 * time.Millisecond // each request 2 s: the third in line waits 4 s
		q := newQueue(c, nil, nil, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		q.Acquire(ctx, Request{Weight: 1})
		q.Acquire(ctx, Request{Weight: 1})
		acquireAsync(q, ctx, Request{Weight: 1})
		acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		start := time.Now()
		_, err := q.Acquire(ctx, Request{Weight: 1})
		r := refusal(t, err)
		if r.Reason != ReasonOverloaded {
			t.Fatalf("refusal = %+v, want 503 overloaded", r)
		}
		if time.Since(start) != 0 {
			t.Errorf("refusal took %s, want at once", time.Since(start))
		}
		if r.RetryAfterSeconds() < 1 {
			t.Errorf("RetryAfterSeconds() = %d, want >= 1", r.RetryAfterSeconds())
		}
	})
}

func TestDeadlineInQueueIs503(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		q := newQueue(c, nil, nil, 100) // admission predicts a short wait...
		ctx := context.Background()
		q.Acquire(ctx, Request{Weight: 1})
		q.Acquire(ctx, Request{Weight: 1})
		start := time.Now()
		_, err := q.Acquire(ctx, Request{Weight: 1}) // ...but nothing completes
		r := refusal(t, err)
		if r.Reason != ReasonQueueTimeout {
			t.Fatalf("refusal = %+v, want 503 queue_timeout", r)
		}
		if got := time.Since(start); got != c.MaxWait {
			t.Errorf("timed out after %s, want %s", got, c.MaxWait)
		}
		if s := q.Stats(); s.Queued != 0 {
			t.Errorf("Stats.Queued = %d after timeout, want 0", s.Queued)
		}
	})
}

func TestCancelledWaiterLeavesQueueAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(cfg(), nil, nil, 1)
		bg := context.Background()
		a, _ := q.Acquire(bg, Request{Weight: 1})
		q.Acquire(bg, Request{Weight: 1})
		ctx, cancel := context.WithCancel(bg)
		ch := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		cancel()
		synctest.Wait()
		r := <-ch
		if !errors.Is(r.err, context.Canceled) {
			t.Fatalf("Acquire after cancel = %v, want context.Canceled", r.err)
		}
		if s := q.Stats(); s.Queued != 0 || s.QueuedSlots != 0 {
			t.Fatalf("Stats = %+v, want nothing queued", s)
		}
		a.Release()
		if s := q.Stats(); s.Inflight != 1 {
			t.Fatalf("Stats.Inflight = %d, want 1 (the cancelled waiter must not take the slot)", s.Inflight)
		}
	})
}

func TestWeightCountsSequences(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 4
		q := newQueue(c, nil, nil, 1)
		bg := context.Background()
		a, _ := q.Acquire(bg, Request{Weight: 3})
		ch := acquireAsync(q, bg, Request{Weight: 2}) // 3+2 > 4: waits
		synctest.Wait()
		if s := q.Stats(); s.Inflight != 3 || s.QueuedSlots != 2 {
			t.Fatalf("Stats = %+v, want 3 in flight and 2 queued sequences", s)
		}
		a.Release()
		synctest.Wait()
		r := <-ch
		if r.err != nil || r.t.Weight() != 2 {
			t.Fatalf("Acquire = %v, %v", r.t, r.err)
		}
		_, err := q.Acquire(bg, Request{Weight: 5})
		if ref := refusal(t, err); ref.Reason != ReasonTooManySequences {
			t.Fatalf("weight above max_inflight: %+v, want 400", ref)
		}
	})
}

func TestDrainRefusesQueuedAndWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(cfg(), nil, nil, 1)
		bg := context.Background()
		a, _ := q.Acquire(bg, Request{Weight: 1})
		q.Acquire(bg, Request{Weight: 1})
		ch := acquireAsync(q, bg, Request{Weight: 1})
		synctest.Wait()
		q.Drain()
		if ref := refusal(t, (<-ch).err); ref.Reason != ReasonDraining {
			t.Fatalf("queued request on drain: %+v, want 503 draining", ref)
		}
		_, err := q.Acquire(bg, Request{Weight: 1})
		if ref := refusal(t, err); ref.Reason != ReasonDraining {
			t.Fatalf("new request while draining: %+v", ref)
		}
		a.Release() // in-flight work still releases normally
		if s := q.Stats(); s.Inflight != 1 {
			t.Fatalf("Inflight = %d, want 1", s.Inflight)
		}
		// A request that finds a free slot costs no wait: it came on a
		// connection accepted before shutdown, so it is served.
		b, err := q.Acquire(bg, Request{Weight: 1})
		if err != nil {
			t.Fatalf("new request with a free slot while draining: %v, want dispatched", err)
		}
		b.Release()
	})
}

// Retry-After is whole seconds, rounded up: a client told to come back
// before the predicted time would be refused again.
func TestRetryAfterSecondsRoundsUp(t *testing.T) {
	for _, tc := range []struct {
		after time.Duration
		want  int
	}{
		{0, 1},
		{300 * time.Millisecond, 1},
		{time.Second, 1},
		{1100 * time.Millisecond, 2},
		{2500 * time.Millisecond, 3},
		{4 * time.Second, 4},
	} {
		r := &Refusal{RetryAfter: tc.after}
		if got := r.RetryAfterSeconds(); got != tc.want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", tc.after, got, tc.want)
		}
	}
}
