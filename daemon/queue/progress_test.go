package queue

// What the queue learns from running requests (their progress, first
// tokens and answers) and the waits it reads from them.

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

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
// engine runs at once, counted as the requests whose answers have begun
// (not those in flight at its dispatch, which counts any that wait inside
// the engine): the limit's growth reads it before any answer ends.
func TestFirstTokenTellsTheModelWhatRan(t *testing.T) {
	c := cfg()
	c.MaxInflight = 4
	q := newQueue(c, nil, nil, 100)
	ctx := context.Background()
	acquire := func() *Ticket {
		tk, err := q.Acquire(ctx, Request{Weight: 1, Shape: enginemodel.Shape{PromptBytes: 100, MaxTokens: 10}})
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	seen := func() float64 { return q.Model().Status().ConcurrencyRange[1] }
	ts := []*Ticket{acquire(), acquire(), acquire()}
	if got := seen(); got != 0 {
		t.Fatalf("concurrency seen %v before any token", got)
	}
	ts[2].Progress(1)
	ts[2].Progress(1)
	ts[0].Progress(1)
	if got := seen(); got != 2 {
		t.Errorf("concurrency seen %v with two of three answers begun, want 2", got)
	}
	ts[1].Progress(1)
	if got := seen(); got != 3 {
		t.Errorf("concurrency seen %v with all three begun, want 3", got)
	}
	// Finished answers leave the count; a late token of a released ticket
	// (a client that left) never enters it.
	ts[0].Release()
	ts[2].Release()
	late := acquire()
	late.Release()
	late.Progress(1)
	d := acquire()
	d.Progress(1)
	if got := q.streaming.Load(); got != 2 {
		t.Errorf("%d slots counted as streaming, want 2 (the second and the last request)", got)
	}
	ts[1].Release()
	d.Release()
	if got := q.streaming.Load(); got != 0 {
		t.Errorf("%d slots counted as streaming after every release, want 0", got)
	}
	if got := seen(); got != 3 {
		t.Errorf("concurrency seen %v, want the high of 3 kept", got)
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
