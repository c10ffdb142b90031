package queue

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
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

type fixedWarmup time.Duration

func (f fixedWarmup) RemainingStart() time.Duration { return time.Duration(f) }

func TestColdStartAddsExpectedStartTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxWait = 2 * time.Second
		c.MaxQueued = 100
		// The engine needs 10 s more to start: a request that would wait
		// 10 s + its queue position is still admitted, not refused.
		q := newQueue(c, fixedWarmup(10*time.Second), nil, 1)
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

func (r *recordingObserver) Decided(class Class, decision, reason string) {
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
		q := newQueue(c, fixedWarmup(5*time.Second), nil, 1)
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
		q := newQueue(c, fixedWarmup(time.Minute), nil, 1)
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
		if ref.Reason != "engine_unavailable" || ref.RetryAfterSeconds() != 3 {
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

// The wait for a slot is read from the running requests' progress: the
// one nearest its end frees the next slot.
func TestWaitFromProgress(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait = 2, 10, 50*time.Millisecond
		q := New(c, nil, nil)
		// 10 ms a token: 100 tokens take 1 s.
		q.SetModel(perRequest(10 * time.Millisecond))
		ctx := context.Background()
		shape := enginemodel.Shape{MaxTokens: 100}
		a, _ := q.Acquire(ctx, Request{Weight: 1, Shape: shape})
		b, _ := q.Acquire(ctx, Request{Weight: 1, Shape: shape})
		a.Progress(10)
		b.Progress(90)
		// b has 10 tokens left: 100 ms; past the 50 ms limit by 50 ms.
		_, err := q.Acquire(ctx, Request{Weight: 1, Shape: shape})
		if ref := refusal(t, err); ref.Reason != ReasonOverloaded || ref.RetryAfter != 50*time.Millisecond {
			t.Fatalf("a request waiting for b's last 10 tokens: %+v, want overloaded, Retry-After 50ms", ref)
		}
		b.Progress(8)
		ch := acquireAsync(q, ctx, Request{Weight: 1, Shape: shape})
		synctest.Wait()
		b.Release()
		synctest.Wait()
		r := <-ch
		if r.err != nil {
			t.Fatalf("a request waiting for b's last 2 tokens: %v", r.err)
		}
		a.Release()
		r.t.Release()
	})
}

// A request answered in full teaches the model what it took, at the
// concurrency it ran with; one released without an answer teaches nothing.
func TestReleaseTeachesTheModel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		q := newQueue(c, nil, nil, 1)
		ctx := context.Background()
		shape := enginemodel.Shape{PromptBytes: 1000, MaxTokens: 100}
		a, _ := q.Acquire(ctx, Request{Weight: 1, Shape: shape})
		b, _ := q.Acquire(ctx, Request{Weight: 1, Shape: shape})
		time.Sleep(time.Second)
		b.Release() // an error, or a client that left
		time.Sleep(time.Second)
		a.Complete(Report{PromptTokens: 200, OutputTokens: 100, FirstByte: time.Now().Add(-1900 * time.Millisecond)})
		a.Release()
		st := q.Model().Status()
		if st.Observed != 1 || st.ConcurrencyRange != [2]float64{1.5, 1.5} {
			t.Fatalf("model status %+v, want one request learned, run at 1.5 in flight on average", st)
		}
	})
}

// A running request's first streamed token tells the model how many the
// engine ran when it started: the limit's growth reads it before any
// answer ends.
func TestFirstTokenTellsTheModelWhatRan(t *testing.T) {
	c := cfg()
	c.MaxInflight = 4
	q := newQueue(c, nil, nil, 100)
	ctx := context.Background()
	var ts []*Ticket
	for range 3 {
		tk, err := q.Acquire(ctx, Request{Weight: 1, Shape: enginemodel.Shape{PromptBytes: 100, MaxTokens: 10}})
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tk)
	}
	if st := q.Model().Status(); st.ConcurrencyRange[1] != 0 {
		t.Fatalf("concurrency seen %v before any token", st.ConcurrencyRange)
	}
	ts[2].Progress(1)
	ts[2].Progress(1)
	ts[0].Progress(1)
	if st := q.Model().Status(); st.ConcurrencyRange[1] != 3 {
		t.Errorf("concurrency seen %v after the third request's first token, want up to 3", st.ConcurrencyRange)
	}
	for _, tk := range ts {
		tk.Release()
	}
}

// progressQueue is a queue of 4 slots and a way to admit requests of 200
// prompt tokens and 200 output tokens into it, streamed or not.
func progressQueue(t *testing.T) (*Queue, enginemodel.Shape, func(stream bool) *Ticket) {
	c := cfg()
	c.MaxInflight = 4
	q := newQueue(c, nil, nil, 100)
	shape := enginemodel.Shape{PromptBytes: 1000, MaxTokens: 200}
	return q, shape, func(stream bool) *Ticket {
		tk, err := q.Acquire(context.Background(), Request{Weight: 1, Shape: shape, Stream: stream})
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
}

// The running requests' streams teach the model the time per token at the
// concurrency they run with, before any of them ends.
func TestSampleProgressTeachesTheStepTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q, shape, acquire := progressQueue(t)
		a, b := acquire(true), acquire(true)
		before := q.Model().Remaining(2, shape, 0, 100)
		a.Progress(1)
		b.Progress(1)
		q.SampleProgress(time.Now())
		for range 30 {
			time.Sleep(time.Second)
			a.Progress(50) // 20 ms a token
			b.Progress(50)
			q.SampleProgress(time.Now())
		}
		// 100 tokens left at 20 ms each.
		if got := q.Model().Remaining(2, shape, 0, 100); got < 1800*time.Millisecond || got > 2200*time.Millisecond {
			t.Errorf("Remaining after streams at 20 ms a token = %v (before: %v), want about 2s", got, before)
		}
		// A request that started since the last sample does not time the
		// steps.
		c2 := acquire(true)
		time.Sleep(time.Second)
		c2.Progress(1000)
		a.Progress(50)
		b.Progress(50)
		q.SampleProgress(time.Now())
		if got := q.Model().Remaining(2, shape, 0, 100); got < 1800*time.Millisecond || got > 2200*time.Millisecond {
			t.Errorf("Remaining = %v after a new request's first burst, want about 2s still", got)
		}
		// A request whose answer is not streamed runs beside them: its
		// tokens are in the steps but in no count, so the samples teach
		// nothing while it runs (twice as fast streams here would).
		hidden := acquire(false)
		for range 10 {
			time.Sleep(time.Second)
			a.Progress(100)
			b.Progress(100)
			c2.Progress(100)
			q.SampleProgress(time.Now())
		}
		if got := q.Model().Remaining(2, shape, 0, 100); got < 1800*time.Millisecond || got > 2200*time.Millisecond {
			t.Errorf("Remaining = %v after samples beside an answer not streamed, want about 2s still", got)
		}
		hidden.Release()
		a.Release()
		b.Release()
		c2.Release()
	})
}

// Steps of a second, sampled four times a second: the mark waits for a few
// steps rather than keeping only the windows in which one happened to end.
func TestSampleProgressWaitsForSlowSteps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q, shape, acquire := progressQueue(t)
		a := acquire(true)
		a.Progress(1)
		q.SampleProgress(time.Now())
		for i := range 240 {
			time.Sleep(250 * time.Millisecond)
			if i%4 == 3 {
				a.Progress(1) // a token a second
			}
			q.SampleProgress(time.Now())
		}
		// 100 tokens left at a second each.
		if got := q.Model().Remaining(1, shape, 0, 100); got < 90*time.Second || got > 110*time.Second {
			t.Errorf("Remaining after a stream at a token a second = %v, want about 100s", got)
		}
		a.Release()
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
