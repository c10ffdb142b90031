package queue

// Requests that arrive while the engine starts.

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

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
