package queue

import (
	"container/heap"
	"context"
	"fmt"
	"math"
	"slices"
	"time"
)

// Reason says why a request was refused; the gateway maps it to an HTTP
// status and an OpenAI error type.
type Reason string

// Refusal reasons.
const (
	ReasonQueueFull    Reason = "queue_full"
	ReasonOverloaded   Reason = "overloaded"
	ReasonQueueTimeout Reason = "queue_timeout"
	ReasonDraining     Reason = "draining"
	// ReasonTooManySequences: the request asks for more sequences than the
	// engine runs at once (a client error).
	ReasonTooManySequences Reason = "too_many_sequences"
	ReasonSLO              Reason = "slo"
	// ReasonDeadline: the request's own deadline (Request.Deadline) would
	// be missed at the present load; ReasonDeadlineTooShort: even alone in
	// the engine.
	ReasonDeadline         Reason = "deadline"
	ReasonDeadlineTooShort Reason = "deadline_too_short"
	ReasonDisplaced        Reason = "displaced"
)

// Refusal is returned when a request is not admitted or times out in the
// queue. It carries what the client is told.
type Refusal struct {
	Reason  Reason
	Message string
	// RetryAfter is when the request would be admitted, as predicted.
	RetryAfter time.Duration
}

func (r *Refusal) Error() string { return string(r.Reason) + ": " + r.Message }

// RetryAfterSeconds is the Retry-After header value: RetryAfter rounded
// up to whole seconds, at least 1.
func (r *Refusal) RetryAfterSeconds() int {
	return max(1, int(math.Ceil(r.RetryAfter.Seconds())))
}

// Acquire admits r, waiting in its queue if needed. It returns a *Refusal
// when the request is refused or times out in the queue, and ctx's error
// when the caller gives up first.
func (q *Queue) Acquire(ctx context.Context, r Request) (*Ticket, error) {
	now := time.Now()
	if r.Class != Batch {
		r.Class = Interactive
	}
	if !(r.FlowWeight > 0) {
		r.FlowWeight = 1
	}
	q.mu.Lock()
	q.accountLocked(now)
	obj := q.objective(r)
	var due time.Time
	if obj > 0 {
		due = now.Add(obj)
	}
	prompt := q.model.PromptTokens(r.Shape)
	cost := prompt + float64(r.Weight*max(r.Shape.MaxTokens, 1))
	q.classes[r.Class].flowFor(r.Flow, r.FlowWeight).arrived(now, r.Weight)
	p := q.placeLocked(r, due, cost, now)
	ref, hold, judged := q.admitLocked(now, r, obj, cost, p)
	if ref != nil {
		q.mu.Unlock()
		q.decided(r.Class, "refuse", string(ref.Reason))
		return nil, ref
	}
	if q.cfg.BatchWindow == 0 && q.goesNowLocked(now, r, p.ahead) {
		fl := q.classes[r.Class].charge(now, r.Flow, r.FlowWeight, cost, r.Weight)
		t := q.startLocked(now, r, now, judged, obj, fl, cost, prompt)
		q.mu.Unlock()
		q.decided(r.Class, "dispatch", "slot_free")
		if q.obs != nil {
			q.obs.Dispatched(1)
		}
		return t, nil
	}
	why := "no_slot"
	switch {
	case q.notReady:
		why = "engine_not_ready"
	case q.hold && q.inflight > 0:
		why = "engine_saturated"
	case q.cfg.BatchWindow > 0:
		why = "batch_window"
	}
	wait := q.deadlineLocked(r.Class, obj, hold)
	w := &waiter{req: r, ready: make(chan struct{}), arrived: now, judged: judged && !q.notReady, objective: obj, due: due,
		cost: cost, prompt: prompt}
	q.classes[r.Class].insert(w, p)
	q.dispatchLocked(now, false)
	q.mu.Unlock()
	q.decided(r.Class, "queue", why)

	timer := time.NewTimer(wait)
	defer timer.Stop()
	var tick <-chan time.Time
	if r.Waiting != nil && r.Updates > 0 {
		t := time.NewTicker(r.Updates)
		defer t.Stop()
		tick = t.C
	}
wait:
	for {
		select {
		case <-w.ready:
			break wait
		case <-ctx.Done():
			break wait
		case <-timer.C:
			break wait
		case now := <-tick:
			if ahead, start, ok := q.position(now, w); ok {
				r.Waiting(ahead, start)
			}
		}
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-w.ready:
		// Dispatched or refused, possibly while the caller was leaving: the
		// caller still owns the ticket and must release it.
		if w.refusal != nil {
			return nil, w.refusal
		}
		w.ticket.waited = time.Since(now)
		return w.ticket, nil
	default:
	}
	q.removeLocked(w)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if w.judged {
		// Admitted, then refused late: the worst miss.
		q.late.answered(true)
	}
	q.decided(r.Class, "refuse", string(ReasonQueueTimeout))
	return nil, &Refusal{
		Reason:     ReasonQueueTimeout,
		Message:    fmt.Sprintf("the request waited %s in the queue without reaching the engine; the server is overloaded", fmtDur(wait)),
		RetryAfter: q.drainTimeLocked(),
	}
}

// position is where w stands while it waits: the requests queued ahead
// of it and when it is predicted to be sent, from now; ok is false once it
// has left the queue.
func (q *Queue) position(now time.Time, w *waiter) (ahead int, start time.Duration, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-w.ready:
		return 0, 0, false
	default:
	}
	ahead, aheadSlots, ownSlots := q.classes[w.req.Class].position(w)
	if w.req.Class == Batch {
		ahead, aheadSlots = ahead+q.classes[Interactive].n, aheadSlots+q.classes[Interactive].slots
	}
	start = q.remainingStart()
	if short, own := q.shortLocked(now, w.req.Class, w.req.Flow, aheadSlots, ownSlots, w.req.Weight); short > 0 {
		start += q.waitLocked(now, w.req, short, own)
	}
	return ahead, start, true
}

// objective is the latency r is judged against: an interactive request's
// is the SLO, or its own deadline where that is shorter (or longer, with
// DeadlineBeyondSLO); a batch request's is its own deadline; 0: none.
func (q *Queue) objective(r Request) time.Duration {
	slo := q.cfg.SLO
	if r.Class == Batch {
		slo = 0
	}
	if r.Deadline > 0 && (slo == 0 || r.Deadline < slo || q.cfg.DeadlineBeyondSLO) {
		return r.Deadline
	}
	return slo
}

// goesNowLocked reports whether r, which finds ahead requests queued
// before it, is dispatched on arrival at now: it fits, and nothing is
// queued before it or its flow has room beyond the free slots (a light
// flow of a contended limit, shares.go).
func (q *Queue) goesNowLocked(now time.Time, r Request, ahead int) bool {
	if !q.fitsLocked(now, r.Weight, r.Class, r.Flow) {
		return false
	}
	return ahead == 0 || q.roomLocked(now, r.Class, r.Flow) > q.capForLocked(r.Class)-q.inflight
}

// placeLocked is where a new request r, due at due (zero: never) and
// costing cost tokens, goes in its class's queue (fair.go): in its flow,
// behind every waiter due no later, ahead of the rest (earliest deadline
// first; a FIFO among equals); among the flows, by its start tag. The
// placement counts the requests and slots that will be dispatched before
// it, a batch request counting every interactive one too.
func (q *Queue) placeLocked(r Request, due time.Time, cost float64, now time.Time) placement {
	p := q.classes[r.Class].place(r.Flow, r.FlowWeight, due, cost, now)
	if r.Class == Batch {
		p.ahead += q.classes[Interactive].n
		p.aheadSlots += q.classes[Interactive].slots
	}
	return p
}

// admitLocked applies the admission rules of the package doc to r, whose
// objective is obj, which costs cost tokens and which will be queued where
// p says (p.ahead requests of p.aheadSlots slots before it). It returns
// the refusal, or nil, the engine time the model expects of the request
// (its mean) and whether it was judged against its objective.
func (q *Queue) admitLocked(now time.Time, r Request, obj time.Duration, cost float64, p placement) (*Refusal, time.Duration, bool) {
	ahead, aheadSlots := p.ahead, p.aheadSlots
	if r.Weight > q.cfg.MaxInflight {
		return &Refusal{Reason: ReasonTooManySequences,
			Message: fmt.Sprintf("the request asks for %d sequences; the server runs at most %d at once", r.Weight, q.cfg.MaxInflight)}, 0, false
	}
	free := q.goesNowLocked(now, r, ahead)
	if q.draining && !free {
		// A request that finds a free slot is served even while draining:
		// it reached a connection accepted before the listeners closed.
		return &Refusal{Reason: ReasonDraining, Message: "the server is shutting down", RetryAfter: time.Second}, 0, false
	}
	if !free {
		if r.Class == Interactive {
			// Batch work makes room for interactive work, newest first.
			for q.queuedSlotsLocked()+r.Weight > q.cfg.MaxQueued && q.classes[Batch].n > 0 {
				q.displaceLocked(q.classes[Batch].newest(),
					"the batch request was displaced from a full queue by interactive work; retry later")
			}
		}
		// A flow under its share makes room by displacing the flow most
		// over it.
		for q.queuedSlotsLocked()+r.Weight > q.cfg.MaxQueued {
			v := q.classes[r.Class].victim(r.Flow, r.FlowWeight, cost)
			if v == nil {
				break
			}
			q.displaceLocked(v, "the request was displaced from a full queue by the request of an API key with less queued for its weight; retry later")
		}
		if q.queuedSlotsLocked()+r.Weight > q.cfg.MaxQueued {
			return &Refusal{Reason: ReasonQueueFull,
				Message:    fmt.Sprintf("the queue is full (%d sequences waiting); retry later", q.queuedSlotsLocked()),
				RetryAfter: q.drainTimeLocked()}, 0, false
		}
	}
	// The concurrency it will run with: one that waits for a slot runs
	// with the engine at the limit; one that waits for none (a free slot,
	// or room for it and for everyone ahead of it, waiting only for a
	// batch window) with what is in flight, its own and those queued ahead
	// of it added, or the recent average if that is more (a request finds
	// the engine as load left it, not as it will be).
	// A request that finds room waits only for the engine's start, if it
	// is starting: charging it a turn of the engine at the limit as well
	// refused the first requests of a cold start as "overloaded" once the
	// prior's turn at 16 in flight passed max_wait (a fleet host's 503,
	// retried by HAProxy on a second host, woke that host's engine).
	n := float64(q.capLocked())
	wait := q.remainingStart()
	if short, own := q.shortLocked(now, r.Class, r.Flow, aheadSlots, p.ownSlots, r.Weight); short > 0 && !free {
		wait += q.waitLocked(now, r, short, own)
	} else {
		n = min(n, max(float64(q.inflight+r.Weight+q.queuedSlotsLocked()), q.avgInflight))
		if !free {
			wait += q.cfg.BatchWindow
		}
	}
	q.model.Seen(r.Shape)
	pred := q.model.Predict(n, r.Shape, q.late.level)
	if !free {
		if maxWait := q.maxWaitLocked(r.Class); wait > maxWait+q.remainingStart() {
			return &Refusal{Reason: ReasonOverloaded,
				Message:    fmt.Sprintf("the predicted wait of %s exceeds the %s limit; the server is overloaded", fmtDur(wait), maxWait),
				RetryAfter: wait - maxWait}, 0, false
		}
	}
	// Judged against its objective: every request that has one (every
	// interactive one under an SLO, any with a deadline of its own), a
	// free slot or not, unless the engine is starting (the cold start's own
	// rules apply), or has nothing of ours (an idle engine is how the model
	// learns; refusing there would teach it nothing), or the request could
	// not meet the SLO even alone in the engine (a long answer: no
	// admission decision can make it meet it, so it is served without one,
	// as batch work is; its load still counts against everyone else's).
	// A client's own deadline is judged while the engine starts and while
	// it idles too, and one that the request could not meet alone is
	// refused: the client asked to be told.
	alone := q.model.Predict(1, r.Shape, q.late.level).Tail
	own := r.Deadline > 0 && obj == r.Deadline
	if own && alone+q.remainingStart() > obj {
		why := ""
		if q.remainingStart() > 0 {
			why = fmt.Sprintf(" after the engine's start or wake-up (%s more)", fmtDur(q.remainingStart()))
		}
		if alone > obj {
			return &Refusal{Reason: ReasonDeadlineTooShort,
				Message: fmt.Sprintf("the engine's predicted %s for this request alone exceeds its deadline of %s", fmtDur(alone), obj)}, 0, false
		}
		return &Refusal{Reason: ReasonDeadline,
			Message:    fmt.Sprintf("the engine's predicted %s for this request%s exceeds its deadline of %s", fmtDur(alone), why, obj),
			RetryAfter: q.remainingStart()}, 0, false
	}
	judged := obj > 0 && !q.notReady && alone <= obj
	idle := q.inflight == 0 && q.queuedLocked() == 0
	if judged && (own || !idle) && wait+pred.Tail > obj {
		reason, what := ReasonSLO, fmt.Sprintf("the %s latency objective", obj)
		if own {
			reason, what = ReasonDeadline, fmt.Sprintf("its deadline of %s", obj)
		}
		return &Refusal{Reason: reason,
			Message: fmt.Sprintf("the predicted wait of %s plus the engine's %s for this request exceeds %s; the server is overloaded",
				fmtDur(wait), fmtDur(pred.Tail), what),
			RetryAfter: wait + pred.Tail - obj}, 0, false
	}
	return nil, pred.Mean, judged
}

// waitLocked predicts how long a request that finds no free slot waits
// for one: the running requests free their slots when the model says they
// will end, from their progress (tokens streamed so far, or time run); each
// slot freed goes to the next request queued ahead, which then holds it
// for the model's time at the limit; the request gets the slot freed when
// enough have been. With own set, only the slots own's requests free count
// (shortLocked).
func (q *Queue) waitLocked(now time.Time, r Request, short int, own *flow) time.Duration {
	need := max(short, 1)
	n := float64(q.capLocked())
	var frees freeTimes
	for e := q.running.Front(); e != nil; e = e.Next() {
		t := e.Value.(*Ticket)
		if own != nil && t.flow != own {
			continue
		}
		rem := q.model.Remaining(float64(max(q.inflight, 1)), t.shape, now.Sub(t.dispatched), int(t.tokens.Load()))
		for range t.weight {
			frees = append(frees, rem)
		}
	}
	if len(frees) == 0 {
		// Nothing runs (the engine is held): one turn of the engine.
		return q.model.Predict(n, r.Shape, 0.5).Mean
	}
	slices.Sort(frees)
	if need <= len(frees) {
		return frees[need-1]
	}
	// Past the running ones, those queued ahead take the freed slots in
	// turn, each for the engine's time at the limit.
	hold := q.model.Predict(n, r.Shape, 0.5).Mean
	heap.Init(&frees)
	var t time.Duration
	for range need {
		t = heap.Pop(&frees).(time.Duration)
		heap.Push(&frees, t+hold)
	}
	return t
}

// freeTimes is a min-heap of the times at which slots are freed.
type freeTimes []time.Duration

func (f freeTimes) Len() int           { return len(f) }
func (f freeTimes) Less(i, j int) bool { return f[i] < f[j] }
func (f freeTimes) Swap(i, j int)      { f[i], f[j] = f[j], f[i] }
func (f *freeTimes) Push(x any)        { *f = append(*f, x.(time.Duration)) }
func (f *freeTimes) Pop() any {
	old := *f
	x := old[len(old)-1]
	*f = old[:len(old)-1]
	return x
}

// deadlineLocked is how long a request of class with objective obj (0:
// none), expected to take hold in the engine, may wait in the queue.
func (q *Queue) deadlineLocked(class Class, obj, hold time.Duration) time.Duration {
	if q.notReady && q.cfg.MaxColdStartWait > 0 {
		return q.cfg.MaxColdStartWait
	}
	wait := q.maxWaitLocked(class)
	if obj > 0 && !q.notReady {
		// Served later than this, it would miss the objective even with
		// the engine's mean time. Admission asked for the tail time to fit:
		// the difference is the slack that keeps a wait a little longer than
		// predicted from turning into a late refusal.
		wait = min(wait, max(obj-hold, obj/10))
	}
	return wait + q.remainingStart()
}

func (q *Queue) maxWaitLocked(class Class) time.Duration {
	if class == Batch && q.cfg.BatchMaxWait > 0 {
		return q.cfg.BatchMaxWait
	}
	return q.cfg.MaxWait
}

// drainTimeLocked estimates how long the current queue takes to drain, at
// the engine's rate at the limit as the model predicts it.
func (q *Queue) drainTimeLocked() time.Duration {
	d := q.remainingStart()
	if rate := q.model.Rate(q.capLocked()); rate > 0 {
		d += time.Duration(float64(q.queuedSlotsLocked()) / rate * float64(time.Second))
	}
	return d
}

// displaceLocked refuses w, queued, to make room in a full queue.
func (q *Queue) displaceLocked(w *waiter, message string) {
	q.classes[w.req.Class].remove(w)
	w.refusal = &Refusal{Reason: ReasonDisplaced, Message: message, RetryAfter: q.drainTimeLocked()}
	close(w.ready)
	q.decided(w.req.Class, "refuse", string(ReasonDisplaced))
}
