package queue

// Fair shares among flows (API keys): tokens served by weight, the output
// cap corrected to what a request took, work conservation, the order of
// class, flow and deadline, and a full queue shared by flows.

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// fairRig keeps flows' requests queued in front of a one-slot engine and
// reports each dispatch.
type fairRig struct {
	t   *testing.T
	q   *Queue
	got chan fairDispatch
}

type fairDispatch struct {
	flow   string
	tokens int // its output cap (no prompt: its cost)
	t      *Ticket
}

func newFairRig(t *testing.T, inflight int) *fairRig {
	c := cfg()
	c.MaxInflight, c.MaxQueued, c.MaxWait, c.BatchMaxWait = inflight, 1000, time.Hour, time.Hour
	q := New(c, nil, &recordingObserver{})
	q.SetModel(perRequest(time.Millisecond))
	return &fairRig{t: t, q: q, got: make(chan fairDispatch, 100)}
}

// send queues a request of flow, weight and an output cap of tokens
// (its cost: the prompt is empty) in class.
func (r *fairRig) send(flow string, weight float64, tokens int, class Class) {
	go func() {
		t, err := r.q.Acquire(context.Background(), Request{Weight: 1, Class: class, Flow: flow, FlowWeight: weight,
			Shape: enginemodel.Shape{MaxTokens: tokens}})
		if err != nil {
			r.t.Errorf("flow %s: %v", flow, err)
			return
		}
		r.got <- fairDispatch{flow: flow, tokens: tokens, t: t}
	}()
	synctest.Wait()
}

// next is the request dispatched by now, which must be exactly one.
func (r *fairRig) next() fairDispatch {
	r.t.Helper()
	synctest.Wait()
	select {
	case d := <-r.got:
		select {
		case e := <-r.got:
			r.t.Fatalf("two requests dispatched into one free slot: %s and %s", d.flow, e.flow)
		default:
		}
		return d
	default:
		r.t.Fatal("no request was dispatched into the free slot")
		return fairDispatch{}
	}
}

// Two flows of weights 1 and 3, both kept backlogged, with requests of
// different sizes (a request of the weight-1 flow is three times as large):
// after every dispatch the tokens each has been served, over its weight,
// differ by no more than start-time fair queuing's bound, one largest
// request of each over its weight; and over the run the shares are 1:3 in
// tokens, within that bound over the total.
func TestFairSharesWeightedByTokens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newFairRig(t, 1)
		type spec struct {
			weight float64
			tokens int
		}
		flows := map[string]spec{"light": {1, 300}, "heavy": {3, 100}}
		// The slot is taken, then both flows queue five requests each.
		hold, err := r.q.Acquire(context.Background(), Request{Weight: 1, Flow: "other", Shape: enginemodel.Shape{MaxTokens: 1}})
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			for _, name := range []string{"light", "heavy"} {
				r.send(name, flows[name].weight, flows[name].tokens, Interactive)
			}
		}
		bound := 300.0/1 + 100.0/3
		served := map[string]float64{}
		requests := map[string]int{}
		prev := hold
		const dispatches = 600
		for i := range dispatches {
			prev.Release()
			d := r.next()
			served[d.flow] += float64(d.tokens)
			requests[d.flow]++
			prev = d.t
			if gap := math.Abs(served["light"]/1 - served["heavy"]/3); gap > bound {
				t.Errorf("after %d dispatches: light %v tokens (weight 1), heavy %v (weight 3): %v apart over their weights, want at most %v",
					i+1, served["light"], served["heavy"], gap, bound)
				break
			}
			r.send(d.flow, flows[d.flow].weight, flows[d.flow].tokens, Interactive)
		}
		total := served["light"] + served["heavy"]
		got := served["heavy"] / total
		// The bound in tokens over the total, as a share: W_h/3 - W_l
		// within bound means W_h/total within 3*bound/(4*total) of 3/4.
		tol := 3 * bound / (4 * total)
		if math.Abs(got-0.75) > tol {
			t.Errorf("heavy (weight 3) got %.4f of the tokens, want 0.75 within %.4f (served %v, requests %v)", got, tol, served, requests)
		}
		// Tokens, not requests: the weight-3 flow's requests are a third
		// the size, so it was dispatched about nine times as many.
		if ratio := float64(requests["heavy"]) / float64(requests["light"]); ratio < 8 || ratio > 10 {
			t.Errorf("requests heavy:light = %d:%d (%.2f), want about 9 (3x the weight, a third the size)", requests["heavy"], requests["light"], ratio)
		}
		prev.Release()
		drainRig(t, r)
	})
}

// drainRig releases every request still queued in r, as each is
// dispatched.
func drainRig(t *testing.T, r *fairRig) {
	t.Helper()
	for {
		synctest.Wait()
		select {
		case d := <-r.got:
			d.t.Release()
		default:
			if n := r.q.Busy(); n > 0 {
				t.Fatalf("%d requests left in the queue", n)
			}
			return
		}
	}
}

// The output cap is a guess: a flow whose answers are shorter than their
// caps is charged what they took when they end, so two flows of equal
// weight, one asking for 400 tokens and taking 100, the other asking for
// and taking 100, are served equal tokens (and so about equal requests),
// not 1:4 requests.
func TestFairSharesCorrectedAtRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newFairRig(t, 1)
		hold, err := r.q.Acquire(context.Background(), Request{Weight: 1, Flow: "other", Shape: enginemodel.Shape{MaxTokens: 1}})
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			r.send("capped", 1, 400, Interactive)
			r.send("exact", 1, 100, Interactive)
		}
		requests := map[string]int{}
		prev := hold
		for range 400 {
			prev.Release()
			d := r.next()
			requests[d.flow]++
			// Every answer is 100 tokens long, as the usage says.
			d.t.Complete(Report{OutputTokens: 100})
			r.send(d.flow, 1, d.tokens, Interactive)
			prev = d.t
		}
		// Charged 400 at dispatch and 100 at release, "capped" may be up to
		// one cap (4 requests of "exact") ahead at any time.
		if diff := requests["capped"] - requests["exact"]; diff < -1 || diff > 4 {
			t.Errorf("requests capped:exact = %d:%d, want equal within one output cap (4 requests)", requests["capped"], requests["exact"])
		}
		prev.Release()
		// What the observer is told each flow took: 100 tokens a request,
		// not the caps.
		served := r.q.obs.(*recordingObserver).served
		for flow, n := range requests {
			if want := 100 * float64(n); served[flow] != want {
				t.Errorf("served tokens of %s = %v for %d requests of 100 tokens, want %v", flow, served[flow], n, want)
			}
		}
		drainRig(t, r)
	})
}

// Uncontended, nobody is held back: a flow that has been served a great
// deal alone is still dispatched at once whenever a slot is free, and so
// is a flow arriving beside it; when contention begins, the flow served
// alone is not made to repay its past (it shares from then on).
func TestUncontendedFlowNeverHeldBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &recordingObserver{}
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait = 2, 100, time.Hour
		q := New(c, nil, rec)
		q.SetModel(perRequest(time.Millisecond))
		ctx := context.Background()
		req := func(flow string) Request {
			return Request{Weight: 1, Flow: flow, FlowWeight: 1, Shape: enginemodel.Shape{MaxTokens: 200}}
		}
		for i := range 200 {
			// One at a time, and two at once: both within the limit.
			a, err := q.Acquire(ctx, req("alone"))
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				b, err := q.Acquire(ctx, req("alone"))
				if err != nil {
					t.Fatal(err)
				}
				b.Release()
			}
			if a.Waited() != 0 {
				t.Fatalf("request %d of a flow alone waited %s", i, a.Waited())
			}
			a.Release()
		}
		other, err := q.Acquire(ctx, req("newcomer"))
		if err != nil {
			t.Fatal(err)
		}
		again, err := q.Acquire(ctx, req("alone"))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range rec.got() {
			if d != "interactive dispatch slot_free" {
				t.Fatalf("decision %q while a slot was free, want every one dispatched at once", d)
			}
		}
		// Both slots taken: contention. Five of each queued, the flow
		// served alone first; they alternate from here, not newcomer first
		// until it has caught up.
		r := &fairRig{t: t, q: q, got: make(chan fairDispatch, 100)}
		for range 5 {
			r.send("alone", 1, 200, Interactive)
		}
		for range 5 {
			r.send("newcomer", 1, 200, Interactive)
		}
		var order []string
		prev := []*Ticket{other, again}
		for i := range 10 {
			prev[i%2].Release()
			d := r.next()
			order = append(order, d.flow)
			prev[i%2] = d.t
		}
		counts := map[string]int{}
		for i, f := range order {
			counts[f]++
			if d := counts["alone"] - counts["newcomer"]; d < -1 || d > 1 {
				t.Fatalf("dispatch order %v: after %d, alone %d and newcomer %d, want them alternating", order, i+1, counts["alone"], counts["newcomer"])
			}
		}
		for _, tk := range prev {
			tk.Release()
		}
		drainRig(t, r)
	})
}

// A light flow that arrives behind a heavy flow's backlog goes next: it
// is told nobody is ahead of it, admission predicts its wait from that,
// and the next slot freed is its.
func TestLightFlowGoesAheadOfABacklog(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newFairRig(t, 1)
		hold, err := r.q.Acquire(context.Background(), Request{Weight: 1, Flow: "heavy", Shape: enginemodel.Shape{MaxTokens: 200}})
		if err != nil {
			t.Fatal(err)
		}
		for range 20 {
			r.send("heavy", 1, 200, Interactive)
		}
		type pos struct{ ahead int }
		seen := make(chan pos, 10)
		go func() {
			tk, err := r.q.Acquire(context.Background(), Request{Weight: 1, Flow: "light", Shape: enginemodel.Shape{MaxTokens: 200}, Stream: true,
				Updates: time.Second, Waiting: func(ahead int, _ time.Duration) { seen <- pos{ahead} }})
			if err != nil {
				t.Errorf("light: %v", err)
				return
			}
			r.got <- fairDispatch{flow: "light", tokens: 200, t: tk}
		}()
		synctest.Wait()
		time.Sleep(time.Second)
		synctest.Wait()
		if p := <-seen; p.ahead != 0 {
			t.Errorf("the light flow's request is told %d ahead of it, want 0 (the heavy flow's backlog is behind it)", p.ahead)
		}
		hold.Release()
		d := r.next()
		if d.flow != "light" {
			t.Errorf("the slot freed went to %s, want the light flow's request", d.flow)
		}
		d.t.Release()
		drainRig(t, r)
	})
}

// The order of dispatch: class first (interactive before batch), then the
// flows' shares, then earliest deadline first within a flow.
func TestClassThenFlowThenDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait, c.BatchMaxWait, c.SLO = 1, 100, time.Minute, time.Minute, 30*time.Second
		q := New(c, nil, nil)
		q.SetModel(perRequest(10 * time.Millisecond))
		ctx := context.Background()
		hold, err := q.Acquire(ctx, Request{Weight: 1})
		if err != nil {
			t.Fatal(err)
		}
		type sent struct {
			name     string
			flow     string
			class    Class
			deadline time.Duration
		}
		reqs := []sent{
			{"b-batch", "b", Batch, 0},
			{"a1", "a", Interactive, 0},
			{"a2", "a", Interactive, 0},
			{"a3-due-soon", "a", Interactive, 10 * time.Second},
			{"b1", "b", Interactive, 0},
			{"b2-due-soon", "b", Interactive, 5 * time.Second},
		}
		got := make(chan string, len(reqs))
		tickets := make(chan *Ticket, len(reqs))
		for _, s := range reqs {
			go func() {
				tk, err := q.Acquire(ctx, Request{Weight: 1, Flow: s.flow, Class: s.class, Deadline: s.deadline, Shape: enginemodel.Shape{MaxTokens: 100}})
				if err != nil {
					t.Errorf("%s: %v", s.name, err)
					return
				}
				got <- s.name
				tickets <- tk
			}()
			synctest.Wait()
			time.Sleep(time.Millisecond)
		}
		// Flow a queued first, so its head goes first; within each flow the
		// earliest deadline; the flows alternate; batch last.
		want := []string{"a3-due-soon", "b2-due-soon", "a1", "b1", "a2", "b-batch"}
		var order []string
		prev := hold
		for range reqs {
			prev.Release()
			synctest.Wait()
			order = append(order, <-got)
			prev = <-tickets
		}
		prev.Release()
		if !slices.Equal(order, want) {
			t.Errorf("dispatch order %v, want %v", order, want)
		}
	})
}

// A full queue is shared by flows: a request of a flow with less queued
// for its weight displaces the newest request of the flow with the most,
// and a request of the flow with the most is refused (queue_full).
func TestFullQueueSharedByFlows(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := cfg()
		c.MaxInflight, c.MaxQueued, c.MaxWait = 1, 4, time.Hour
		q := New(c, nil, &recordingObserver{})
		q.SetModel(perRequest(time.Millisecond))
		ctx := context.Background()
		req := func(flow string) Request {
			return Request{Weight: 1, Flow: flow, Shape: enginemodel.Shape{MaxTokens: 100}}
		}
		hold, err := q.Acquire(ctx, req("flood"))
		if err != nil {
			t.Fatal(err)
		}
		var flood []<-chan result
		for range 4 {
			flood = append(flood, acquireAsync(q, ctx, req("flood")))
			synctest.Wait()
		}
		light := acquireAsync(q, ctx, req("light"))
		synctest.Wait()
		select {
		case r := <-flood[3]:
			if ref := refusal(t, r.err); ref.Reason != ReasonDisplaced {
				t.Fatalf("the flood's newest request: %v, want displaced", ref)
			}
		default:
			t.Fatal("the flood's newest request was not displaced by the light flow's")
		}
		if _, err := q.Acquire(ctx, req("flood")); refusal(t, err).Reason != ReasonQueueFull {
			t.Fatalf("another request of the flood: %v, want queue_full", err)
		}
		hold.Release()
		synctest.Wait()
		// The light flow's request goes first; then the flood's three.
		r := <-light
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.t.Release()
		for i := range 3 {
			synctest.Wait()
			r := <-flood[i]
			if r.err != nil {
				t.Fatalf("flood %d: %v", i, r.err)
			}
			r.t.Release()
		}
	})
}

// A flow's state is forgotten once it has nothing queued or running and
// has sent nothing for forgetAfter (its rate of arrivals is then nothing),
// so the states are bounded by the keys active, and with no flow left the
// virtual time starts again.
func TestFlowsForgottenWhenIdle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newFairRig(t, 1)
		hold, err := r.q.Acquire(context.Background(), Request{Weight: 1, Flow: "k0", Shape: enginemodel.Shape{MaxTokens: 10}})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			r.send(fmt.Sprintf("k%d", i%10), 1, 10, Interactive)
		}
		prev := hold
		for range 50 {
			prev.Release()
			prev = r.next().t
		}
		prev.Release()
		r.q.mu.Lock()
		defer r.q.mu.Unlock()
		if n := len(r.q.classes[Interactive].flows); n != 10 {
			t.Errorf("%d flows just after their requests, want 10 (their rates are remembered)", n)
		}
		time.Sleep(forgetAfter + time.Second)
		for c := range r.q.classes {
			r.q.classes[c].sweep(time.Now())
			if n := len(r.q.classes[c].flows); n != 0 {
				t.Errorf("class %v holds %d flows with nothing queued or running", Class(c), n)
			}
			if v := r.q.classes[c].vtime; v != 0 {
				t.Errorf("class %v's virtual time %v with no flow, want 0", Class(c), v)
			}
		}
	})
}
