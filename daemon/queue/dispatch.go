package queue

import (
	"time"
)

// capLocked is the in-flight limit now.
func (q *Queue) capLocked() int {
	if q.limit > 0 && q.limit < q.cfg.MaxInflight {
		return q.limit
	}
	return q.cfg.MaxInflight
}

// capForLocked is the in-flight limit for class.
func (q *Queue) capForLocked(class Class) int {
	c := q.capLocked()
	if class == Batch && q.cfg.BatchShare > 0 && q.cfg.BatchShare < 1 {
		c = max(1, int(float64(c)*q.cfg.BatchShare))
	}
	return c
}

// roomLocked is how many slots a request of class and flow may take at
// now: the free slots under the class's limit, fewer for a flow over its
// share of a contended limit, more for one under it (shares.go).
func (q *Queue) roomLocked(now time.Time, class Class, flow string) int {
	limit := q.capForLocked(class)
	fq := &q.classes[class]
	d := fq.divide(now, limit, q.engineTime)
	return fq.flows[flow].room(now, d, limit, q.inflight, q.cfg.MaxInflight)
}

// shortLocked is how many more slots must free up before a request of
// weight w, class and flow, with aheadSlots slots queued before it (own of
// them its flow's), may go. own is its flow where only its flow's own
// requests' ends make that room (a heavy flow held to its allowance,
// shares.go: the slots the others free go to them), else nil.
func (q *Queue) shortLocked(now time.Time, class Class, flow string, aheadSlots, ownSlots, w int) (short int, own *flow) {
	limit := q.capForLocked(class)
	fq := &q.classes[class]
	d := fq.divide(now, limit, q.engineTime)
	f := fq.flows[flow]
	room := f.room(now, d, limit, q.inflight, q.cfg.MaxInflight)
	if d.contended && f != nil && f.heavy && f.entitled-f.runSlots < ownSlots+w {
		return ownSlots + w - (f.entitled - f.runSlots), f
	}
	return aheadSlots + w - room, nil
}

// fitsLocked reports whether a request of weight w, class and flow may
// enter the engine at now.
func (q *Queue) fitsLocked(now time.Time, w int, class Class, flow string) bool {
	if q.notReady || (q.hold && q.inflight > 0) {
		return false
	}
	return w <= q.roomLocked(now, class, flow) || (q.inflight == 0 && w <= q.cfg.MaxInflight)
}

// startLocked dispatches r, which arrived at arrived, at now; judged says
// its answer moves admission's level (it was admitted by the model against
// its objective obj, not held through a cold start).
// fl is its flow, charged cost tokens of which prompt are its prompt's.
func (q *Queue) startLocked(now time.Time, r Request, arrived time.Time, judged bool, obj time.Duration, fl *flow, cost, prompt float64) *Ticket {
	q.accountLocked(now)
	q.inflight += r.Weight
	t := &Ticket{q: q, weight: r.Weight, shape: r.Shape, stream: r.Stream, dispatched: now, arrived: arrived, slotsAt: q.slotSeconds,
		judged: judged, objective: obj, model: q.model, inflightAt: q.inflight,
		class: r.Class, flow: fl, cost: cost, prompt: prompt}
	t.elem = q.running.PushBack(t)
	return t
}

func (q *Queue) removeLocked(w *waiter) {
	q.classes[w.req.Class].remove(w)
	// The head may have changed: a smaller request behind may now fit.
	q.dispatchLocked(time.Now(), false)
}

// blockedLocked reports whether requests wait for slots (as opposed to
// waiting for a batch window).
func (q *Queue) blockedLocked(now time.Time) bool {
	return q.queuedLocked() > 0 && !q.notReady && q.pickLocked(now) == nil
}

// nextLocked is the request to dispatch at now, or nil.
func (q *Queue) nextLocked(now time.Time) *waiter {
	if q.notReady || (q.hold && q.inflight > 0) {
		return nil
	}
	return q.pickLocked(now)
}

// pickLocked is the first queued request that may take slots at now, in
// the order of dispatch: interactive first (a class with requests queued
// and none of them allowed holds back the classes after it); within a
// class, the fair order of its flows' heads (fair.go), a head passing
// those before it only for want of their room: one blocked by the free
// slots is passed only by a flow with room beyond them (a light flow of a
// contended limit, shares.go), one blocked by its flow's share by any
// that has room.
func (q *Queue) pickLocked(now time.Time) *waiter {
	for _, c := range []Class{Interactive, Batch} {
		fq := &q.classes[c]
		if fq.n == 0 {
			continue
		}
		limit := q.capForLocked(c)
		d := fq.divide(now, limit, q.engineTime)
		free := limit - q.inflight
		heads := fq.heads()
		for i, w := range heads {
			room := w.flow.room(now, d, limit, q.inflight, q.cfg.MaxInflight)
			if w.req.Weight > room && !(q.inflight == 0 && w.req.Weight <= q.cfg.MaxInflight) {
				continue
			}
			if i == 0 || room > free || heads[0].req.Weight <= free {
				return w
			}
		}
		return nil
	}
	return nil
}

// frontLocked is the next request to dispatch: interactive first, then
// by fair share among flows, then by deadline within a flow.
func (q *Queue) frontLocked() *waiter {
	for _, c := range []Class{Interactive, Batch} {
		if w := q.classes[c].front(); w != nil {
			return w
		}
	}
	return nil
}

// dispatchLocked releases waiters to the engine. Without a batch window it
// releases the next (nextLocked) while there is one. With one, it releases up to
// a batch (MaxBatch, at most the in-flight limit) when the window closes
// (timerFired) or as soon as a batch waits, and otherwise makes sure a window is running.
func (q *Queue) dispatchLocked(now time.Time, timerFired bool) {
	if q.queuedLocked() == 0 || q.notReady {
		return
	}
	limit := q.queuedLocked()
	if q.cfg.BatchWindow > 0 {
		// A batch is at most the in-flight limit (MaxBatch 0: exactly it).
		batch := q.capLocked()
		if q.cfg.MaxBatch > 0 {
			batch = min(batch, q.cfg.MaxBatch)
		}
		if !timerFired && q.queuedLocked() < batch {
			q.armLocked()
			return
		}
		limit = batch
	}
	var released []*waiter
	for len(released) < limit {
		w := q.nextLocked(now)
		if w == nil {
			break
		}
		q.classes[w.req.Class].dispatch(now, w)
		w.ticket = q.startLocked(now, w.req, w.arrived, w.judged, w.objective, w.flow, w.cost, w.prompt)
		released = append(released, w)
	}
	if len(released) == 0 {
		if q.cfg.BatchWindow > 0 && q.queuedLocked() > 0 && !q.blockedLocked(now) {
			q.armLocked()
		}
		return
	}
	groups := map[string]*Group{}
	for _, w := range released {
		if w.req.Key == "" {
			continue
		}
		g := groups[w.req.Key]
		if g == nil {
			g = &Group{}
			groups[w.req.Key] = g
		}
		g.Members = append(g.Members, w.ticket)
		w.ticket.group = g
	}
	for _, w := range released {
		close(w.ready)
	}
	if q.obs != nil {
		q.obs.Dispatched(len(released))
	}
	if q.cfg.BatchWindow > 0 && q.queuedLocked() > 0 && !q.blockedLocked(now) {
		q.armLocked()
	}
}

// armLocked starts the batch window unless one is running.
func (q *Queue) armLocked() {
	if q.timer != nil {
		return
	}
	q.timer = time.AfterFunc(q.cfg.BatchWindow, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.timer = nil
		q.dispatchLocked(time.Now(), true)
	})
}
