package queue

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func cfg() Config {
	return Config{MaxInflight: 2, MaxQueued: 4, MaxWait: 4 * time.Second, NominalRPS: 1, MaxBatch: 2}
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

func TestAdmitsUpToMaxInflightThenQueuesFIFO(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := New(cfg(), nil, nil)
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
		q := New(c, nil, nil)
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
		if r.Status != http.StatusTooManyRequests || r.Reason != ReasonQueueFull {
			t.Fatalf("refusal = %+v, want 429 queue_full", r)
		}
		// 4 sequences queued at the nominal 1/s drain in 4 s.
		if got := r.RetryAfterSeconds(); got != 4 {
			t.Errorf("RetryAfterSeconds() = %d, want 4", got)
		}
	})
}

func TestPredictedWaitBeyondMaxWaitIs503(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxQueued = 100
		c.MaxWait = 2500 * time.Millisecond // nominal 1/s: the third in line would wait 3 s
		q := New(c, nil, nil)
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
		if r.Status != http.StatusServiceUnavailable || r.Reason != ReasonOverloaded {
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
		c.NominalRPS = 100 // admission predicts a short wait...
		q := New(c, nil, nil)
		ctx := context.Background()
		q.Acquire(ctx, Request{Weight: 1})
		q.Acquire(ctx, Request{Weight: 1})
		start := time.Now()
		_, err := q.Acquire(ctx, Request{Weight: 1}) // ...but nothing completes
		r := refusal(t, err)
		if r.Reason != ReasonQueueTimeout || r.Status != http.StatusServiceUnavailable {
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
		q := New(cfg(), nil, nil)
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
		q := New(c, nil, nil)
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
		if ref := refusal(t, err); ref.Status != http.StatusBadRequest {
			t.Fatalf("weight above max_inflight: %+v, want 400", ref)
		}
	})
}

func TestBatchWindowReleasesTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 8
		c.MaxBatch = 4
		c.BatchWindow = 20 * time.Millisecond
		rec := &recordingObserver{}
		q := New(c, nil, rec)
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
		q.SeedEngineTime(time.Second)
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
		q := New(c, nil, rec)
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
			q := New(c, nil, rec)
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

func TestDrainRefusesQueuedAndWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := New(cfg(), nil, nil)
		bg := context.Background()
		a, _ := q.Acquire(bg, Request{Weight: 1})
		q.Acquire(bg, Request{Weight: 1})
		ch := acquireAsync(q, bg, Request{Weight: 1})
		synctest.Wait()
		q.Drain()
		if ref := refusal(t, (<-ch).err); ref.Reason != ReasonDraining || ref.Status != 503 {
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

type fixedWarmup time.Duration

func (f fixedWarmup) RemainingStart() time.Duration { return time.Duration(f) }

func TestColdStartAddsExpectedStartTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxWait = 2 * time.Second
		c.MaxQueued = 100
		// The engine needs 10 s more to start: a request that would wait
		// 10 s + its queue position is still admitted, not refused.
		q := New(c, fixedWarmup(10*time.Second), nil)
		bg, cancel := context.WithCancel(context.Background())
		defer cancel()
		q.Acquire(bg, Request{Weight: 1})
		q.Acquire(bg, Request{Weight: 1})
		ch := acquireAsync(q, bg, Request{Weight: 1})
		synctest.Wait()
		select {
		case r := <-ch:
			t.Fatalf("request during a cold start ended early: %v", r.err)
		default:
		}
		if s := q.Stats(); s.Queued != 1 {
			t.Fatalf("Queued = %d, want 1", s.Queued)
		}
	})
}

func TestLearnsCompletionRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 1
		c.MaxQueued = 1000
		c.MaxWait = time.Hour
		c.NominalRPS = 1
		q := New(c, nil, nil)
		bg := context.Background()
		// The engine completes one sequence every 100 ms while others wait.
		first, _ := q.Acquire(bg, Request{Weight: 1})
		var chans []<-chan result
		for range 30 {
			chans = append(chans, acquireAsync(q, bg, Request{Weight: 1}))
			synctest.Wait() // queue in a known order
		}
		cur := first
		for _, ch := range chans {
			time.Sleep(100 * time.Millisecond)
			cur.Release()
			cur = (<-ch).t
		}
		cur.Release()
		s := q.Stats()
		if !s.RateLearned || s.RateRPS < 9 || s.RateRPS > 11 {
			t.Fatalf("learned rate = %.2f/s (learned=%v), want about 10/s", s.RateRPS, s.RateLearned)
		}
		// Idle time does not erase what was learned.
		time.Sleep(5 * time.Minute)
		if s := q.Stats(); s.RateRPS < 9 || s.RateRPS > 11 {
			t.Fatalf("rate after idle = %.2f/s, want about 10/s", s.RateRPS)
		}
	})
}

type recordingObserver struct {
	mu        sync.Mutex
	sizes     []int
	decisions []string
}

func (r *recordingObserver) Dispatched(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sizes = append(r.sizes, n)
}

func (r *recordingObserver) Decided(class int, decision, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.decisions = append(r.decisions, ClassName(class)+" "+decision+" "+reason)
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

// While the engine starts, requests queue (none refused for concurrency),
// each within max_cold_start_wait, and all flow when the gate opens.
func TestGateHoldsRequestsDuringColdStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxColdStartWait = 2, 10, 20*time.Second
		q := New(c, fixedWarmup(5*time.Second), nil)
		q.SetEngineReady(false)
		bg := context.Background()
		var chans []<-chan result
		for range 5 {
			chans = append(chans, acquireAsync(q, bg, Request{Weight: 1}))
			synctest.Wait() // queue in a known order
		}
		if s := q.Stats(); s.Queued != 5 || s.Inflight != 0 {
			t.Fatalf("during the start: %+v, want 5 queued and none dispatched", s)
		}
		if q.Busy() != 5 {
			t.Fatalf("Busy() = %d, want 5", q.Busy())
		}
		time.Sleep(5 * time.Second) // past max_wait (4s), within max_cold_start_wait
		q.SetEngineReady(true)
		synctest.Wait()
		got := 0
		for _, ch := range chans[:2] {
			if r := <-ch; r.err == nil {
				got++
				r.t.Release()
			}
		}
		synctest.Wait()
		for _, ch := range chans[2:] {
			if r := <-ch; r.err == nil {
				got++
				r.t.Release()
			}
		}
		if got != 5 {
			t.Fatalf("%d of 5 requests admitted once the engine was ready", got)
		}
	})
}

func TestColdStartDeadlineAndFailWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxColdStartWait = 2 * time.Second
		q := New(c, fixedWarmup(time.Minute), nil)
		q.SetEngineReady(false)
		start := time.Now()
		_, err := q.Acquire(context.Background(), Request{Weight: 1})
		if ref := refusal(t, err); ref.Reason != ReasonQueueTimeout || time.Since(start) != 2*time.Second {
			t.Fatalf("cold start past its deadline: %+v after %s, want queue_timeout after 2s", ref, time.Since(start))
		}
		ch := acquireAsync(q, context.Background(), Request{Weight: 1})
		synctest.Wait()
		q.FailWaiting("engine_unavailable", "the engine stopped unexpectedly", 3*time.Second)
		ref := refusal(t, (<-ch).err)
		if ref.Status != 503 || ref.Reason != "engine_unavailable" || ref.RetryAfterSeconds() != 3 {
			t.Fatalf("FailWaiting: %+v", ref)
		}
	})
}

// Interactive requests are dispatched before batch ones queued earlier, and
// every decision is reported with its reason.
func TestInteractiveBeforeBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 1
		c.BatchMaxWait = time.Minute
		rec := &recordingObserver{}
		q := New(c, nil, rec)
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
		c.MaxInflight, c.MaxQueued, c.NominalRPS = 1, 2, 100
		c.BatchMaxWait = time.Minute
		q := New(c, nil, &recordingObserver{})
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
		if ref := refusal(t, r.err); ref.Reason != ReasonDisplaced || ref.Status != http.StatusServiceUnavailable {
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
		q := New(c, nil, nil)
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

// The adaptive limit caps dispatch below MaxInflight; raising it releases
// waiters; TakeWindow reports engine times and blocking.
func TestSetLimitAndWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.NominalRPS = 4, 10
		q := New(c, nil, nil)
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
		w := q.TakeWindow()
		if !w.Blocked || w.MaxInflight != 2 || len(w.EngineTimes) != 2 || w.EngineTimes[0] != 500*time.Millisecond || w.EngineTimes[1] != 200*time.Millisecond {
			t.Fatalf("window %+v", w)
		}
		if got := q.EngineTime(); got <= 200*time.Millisecond || got >= 500*time.Millisecond {
			t.Fatalf("engine time %s, want between the two samples", got)
		}
		if w := q.TakeWindow(); w.Blocked || len(w.EngineTimes) != 0 {
			t.Fatalf("a fresh window: %+v", w)
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
		q := New(c, nil, rec)
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

// With a latency objective, a request that would be served too late is
// refused at once (reason slo), and a queued one waits no longer than the
// objective minus the engine's time.
func TestSLOAdmission(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.NominalRPS, c.MaxWait, c.SLO = 1, 10, 4, 10*time.Second, 2*time.Second
		q := New(c, nil, nil)
		ctx := context.Background()
		// The engine takes 1.5 s per request.
		a, _ := q.Acquire(ctx, Request{Weight: 1})
		time.Sleep(1500 * time.Millisecond)
		a.Release()
		a, _ = q.Acquire(ctx, Request{Weight: 1})
		// a frees its slot in 0.1 s; at 4 completions/s: 0.25 s and 0.5 s
		// of wait, plus 1.5 s: within 2 s.
		time.Sleep(1400 * time.Millisecond)
		b := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		cc := acquireAsync(q, ctx, Request{Weight: 1})
		synctest.Wait()
		// 0.75 s + 1.5 s > 2 s: refused at once.
		_, err := q.Acquire(ctx, Request{Weight: 1})
		if ref := refusal(t, err); ref.Reason != ReasonSLO || ref.Status != http.StatusServiceUnavailable {
			t.Fatalf("a request that would miss the SLO: %+v", ref)
		}
		// Batch work has no latency objective: it queues.
		bb := acquireAsync(q, ctx, Request{Weight: 1, Class: Batch})
		synctest.Wait()
		// Queued requests wait at most 2 s - 1.5 s: their deadline passes.
		start := time.Now()
		for _, ch := range []<-chan result{b, cc} {
			r := <-ch
			if ref := refusal(t, r.err); ref.Reason != ReasonQueueTimeout || time.Since(start) != 500*time.Millisecond {
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

// A window says how many finished and how many were in flight on average,
// which the adaptive limit turns into throughput (Little's law).
func TestWindowAveragesInflight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight = 4
		q := New(c, nil, nil)
		q.TakeWindow()
		bg := context.Background()
		a, _ := q.Acquire(bg, Request{Weight: 1})
		b, _ := q.Acquire(bg, Request{Weight: 1})
		time.Sleep(time.Second)
		a.Release()
		time.Sleep(time.Second)
		w := q.TakeWindow()
		b.Release()
		if w.Completed != 1 || len(w.EngineTimes) != 1 || w.EngineTimes[0] != time.Second {
			t.Fatalf("window %+v: want one completion after 1 s", w)
		}
		if w.AvgInflight != 1.5 || w.End.Sub(w.Start) != 2*time.Second {
			t.Fatalf("average in flight %v over %v, want 1.5 over 2s", w.AvgInflight, w.End.Sub(w.Start))
		}
	})
}

// Admission asks the engine's tail time (its 95th percentile), not its
// average, to fit in the objective with the predicted wait: with nine
// requests of 1 s for each of 3 s, one predicted to wait 0.25 s is refused
// under a 2.5 s objective (0.25 s + a tail of 3 s), though the average
// (1.2 s) would have let it in to be answered late one time in ten. (The
// miss budget cannot let it in either: the engine's own 3 s answers, one
// in ten, have spent it.)
func TestSLOAdmissionFitsTheTail(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.NominalRPS, c.MaxWait, c.SLO = 1, 10, 4, 10*time.Second, 2500*time.Millisecond
		q := New(c, nil, nil)
		ctx := context.Background()
		serveOneByOne(q, 1000, longTail(time.Second, 3*time.Second, 10))
		if m, tail := q.EngineTime(), q.EngineTail(); m < time.Second || m > 1500*time.Millisecond || tail < 2500*time.Millisecond || tail > 3100*time.Millisecond {
			t.Fatalf("engine time %s, tail %s; want about 1.2 s and 3 s", m, tail)
		}
		a, _ := q.Acquire(ctx, Request{Weight: 1})
		_, err := q.Acquire(ctx, Request{Weight: 1}) // waits 0.25 s at 4/s
		if ref := refusal(t, err); ref.Reason != ReasonSLO {
			t.Fatalf("0.25 s of wait plus the tail past 2.5 s: %+v, want refused (slo)", ref)
		}
		a.Release()
	})
}

// The tail that admission adds to a predicted wait is corrected by what
// became of the requests it let wait: while they all finish well inside
// the objective it loosens toward the engine's mean time (a long-tailed
// engine's 95th percentile refused requests that would have been served
// in time), and when they miss, or time out in the queue, it tightens past
// the 95th percentile.
func TestAdmissionMarginLearnsFromOutcomes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.NominalRPS, c.MaxWait, c.SLO = 1, 10, 1, 20*time.Second, 5*time.Second
		q := New(c, nil, nil)
		ctx := context.Background()
		// The engine: 1 s, one in ten 3 s; nothing waits yet.
		serveOneByOne(q, 100, longTail(time.Second, 3*time.Second, 10))
		p95 := q.EngineTail()
		if p95 != 3*time.Second {
			t.Fatalf("tail before any request waited: %s, want the engine's 95th percentile, 3s", p95)
		}
		// Requests that wait behind one and finish in 2 or 4 s, all inside
		// the 5 s objective; the engine's times keep their long tail.
		for i := range 600 {
			a, _ := q.Acquire(ctx, Request{Weight: 1})
			b := acquireAsync(q, ctx, Request{Weight: 1})
			d := time.Second
			if i%10 == 9 {
				d = 3 * time.Second
			}
			time.Sleep(d)
			a.Release()
			r := <-b
			if r.err != nil {
				t.Fatalf("a request waiting 1 s under a 5 s objective: %v", r.err)
			}
			time.Sleep(time.Second)
			r.t.Release()
		}
		if tail, mean := q.EngineTail(), q.EngineTime(); tail != mean || q.engineP95 != 3*time.Second {
			t.Fatalf("after 600 waiting requests inside the objective: tail %s (95th percentile %s), want the engine's mean %s", tail, q.engineP95, mean)
		}
		// Now the engine hangs 10 s: a request waiting behind it reaches
		// its queue deadline and is refused late, and after a few of
		// those admission refuses at arrival.
		late, m0 := 0, q.margin
		for {
			a, _ := q.Acquire(ctx, Request{Weight: 1})
			b := acquireAsync(q, ctx, Request{Weight: 1})
			time.Sleep(10 * time.Second)
			a.Release()
			r := <-b
			if r.err == nil {
				t.Fatal("a request behind a 10 s one under a 5 s objective was served")
			}
			if refusal(t, r.err).Reason == ReasonSLO {
				break
			}
			late++
		}
		if want := m0 + time.Duration(late)*c.SLO/40; late == 0 || late > 10 || q.margin < want {
			t.Fatalf("%d late refusals moved the margin from %s to %s; want a few, each adding at least 1/40 of the objective (%s)", late, m0, q.margin, want)
		}
	})
}

// The margin settles where MissTarget of the judged requests miss: it
// climbs to its ceiling (half the objective) when more miss, sinks to its
// floor (the engine's mean time) when fewer do, and each miss or hit moves
// it by the step the doc states.
func TestMarginTracksMissRate(t *testing.T) {
	c := cfg()
	c.SLO = 4 * time.Second
	q := New(c, nil, nil)
	q.engineTime, q.engineP95 = time.Second, 3*time.Second
	q.fullTime, q.nFull = time.Second, 1 // measured with the engine full
	run := func(n, every int) {
		for i := range n {
			q.judgeLocked(i%every == 0)
		}
	}
	q.judgeLocked(true)
	if q.margin != 100*time.Millisecond {
		t.Fatalf("one miss: margin %s, want 1/40 of the objective", q.margin)
	}
	run(1000, 10) // 10% miss
	if q.margin < 1950*time.Millisecond {
		t.Fatalf("10%% missing: margin %s, want the ceiling, 2s", q.margin)
	}
	run(3000, 100) // 1% miss
	if _, tail := q.engineTimesLocked(true); q.margin > -1900*time.Millisecond || tail > 1100*time.Millisecond {
		t.Fatalf("1%% missing: margin %s, tail %s; want the floor, the tail at the mean (1s)", q.margin, tail)
	}
	q.margin = 0
	m := q.margin
	run(3300, 33) // 3.03%: it stays near where it is (100 misses move it 2.5 s)
	if d := q.margin - m; d < -150*time.Millisecond || d > 150*time.Millisecond {
		t.Fatalf("3%% missing moved the margin from %s to %s; want it to stay near", m, q.margin)
	}
}

// The objective's miss budget: with the engine's tail (3 s) far above its
// mean, requests predicted past the tail but not past the mean are still
// admitted while the budget lasts (4 at first), then refused; those that
// finish in time give their share back.
func TestMissBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.NominalRPS, c.MaxWait, c.SLO = 1, 20, 4, 10*time.Second, 4*time.Second
		q := New(c, nil, nil)
		ctx := context.Background()
		serveOneByOne(q, 100, func(i int) time.Duration {
			if i < 6 {
				return 3 * time.Second
			}
			return 200 * time.Millisecond
		})
		if q.EngineTail() != 3*time.Second || q.budget != minBudgetCap {
			t.Fatalf("tail %s, budget %v; want 3s and a full budget (%d)", q.EngineTail(), q.budget, minBudgetCap)
		}
		a, _ := q.Acquire(ctx, Request{Weight: 1})
		// At 4/s, the k-th waiting request is predicted to wait k/4 s: up to
		// the 4th, wait + tail fits in 4 s; the 5th to 8th spend the budget;
		// the 9th finds it spent.
		var waiting []<-chan result
		for k := 1; k <= 8; k++ {
			waiting = append(waiting, acquireAsync(q, ctx, Request{Weight: 1}))
			synctest.Wait()
			if want := float64(minBudgetCap - max(0, k-4)); q.budget != want {
				t.Fatalf("after the %d-th waiting request: budget %v, want %v", k, q.budget, want)
			}
		}
		_, err := q.Acquire(ctx, Request{Weight: 1})
		if ref := refusal(t, err); ref.Reason != ReasonSLO {
			t.Fatalf("the 9th, with the budget spent: %+v, want refused (slo)", ref)
		}
		// All served quickly: in time, so the four give their share back.
		time.Sleep(100 * time.Millisecond)
		a.Release()
		for _, ch := range waiting {
			r := <-ch
			if r.err != nil {
				t.Fatal(r.err)
			}
			time.Sleep(100 * time.Millisecond)
			r.t.Release()
		}
		if q.budget != minBudgetCap {
			t.Fatalf("after they all finished in time: budget %v, want it back to %d", q.budget, minBudgetCap)
		}
	})
}

// serveOneByOne runs n requests through q one after another, nothing
// waiting, the i-th holding its slot for hold(i): an engine's history.
func serveOneByOne(q *Queue, n int, hold func(i int) time.Duration) {
	for i := range n {
		a, _ := q.Acquire(context.Background(), Request{Weight: 1})
		time.Sleep(hold(i))
		a.Release()
	}
}

// longTail is an engine that takes base, and tail one time in every.
func longTail(base, tail time.Duration, every int) func(int) time.Duration {
	return func(i int) time.Duration {
		if i%every == every-1 {
			return tail
		}
		return base
	}
}

// A step into overload after light load (issue 15): the engine's times at
// light load say little about the full engine's, and requests that
// started together finish together. Admission must predict the wait from
// the oldest running request and the time with the engine full, or it
// lets requests wait that will be served past the objective.
func TestStepIntoOverload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.NominalRPS, c.MaxWait, c.SLO = 4, 20, 8, 4*time.Second, 1400*time.Millisecond
		q := New(c, nil, nil)
		ctx := context.Background()
		// Before anything ran: the limit over the nominal rate (Little).
		if got := q.EngineTail(); got != 500*time.Millisecond {
			t.Fatalf("tail before any measurement = %s, want 4 slots / 8 per second = 500ms", got)
		}
		// Light load: one at a time, 1 s each.
		serveOneByOne(q, 5, func(int) time.Duration { return time.Second })
		// The step: four start together, and 0.5 s later one more comes.
		// The rate (8/s) says its slot frees in 125 ms; but nothing frees
		// before the oldest has run its second: 500 ms of wait, and with
		// the engine's second, past the 1.4 s objective.
		var running []*Ticket
		for range 4 {
			tk, _ := q.Acquire(ctx, Request{Weight: 1})
			running = append(running, tk)
		}
		time.Sleep(500 * time.Millisecond)
		_, err := q.Acquire(ctx, Request{Weight: 1})
		if ref := refusal(t, err); ref.Reason != ReasonSLO || ref.RetryAfter != 100*time.Millisecond {
			t.Fatalf("a request behind four that started together: %+v, want slo with 500ms + 1s - 1.4s", ref)
		}
		// The full engine takes 3 s a request.
		time.Sleep(2500 * time.Millisecond)
		for _, tk := range running {
			tk.Release()
		}
		// Light load again, long enough that the last 100 times are all
		// light ones: the time when full still bounds the tail.
		serveOneByOne(q, 100, func(int) time.Duration { return time.Second })
		if got := q.EngineTail(); got != 3*time.Second {
			t.Fatalf("tail after light load = %s, want the full engine's 3s", got)
		}
		if got := q.EngineTime(); got > 1100*time.Millisecond {
			t.Fatalf("engine time after light load = %s, want about 1s", got)
		}
	})
}
