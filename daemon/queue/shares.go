package queue

// Fair shares of the engine's slots among flows, for admission.
//
// Ordering the queue (fair.go) is not enough under an objective: at the
// in-flight limit admission refuses nearly every request that would have
// to wait (the model's time at the limit is close to the objective), so
// the queue stays short and who is served is decided by who finds a free
// slot on arrival, in proportion to how often each flow asks. A flood
// takes nearly every slot that frees. So admission divides the class's
// in-flight limit L among the flows that are active now by weighted
// max-min fairness over their demand:
//
//  1. A flow's demand is the slots it would hold if it were served in
//     full: its rate of arrivals (slots a second, refused ones included,
//     averaged over fairTau) times the time a request holds its slots
//     (the queue's engine time), or what it holds and has queued if that
//     is more. A flow with nothing queued or running whose demand is
//     under activeDemand is idle.
//  2. With fewer than two active flows, or when every active flow's
//     demand fits its weighted share (water-filling: the flows asking less
//     than their share are satisfied and the rest is divided among the
//     others by weight), nobody is held back: every flow may take any free
//     slot, as without flows.
//  3. Otherwise the satisfied flows ("light") may always dispatch: into a
//     free slot, or, when the constrained flows have filled the limit,
//     beyond it, as long as the flow holds less than its weighted share of
//     L (at least one slot) and the light flows together less than theirs.
//     The limit is overdrawn for as long as a constrained flow's request
//     takes to end: a constrained flow takes a free slot only below L, so
//     the slot its request frees goes unfilled. A light flow's request is
//     then dispatched on arrival instead of being refused for want of a
//     slot the flood took, at the cost of running the engine a request or
//     two past the limit now and then.
//  4. The constrained flows ("heavy") share what the light ones leave, L
//     minus the light flows' slots, by weight: a heavy flow takes free
//     slots below L up to its allowance in whole slots, and beyond it only
//     the free slots that the other heavy flows' unused allowances leave.
//     The allowances are rounded down, and the slots that leaves over go
//     one each to the heavy flows with the most credit (the slot-seconds
//     their allowances came to less those they held), so that a
//     fractional allowance is held on average. Each heavy flow holds its allowance,
//     so the slots, and with them the engine's work, are shared by weight
//     (the work in tokens exactly where the flows' requests are alike, as
//     a slot's time is mostly its answer's tokens).

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// fairTau is the time constant of a flow's rate of arrivals: long enough
// that a light flow's estimate holds between its requests, short enough
// that a flow that stops is forgotten within a minute.
const fairTau = 10 * time.Second

// creditHolds bounds a heavy flow's credit and debt, in requests' holds
// of one slot.
const creditHolds = 4

// activeDemand is the demand, in slots, under which a flow with nothing
// queued or running is idle.
const activeDemand = 0.05

// arrived counts a request of slots arriving now in f's rate.
func (f *flow) arrived(now time.Time, slots int) {
	if f.firstSeen.IsZero() {
		f.firstSeen = now
	}
	f.rate = f.rawRateAt(now) + float64(slots)/fairTau.Seconds()
	f.rateTime = now
}

// rawRateAt is the average of f's arrivals at now, decayed from its last
// arrival.
func (f *flow) rawRateAt(now time.Time) float64 {
	if f.rateTime.IsZero() {
		return 0
	}
	return f.rate * math.Exp(-max(0, now.Sub(f.rateTime).Seconds())/fairTau.Seconds())
}

// rateAt is f's rate of arrivals at now, in slots a second: the average,
// corrected for a flow seen for less than fairTau, whose average has not
// yet risen to its rate (as if it had arrived at that rate before, and at
// least a tenth of fairTau: a flow's first request counts as ten times
// 1/fairTau, a rate of about one a second).
func (f *flow) rateAt(now time.Time) float64 {
	age := max(now.Sub(f.firstSeen).Seconds(), fairTau.Seconds()/10)
	return f.rawRateAt(now) / (1 - math.Exp(-age/fairTau.Seconds()))
}

// hold adds delta slots to what f holds in the engine at now.
func (f *flow) hold(now time.Time, delta int) {
	f.usedSecAt(now)
	f.runSlots += delta
}

// usedSecAt brings the integral of the slots f holds up to now and
// returns it, in slot-seconds.
func (f *flow) usedSecAt(now time.Time) float64 {
	if dt := now.Sub(f.usedTime).Seconds(); !f.usedTime.IsZero() && dt > 0 {
		f.usedSec += float64(f.runSlots) * dt
	}
	f.usedTime = now
	return f.usedSec
}

// account brings a heavy flow's credit up to now, its allowance having
// been f.allow since the last call, and sets its allowance to allow; the
// credit is the slot-seconds its allowances came to less those it held,
// within creditHolds requests' holds either way (a flow that cannot use
// its allowance does not bank it for long). fresh: the flow was not heavy
// at the last call, and starts with none.
func (f *flow) account(now time.Time, allow float64, hold time.Duration, fresh bool) {
	used := f.usedSecAt(now)
	if fresh || f.allowTime.IsZero() {
		f.allowSec = used
	} else if dt := now.Sub(f.allowTime).Seconds(); dt > 0 {
		f.allowSec += f.allow * dt
	}
	b := creditHolds * hold.Seconds()
	f.allowSec = min(max(f.allowSec, used-b), used+b)
	f.allowTime = now
	f.allow = allow
	f.credit = f.allowSec - used
	f.entitled = int(math.Floor(allow + 1e-9))
}

// division is a class's limit divided among its active flows at one
// moment; each active flow's light, share and allow fields say its part.
type division struct {
	// contended: at least two active flows and one of them constrained.
	contended bool
	// heavy are the constrained flows; lightShare is the light flows'
	// weighted share of the limit together, lightRun the slots they hold.
	heavy      []*flow
	lightShare float64
	lightRun   int
}

// divide divides limit among fq's active flows at now, a request holding
// its slots for hold (0: not yet known, and nothing is divided). It
// forgets the idle flows with nothing to remember.
func (fq *fairQueue) divide(now time.Time, limit int, hold time.Duration) division {
	var d division
	fq.sweep(now)
	for _, f := range fq.flows {
		f.wasHeavy, f.heavy = f.heavy, false
	}
	if hold <= 0 || len(fq.flows) < 2 {
		return d
	}
	active := fq.scratch[:0]
	for _, f := range fq.flows {
		f.light, f.share = false, 0
		f.demand = max(f.rateAt(now)*hold.Seconds(), float64(f.runSlots+f.slots))
		if f.waiters.Len() == 0 && f.running == 0 && f.demand < activeDemand {
			continue
		}
		active = append(active, f)
	}
	fq.scratch = active[:0]
	if len(active) < 2 {
		return d
	}
	slices.SortFunc(active, func(a, b *flow) int {
		if c := cmp.Compare(a.demand/a.weight, b.demand/b.weight); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})
	total := 0.0
	for _, f := range active {
		total += f.weight
	}
	left, weights := float64(limit), total
	for i, f := range active {
		if f.demand > left*f.weight/weights {
			d.heavy = active[i:]
			break
		}
		f.light = true
		left -= f.demand
		weights -= f.weight
	}
	if len(d.heavy) == 0 {
		return d
	}
	d.contended = true
	heavyWeight := 0.0
	for _, f := range active {
		f.share = float64(limit) * f.weight / total
		if f.light {
			d.lightShare += f.share
			d.lightRun += f.runSlots
		} else {
			heavyWeight += f.weight
		}
	}
	pool := max(0, float64(limit-d.lightRun))
	whole := 0
	for _, f := range d.heavy {
		f.heavy = true
		f.account(now, pool*f.weight/heavyWeight, hold, !f.wasHeavy)
		whole += f.entitled
	}
	// The slots left over by rounding the allowances down go to the heavy
	// flows furthest behind theirs (largest credit first), one each, so
	// that a fractional allowance is held on average.
	byCredit := slices.Clone(d.heavy)
	slices.SortFunc(byCredit, func(a, b *flow) int {
		if c := cmp.Compare(b.credit, a.credit); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})
	for _, f := range byCredit[:min(len(byCredit), max(0, int(math.Floor(pool+1e-9))-whole))] {
		f.entitled++
	}
	return d
}

// room is how many slots a request of f may take now, of a class whose
// limit is limit (free slots, or beyond them for a light flow), with
// inflight slots in use and at most most in all (MaxInflight).
func (f *flow) room(now time.Time, d division, limit, inflight, most int) int {
	free := limit - inflight
	if !d.contended || f == nil {
		return free
	}
	if f.light {
		// Its share, and at least one slot; the light flows' together.
		over := min(int(math.Max(1, f.share))-f.runSlots, int(math.Ceil(d.lightShare))-d.lightRun, most-inflight)
		return max(free, over)
	}
	// Its allowance in whole slots, or the free slots that the other heavy
	// flows' allowances leave.
	unused := 0
	for _, g := range d.heavy {
		if g != f {
			unused += max(0, g.entitled-g.runSlots)
		}
	}
	return max(min(free, f.entitled-f.runSlots), free-unused)
}
