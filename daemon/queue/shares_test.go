package queue

// Fair shares of the slots for admission (shares.go): under a flood that
// fills the limit and is refused rather than queued, a light flow is still
// dispatched on arrival, and flooding flows share the slots by weight.

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// floodRig offers flows' requests to a queue that refuses whatever would
// have to wait (no queue), each dispatched request holding its slot for
// hold, and counts what each flow got.
type floodRig struct {
	q    *Queue
	hold time.Duration
	wg   sync.WaitGroup

	// counted: what happens before is warm-up, left out of the counts.
	counted time.Time

	mu         sync.Mutex
	dispatched map[string]int
	refused    map[string]int
	waited     map[string]time.Duration
	running    map[string]int
	maxRunning map[string]int
	maxTotal   int
}

func newFloodRig(limit, most int, hold time.Duration) *floodRig {
	c := cfg()
	c.MaxInflight, c.MaxQueued, c.MaxWait = most, 0, time.Minute
	q := New(c, nil, nil)
	q.SetModel(perRequest(hold))
	q.SetLimit(limit)
	return &floodRig{q: q, hold: hold, dispatched: map[string]int{}, refused: map[string]int{}, waited: map[string]time.Duration{},
		running: map[string]int{}, maxRunning: map[string]int{}}
}

// offer sends one request of flow with weight; a dispatched one is
// released after the rig's hold.
func (r *floodRig) offer(flow string, weight float64) {
	t, err := r.q.Acquire(context.Background(), Request{Weight: 1, Flow: flow, FlowWeight: weight, Shape: enginemodel.Shape{MaxTokens: 100}})
	r.mu.Lock()
	defer r.mu.Unlock()
	counted := !time.Now().Before(r.counted)
	if err != nil {
		if counted {
			r.refused[flow]++
		}
		return
	}
	if counted {
		r.dispatched[flow]++
	}
	r.waited[flow] += t.Waited()
	r.running[flow]++
	r.maxRunning[flow] = max(r.maxRunning[flow], r.running[flow])
	r.maxTotal = max(r.maxTotal, r.q.Inflight())
	r.wg.Go(func() {
		time.Sleep(r.hold)
		r.mu.Lock()
		r.running[flow]--
		r.mu.Unlock()
		t.Release()
	})
}

// A flood that keeps the limit full, beside a light flow: every request of
// the light flow is dispatched on arrival, though the flood fills every
// slot that frees; the limit is overdrawn only by the light flow, within
// its share; the flood keeps the rest.
func TestLightFlowServedBesideAFlood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 8
		r := newFloodRig(limit, 64, time.Second)
		// The flood: 40 requests a second, five times what the limit
		// serves; the light flow: one every 1.3 s (about 1.3 of the 8
		// slots).
		for i := range 2000 {
			r.offer("flood", 1)
			if i%52 == 0 {
				r.offer("light", 1)
			}
			time.Sleep(25 * time.Millisecond)
		}
		r.wg.Wait()
		if r.refused["light"] > 0 {
			t.Errorf("the light flow: %d dispatched, %d refused; want none refused", r.dispatched["light"], r.refused["light"])
		}
		if w := r.waited["light"]; w > 0 {
			t.Errorf("the light flow waited %s in all, want it dispatched on arrival", w)
		}
		if got := r.maxRunning["light"]; got > limit/2 {
			t.Errorf("the light flow held up to %d slots, want at most its share, %d", got, limit/2)
		}
		if r.maxTotal > limit+limit/2 {
			t.Errorf("up to %d in flight, want at most the limit %d and the light flow's share %d", r.maxTotal, limit, limit/2)
		}
		// The flood keeps the limit less what the light flow uses: about
		// 50 s x (8 - 0.77) / 1 s.
		if got, want := float64(r.dispatched["flood"]), 50*(limit-0.77); math.Abs(got-want)/want > 0.05 {
			t.Errorf("the flood was dispatched %v times, want about %.0f (the limit less the light flow's use)", got, want)
		}
	})
}

// Two floods of weights 1 and 3, each five times what the limit serves:
// the slots, and so the work, are shared 1:3 (within 5%, after the first
// seconds), at a limit that divides by 4 and at one that does not, and the
// limit is never overdrawn.
func TestFloodsShareByWeight(t *testing.T) {
	for _, limit := range []int{8, 13} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) { floodsShareByWeight(t, limit) })
	}
}

func floodsShareByWeight(t *testing.T, limit int) {
	synctest.Test(t, func(t *testing.T) {
		r := newFloodRig(limit, 64, time.Second)
		// The first seconds, before the queue knows a request's time and
		// while the first requests, dispatched before the flows could be
		// told apart, end, are left out.
		r.counted = time.Now().Add(5 * time.Second)
		for range 2000 {
			r.offer("w1", 1)
			r.offer("w3", 3)
			time.Sleep(25 * time.Millisecond)
		}
		r.wg.Wait()
		ratio := float64(r.dispatched["w3"]) / float64(r.dispatched["w1"])
		if math.Abs(ratio-3) > 0.15 {
			t.Errorf("dispatched w1 %d, w3 %d: 1:%.2f, want 1:3 within 5%%", r.dispatched["w1"], r.dispatched["w3"], ratio)
		}
		if r.maxTotal > limit {
			t.Errorf("up to %d in flight, want at most the limit %d", r.maxTotal, limit)
		}
		if total := r.dispatched["w1"] + r.dispatched["w3"]; float64(total) < 0.95*45*float64(limit) {
			t.Errorf("%d dispatched in 50 s of 1-s requests at a limit of %d, want the limit kept full", total, limit)
		}
		t.Logf("limit %d: w1 %d, w3 %d", limit, r.dispatched["w1"], r.dispatched["w3"])
	})
}

// Flows whose demands all fit are not held back: two flows each using a
// third of the limit take any free slot, and the limit is not overdrawn.
func TestFlowsWithinTheLimitNotHeldBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const limit = 6
		r := newFloodRig(limit, 64, time.Second)
		for i := range 1000 {
			if i%2 == 0 {
				r.offer("a", 1)
			} else {
				r.offer("b", 1)
			}
			time.Sleep(250 * time.Millisecond)
		}
		r.wg.Wait()
		if r.refused["a"]+r.refused["b"] > 0 || r.waited["a"]+r.waited["b"] > 0 {
			t.Errorf("refused a %d b %d, waited %s and %s; want every request dispatched on arrival", r.refused["a"], r.refused["b"], r.waited["a"], r.waited["b"])
		}
		if r.maxTotal > limit {
			t.Errorf("up to %d in flight, want at most the limit %d", r.maxTotal, limit)
		}
	})
}

// A heavy flow held to its allowance waits for its own requests to end,
// not for the first slot any flow frees (which goes to the flow it is
// the allowance of): admission predicts its wait from its own.
func TestHeldToItsAllowanceWaitsForItsOwn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait = 8, 10, 500*time.Millisecond
		q := New(c, nil, nil)
		q.SetModel(perRequest(100 * time.Millisecond)) // a step; ten tokens a request: 1 s
		q.SetLimit(4)
		// Two flows asking far more than their halves of the limit.
		q.mu.Lock()
		q.engineTime = time.Second
		for range 50 {
			for _, f := range []string{"a", "b"} {
				q.classes[Interactive].flowFor(f, 1).arrived(time.Now(), 1)
			}
		}
		q.mu.Unlock()
		ctx := context.Background()
		req := func(f string) Request {
			return Request{Weight: 1, Flow: f, Shape: enginemodel.Shape{MaxTokens: 10}}
		}
		var held []*Ticket
		for _, f := range []string{"b", "b", "a", "a"} {
			if f == "a" && len(held) == 2 {
				time.Sleep(800 * time.Millisecond)
			}
			tk, err := q.Acquire(ctx, req(f))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			held = append(held, tk)
		}
		// b's requests end in 0.2 s, a's in about 1 s: a third of a's waits
		// for its own, past max_wait, and is refused at once.
		_, err := q.Acquire(ctx, req("a"))
		if ref := refusal(t, err); ref.Reason != ReasonOverloaded || !strings.Contains(ref.Message, "predicted wait of 1") {
			t.Errorf("a's third request: %v, want overloaded on a predicted wait of about 1s (its own requests' ends, not b's in 0.2 s)", ref)
		}
		for _, tk := range held {
			tk.Release()
		}
	})
}
