package queue

// Fair shares among flows (API keys) within a priority class: start-time
// fair queuing (Goyal, Vin and Cheng, SIGCOMM 1996), counted in tokens.
//
// Each class keeps one queue per flow, earliest deadline first, and a
// virtual time. A request costs its prompt tokens plus its output cap
// (Weight sequences of Shape.MaxTokens), and advances its flow's virtual
// clock by that cost over the flow's weight. A flow's head request has a
// start tag: where its flow's last dispatched request finished, or the
// class's virtual time if that is later (a flow that had nothing queued
// banks no credit); each request behind it starts where the one before it
// finishes. The queue dispatches the head with the smallest start tag
// (ties: the earlier arrival, then the flow's name), and the virtual time
// becomes that tag. Over any stretch in which two flows f and g both have
// requests queued, the tokens dispatched to each, over its weight, differ
// by at most one largest request of each over its weight:
//
//	|W_f/w_f - W_g/w_g| <= C_f/w_f + C_g/w_g
//
// The output cap is a guess at dispatch; when a request ends, its flow is
// charged what it took instead (usage's prompt and completion tokens, or
// the streamed chunks where the answer carried no usage), so that a flow
// whose answers stop early is not held to its caps.
//
// The order is work-conserving: a request that finds a free slot and
// nothing queued ahead of it in this order is dispatched at once, whatever
// its flow was served before, so an uncontended engine holds nobody back.
// Which slots count as free for a flow when the limit is contended is
// shares.go's. Without keys every request is of the one flow "", and the
// order is the class's earliest deadline first, as it was before flows.

import (
	"container/list"
	"slices"
	"time"
)

// flow is one API key's requests in one class.
type flow struct {
	name   string
	weight float64
	// waiters holds its queued requests (*waiter), earliest deadline first;
	// cost and slots are their sums.
	waiters list.List
	cost    float64
	slots   int
	// start is the head's start tag while waiters is not empty; finish is
	// where its last dispatched request finished.
	start, finish float64
	// running counts its tickets not yet released, runSlots their slots;
	// usedSec is the integral of runSlots up to usedTime.
	running, runSlots int
	usedSec           float64
	usedTime          time.Time
	// rate is its arrivals in slots a second (fairTau), as of rateTime;
	// firstSeen is its first arrival.
	rate                float64
	rateTime, firstSeen time.Time
	// What divide last made of it (shares.go): the slots it asks for, its
	// weighted share of the limit, whether that share satisfies it; a
	// constrained flow's allowance (since allowTime, allowSec their
	// integral, credit that less the slot-seconds it held), and its
	// allowance in whole slots.
	demand, share, allow float64
	light, heavy         bool
	wasHeavy             bool
	allowSec, credit     float64
	allowTime            time.Time
	entitled             int
}

// fairQueue is one class's queue: its flows and its virtual time.
type fairQueue struct {
	flows map[string]*flow
	// active are the flows with requests queued, in no order that matters.
	active []*flow
	vtime  float64
	// n and slots count the requests and slots queued, all flows.
	n, slots int
	scratch  []*flow
}

// placement is where a new request would go: its flow (nil: a flow not
// yet known), the element to insert it after in its flow (nil: the front),
// its start tag, the requests and slots of its class dispatched before
// it, and how many of those slots are its own flow's.
type placement struct {
	flow              *flow
	after             *list.Element
	tag               float64
	ahead, aheadSlots int
	ownSlots          int
}

// share is what a flow's request costs in virtual time.
func share(cost, weight float64) float64 { return cost / weight }

// headStart is where f's head would start if f had nothing queued.
func (fq *fairQueue) headStart(f *flow) float64 {
	if f == nil {
		return fq.vtime
	}
	return max(fq.vtime, f.finish)
}

// before reports whether a request of tag a that arrived at aAt in flow
// aName goes before one of tag b, arrived at bAt, in flow bName.
func before(a float64, aAt time.Time, aName string, b float64, bAt time.Time, bName string) bool {
	if a != b {
		return a < b
	}
	if !aAt.Equal(bAt) {
		return aAt.Before(bAt)
	}
	return aName < bName
}

// front is the request to dispatch next, or nil.
func (fq *fairQueue) front() *waiter {
	var best *waiter
	for _, f := range fq.active {
		w := f.waiters.Front().Value.(*waiter)
		if best == nil || before(f.start, w.arrived, f.name, best.flow.start, best.arrived, best.flow.name) {
			best = w
		}
	}
	return best
}

// heads are the flows' first requests, in the order of dispatch.
func (fq *fairQueue) heads() []*waiter {
	out := make([]*waiter, 0, len(fq.active))
	for _, f := range fq.active {
		out = append(out, f.waiters.Front().Value.(*waiter))
	}
	slices.SortFunc(out, func(a, b *waiter) int {
		if before(a.flow.start, a.arrived, a.flow.name, b.flow.start, b.arrived, b.flow.name) {
			return -1
		}
		return 1
	})
	return out
}

// countBefore counts the requests and slots of flows other than skip
// that go before a request of tag tag, arrived at at, in flow name.
func (fq *fairQueue) countBefore(skip *flow, tag float64, at time.Time, name string) (n, slots int) {
	for _, g := range fq.active {
		if g == skip {
			continue
		}
		t := g.start
		for e := g.waiters.Front(); e != nil; e = e.Next() {
			w := e.Value.(*waiter)
			if !before(t, w.arrived, g.name, tag, at, name) {
				break
			}
			n++
			slots += w.req.Weight
			t += share(w.cost, g.weight)
		}
	}
	return n, slots
}

// place finds where a request of flow name and weight, due at due (zero:
// never), costing cost, arriving now, would go.
func (fq *fairQueue) place(name string, weight float64, due time.Time, cost float64, now time.Time) placement {
	f := fq.flows[name]
	p := placement{flow: f, tag: fq.headStart(f)}
	if f != nil && f.waiters.Len() > 0 {
		p.tag = f.start
		for e := f.waiters.Front(); e != nil; e = e.Next() {
			w := e.Value.(*waiter)
			if !due.IsZero() && (w.due.IsZero() || w.due.After(due)) {
				break
			}
			p.after = e
			p.ahead++
			p.aheadSlots += w.req.Weight
			p.ownSlots += w.req.Weight
			p.tag += share(w.cost, f.weight)
		}
	}
	n, slots := fq.countBefore(f, p.tag, now, name)
	p.ahead += n
	p.aheadSlots += slots
	return p
}

// flowFor returns the flow named name, made if new, with weight.
func (fq *fairQueue) flowFor(name string, weight float64) *flow {
	if fq.flows == nil {
		fq.flows = map[string]*flow{}
	}
	f := fq.flows[name]
	if f == nil {
		f = &flow{name: name, finish: fq.vtime}
		fq.flows[name] = f
	}
	f.weight = weight
	return f
}

// insert queues w where p says.
func (fq *fairQueue) insert(w *waiter, p placement) {
	f := fq.flowFor(w.req.Flow, w.req.FlowWeight)
	if f.waiters.Len() == 0 {
		f.start = fq.headStart(f)
		fq.active = append(fq.active, f)
	}
	if p.after == nil || p.flow != f {
		w.elem = f.waiters.PushFront(w)
	} else {
		w.elem = f.waiters.InsertAfter(w, p.after)
	}
	w.flow = f
	f.cost += w.cost
	f.slots += w.req.Weight
	fq.n++
	fq.slots += w.req.Weight
}

// unlink takes w out of its flow's queue; the request behind it, if w was
// the head, takes its start tag.
func (fq *fairQueue) unlink(w *waiter) {
	f := w.flow
	f.waiters.Remove(w.elem)
	f.cost -= w.cost
	f.slots -= w.req.Weight
	fq.n--
	fq.slots -= w.req.Weight
	if f.waiters.Len() == 0 {
		f.cost = 0
		for i, g := range fq.active {
			if g == f {
				fq.active[i] = fq.active[len(fq.active)-1]
				fq.active = fq.active[:len(fq.active)-1]
				break
			}
		}
	}
}

// remove takes w out of the queue without dispatching it (it left, timed
// out or was refused).
func (fq *fairQueue) remove(w *waiter) {
	fq.unlink(w)
}

// dispatch takes w, the front, out of the queue to the engine: the
// virtual time moves to its start tag, and its flow's next request starts
// where it finishes.
func (fq *fairQueue) dispatch(now time.Time, w *waiter) {
	f := w.flow
	head := f.waiters.Front() == w.elem
	tag := f.start
	fq.unlink(w)
	if !head {
		// Not the head (dispatch takes the front, so this does not happen):
		// its cost moves the flow's later requests back all the same.
		tag = f.finish
	}
	fq.vtime = max(fq.vtime, tag)
	f.finish = max(f.finish, tag+share(w.cost, f.weight))
	if f.waiters.Len() > 0 {
		f.start = max(f.start, f.finish)
	}
	f.running++
	f.hold(now, w.req.Weight)
}

// charge accounts for a request of flow name dispatched without queuing,
// as if it had been queued at the head of its flow and dispatched at once.
func (fq *fairQueue) charge(now time.Time, name string, weight, cost float64, slots int) *flow {
	f := fq.flowFor(name, weight)
	tag := fq.headStart(f)
	if f.waiters.Len() > 0 {
		tag = f.start
		f.start += share(cost, f.weight)
	}
	fq.vtime = max(fq.vtime, tag)
	f.finish = max(f.finish, tag+share(cost, f.weight))
	f.running++
	f.hold(now, slots)
	return f
}

// released ends one of f's requests, of slots slots, which was charged
// delta tokens more than it took (less, if negative): its flow's clock
// moves back by that, never behind the virtual time for its queued head.
func (fq *fairQueue) released(now time.Time, f *flow, slots int, delta float64) {
	f.running--
	f.hold(now, -slots)
	if d := share(delta, f.weight); d != 0 {
		f.finish -= d
		if f.waiters.Len() > 0 {
			f.start = max(fq.vtime, f.start-d)
		}
	}
}

// forgetAfter is how long a flow with nothing queued or running is kept
// after its last arrival: its rate has fallen below 1% by then.
const forgetAfter = 5 * fairTau

// sweep forgets the flows with nothing queued or running and no arrival
// for forgetAfter: such a flow has no credit to keep, and a debt of at
// most its last request, which the virtual time passes within a round.
// With no flow left the virtual time starts again from zero.
func (fq *fairQueue) sweep(now time.Time) {
	for name, f := range fq.flows {
		if f.waiters.Len() == 0 && f.running == 0 && now.Sub(f.rateTime) > forgetAfter {
			delete(fq.flows, name)
		}
	}
	if len(fq.flows) == 0 {
		fq.vtime = 0
	}
}

// position counts the requests and slots of the class dispatched before
// w, which is queued, and the slots of those that are its flow's.
func (fq *fairQueue) position(w *waiter) (ahead, slots, own int) {
	f := w.flow
	tag := f.start
	for e := f.waiters.Front(); e != nil && e != w.elem; e = e.Next() {
		v := e.Value.(*waiter)
		ahead++
		own += v.req.Weight
		tag += share(v.cost, f.weight)
	}
	n, s := fq.countBefore(f, tag, w.arrived, f.name)
	return ahead + n, own + s, own
}

// fattest is the flow with the most queued over its weight, other than
// skip, or nil.
func (fq *fairQueue) fattest(skip *flow) *flow {
	var best *flow
	for _, f := range fq.active {
		if f == skip {
			continue
		}
		if best == nil || share(f.cost, f.weight) > share(best.cost, best.weight) ||
			(share(f.cost, f.weight) == share(best.cost, best.weight) && f.name < best.name) {
			best = f
		}
	}
	return best
}

// newest is the request of the flow with the most queued over its weight
// that its flow would dispatch last: the one a full queue gives up first.
func (fq *fairQueue) newest() *waiter {
	f := fq.fattest(nil)
	if f == nil {
		return nil
	}
	return f.waiters.Back().Value.(*waiter)
}

// victim is the request a full queue gives up for a new request of flow
// name, weight and cost: the newest of the flow with the most queued over
// its weight, if that flow would still have more over its weight than the
// new request's flow with it queued; else nil (the new request is the one
// to refuse).
func (fq *fairQueue) victim(name string, weight, cost float64) *waiter {
	mine := fq.flows[name]
	g := fq.fattest(mine)
	if g == nil {
		return nil
	}
	queued := cost
	if mine != nil {
		queued += mine.cost
	}
	if share(g.cost, g.weight) <= share(queued, weight) {
		return nil
	}
	return g.waiters.Back().Value.(*waiter)
}

// queuedByFlow adds each flow's queued requests to m.
func (fq *fairQueue) queuedByFlow(m map[string]int) {
	for _, f := range fq.active {
		m[f.name] += f.waiters.Len()
	}
}

// QueuedByFlow is the number of requests queued by flow, all classes.
func (q *Queue) QueuedByFlow() map[string]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	m := map[string]int{}
	for c := range q.classes {
		q.classes[c].queuedByFlow(m)
	}
	return m
}
