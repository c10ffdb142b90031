package queue

// The priority classes: interactive before batch, displacement, and
// batch's share of the limit.

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// Interactive requests are dispatched before batch ones queued earlier, and
// every decision is reported with its reason.
func TestInteractiveBeforeBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 1
		c.BatchMaxWait = time.Minute
		rec := &recordingObserver{}
		q := newQueue(c, nil, rec, 1)
		ctx := context.Background()
		first, _ := q.Acquire(ctx, Request{Weight: 1, Class: Batch})
		b1 := acquireAsync(q, ctx, Request{Weight: 1, Class: Batch})
		synctest.Wait()
		i1 := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		first.Release()
		synctest.Wait()
		var ri result
		select {
		case ri = <-i1:
		default:
			t.Fatal("the interactive request was not dispatched first")
		}
		if ri.err != nil {
			t.Fatal(ri.err)
		}
		select {
		case <-b1:
			t.Fatal("the batch request went before the interactive one")
		default:
		}
		ri.t.Release()
		synctest.Wait()
		rb := <-b1
		if rb.err != nil {
			t.Fatal(rb.err)
		}
		rb.t.Release()
		want := []string{"batch dispatch slot_free", "batch queue no_slot", "interactive queue no_slot"}
		if got := rec.got(); !slices.Equal(got, want) {
			t.Fatalf("decisions %q, want %q", got, want)
		}
	})
}

// A full queue: an interactive request displaces the newest batch one.
func TestInteractiveDisplacesBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued = 1, 2
		c.BatchMaxWait = time.Minute
		q := newQueue(c, nil, &recordingObserver{}, 100)
		ctx := context.Background()
		hold, _ := q.Acquire(ctx, Request{Weight: 1, Class: Batch})
		older := acquireAsync(q, ctx, Request{Weight: 1, Class: Batch})
		synctest.Wait()
		newer := acquireAsync(q, ctx, Request{Weight: 1, Class: Batch})
		synctest.Wait()
		if _, err := q.Acquire(ctx, Request{Weight: 1, Class: Batch}); refusal(t, err).Reason != ReasonQueueFull {
			t.Fatalf("a batch request to a full queue: %v", err)
		}
		inter := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		r := <-newer
		if ref := refusal(t, r.err); ref.Reason != ReasonDisplaced {
			t.Fatalf("the newest batch request: %+v", ref)
		}
		hold.Release()
		synctest.Wait()
		ri := <-inter
		if ri.err != nil {
			t.Fatal(ri.err)
		}
		ri.t.Release()
		synctest.Wait()
		ro := <-older
		if ro.err != nil {
			t.Fatalf("the older batch request: %v", ro.err)
		}
		ro.t.Release()
	})
}

// Batch work is dispatched only while less than BatchShare of the limit is
// in use: the rest is kept for interactive work.
func TestBatchShare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.BatchShare, c.BatchMaxWait = 4, 0.5, time.Minute
		q := newQueue(c, nil, nil, 1)
		ctx := context.Background()
		var batch, inter []*Ticket
		for range 2 {
			tk, err := q.Acquire(ctx, Request{Weight: 1, Class: Batch})
			if err != nil {
				t.Fatal(err)
			}
			batch = append(batch, tk)
		}
		third := acquireAsync(q, ctx, Request{Weight: 1, Class: Batch})
		synctest.Wait()
		if s := q.Stats(); s.Inflight != 2 || s.QueuedBatch != 1 {
			t.Fatalf("batch beyond its share: %+v", s)
		}
		for range 2 {
			tk, err := q.Acquire(ctx, Request{Weight: 1})
			if err != nil {
				t.Fatalf("interactive work with batch at its share: %v", err)
			}
			inter = append(inter, tk)
		}
		// A batch slot frees, but interactive work holds the reserve.
		batch[0].Release()
		synctest.Wait()
		select {
		case <-third:
			t.Fatal("batch work went into the interactive reserve")
		default:
		}
		inter[0].Release()
		inter[1].Release()
		synctest.Wait()
		r := <-third
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.t.Release()
		batch[1].Release()
	})
}
