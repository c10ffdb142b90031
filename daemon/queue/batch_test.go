package queue

// The micro-batch dispatch window.

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestBatchWindowReleasesTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 8
		c.MaxBatch = 4
		c.BatchWindow = 20 * time.Millisecond
		rec := &recordingObserver{}
		q := newQueue(c, nil, rec, 1)
		bg := context.Background()
		start := time.Now()
		var chans []<-chan result
		for range 3 {
			chans = append(chans, acquireAsync(q, bg, Request{Weight: 1, Key: "k"}))
			time.Sleep(5 * time.Millisecond)
		}
		for _, ch := range chans {
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			// The window opened with the first request and releases all three
			// when it closes.
			if got := time.Since(start); got != c.BatchWindow {
				t.Fatalf("released after %s, want %s (when the window closes)", got, c.BatchWindow)
			}
			if g := r.t.Group(); g == nil || len(g.Members) != 3 {
				t.Fatalf("Group() = %+v, want the 3 requests of the window", g)
			}
		}
		if want := []int{3}; !equal(rec.sizes, want) {
			t.Fatalf("dispatch sizes = %v, want %v", rec.sizes, want)
		}
	})
}

// Requests that wait only for a batch window, with slots free for all of
// them, are judged by the engine's time as it is, not by its time when
// full: at light load nothing is refused. (llmlab tune-engine found a 20 ms
// window refusing a tenth of the requests at 3 req/s: the full engine's
// time, guessed from the nominal rate as 256 slots / 8 per second = 32 s,
// was charged to every request that arrived inside an open window.)
func TestBatchWindowAdmitsAtLightLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxBatch = 64, 64, 0
		c.BatchWindow = 20 * time.Millisecond
		c.SLO = 5 * time.Second // 64 slots / 1 per second: 64 s when full
		q := New(c, nil, nil)
		q.SetModel(perRequest(time.Second)) // 1 s a request, whatever runs
		bg := context.Background()
		var chans []<-chan result
		for range 3 {
			chans = append(chans, acquireAsync(q, bg, Request{Weight: 1}))
			time.Sleep(5 * time.Millisecond)
		}
		for _, ch := range chans {
			r := <-ch
			if r.err != nil {
				t.Fatalf("a request inside the batch window, 3 of 64 slots in use: %v", r.err)
			}
			r.t.Release()
		}
	})
}

func TestBatchFullReleasesBeforeWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 8
		c.MaxBatch = 2
		c.BatchWindow = time.Second
		rec := &recordingObserver{}
		q := newQueue(c, nil, rec, 1)
		bg := context.Background()
		start := time.Now()
		a := acquireAsync(q, bg, Request{Weight: 1})
		b := acquireAsync(q, bg, Request{Weight: 1})
		<-a
		<-b
		if got := time.Since(start); got != 0 {
			t.Fatalf("full batch released after %s, want at once", got)
		}
		if want := []int{2}; !equal(rec.sizes, want) {
			t.Fatalf("dispatch sizes = %v, want %v", rec.sizes, want)
		}
	})
}

// A batch is at most the in-flight limit: MaxBatch 0 means exactly it, and
// a larger MaxBatch (a file written for a larger max_inflight) is read as
// it, so a full engine's worth is released at once instead of waiting for
// a batch that could never fit.
func TestBatchFollowsInflightLimit(t *testing.T) {
	for _, mb := range []int{0, 16} {
		synctest.Test(t, func(t *testing.T) {
			c := cfg()
			c.MaxInflight = 3
			c.MaxBatch = mb
			c.BatchWindow = time.Second
			rec := &recordingObserver{}
			q := newQueue(c, nil, rec, 1)
			bg := context.Background()
			start := time.Now()
			var chans []<-chan result
			for range 3 {
				chans = append(chans, acquireAsync(q, bg, Request{Weight: 1}))
			}
			for _, ch := range chans {
				if r := <-ch; r.err != nil {
					t.Fatal(r.err)
				}
			}
			if got := time.Since(start); got != 0 {
				t.Fatalf("MaxBatch %d: released after %s, want at once (3 fill the in-flight limit)", mb, got)
			}
			if want := []int{3}; !equal(rec.sizes, want) {
				t.Fatalf("MaxBatch %d: dispatch sizes = %v, want %v", mb, rec.sizes, want)
			}
		})
	}
}
