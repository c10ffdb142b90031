// Package queue owns admission control: the bounded FIFO in front of the
// engine, the in-flight cap, per-request deadlines and the micro-batch
// dispatch window.
//
// A request occupies one slot per sequence it asks the engine for. At most
// the in-flight limit of slots are in the engine at once (MaxInflight, or
// the adaptive limit set with SetLimit, never above MaxInflight); the rest
// wait in FIFOs of at most MaxQueued slots, one per priority class:
// interactive requests are dispatched before batch ones, and batch ones only
// while less than BatchShare of the limit is in use. Admission is decided when a
// request arrives:
//
//  1. If there is room in the engine, no engine pressure (SetHold) and no
//     batch window, dispatch at once, even while draining (the request came
//     on a connection accepted before shutdown began).
//  2. While draining, refuse (503).
//  3. If the FIFOs would overflow, refuse (429, reason queue_full); an
//     interactive request first displaces queued batch requests, newest
//     first.
//  4. Predict the wait: the slots that must complete before this request
//     gets one (batch requests wait behind every interactive one), over the
//     completion rate (the nominal rate until one has been measured while
//     requests were waiting for slots), plus the engine's remaining start
//     time. If it exceeds MaxWait (BatchMaxWait for batch), refuse (503,
//     overloaded).
//  5. With a latency objective (SLO), an interactive request whose
//     predicted wait plus the engine's tail time per request exceeds it is
//     refused too (503, reason slo): it would be served too late to count,
//     and its engine time is better spent on one that will. The tail
//     starts at the engine's recent 95th percentile and is corrected by a
//     margin learned from the requests admitted to wait: it settles where
//     MissTarget of them finish past the objective or time out in the
//     queue. A request predicted past the tail but not past the engine's
//     mean is admitted while the objective's miss budget (MissBudget)
//     lasts.
//  6. Otherwise queue it. A request still queued at its deadline gets 503
//     (queue_timeout); one whose client leaves is removed at once.
//
// Every refusal carries a Retry-After computed from the drain rate, and
// every decision is reported to the Observer with its reason.
package queue

import (
	"container/list"
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Config holds the queue's limits. It may be replaced at run time.
type Config struct {
	MaxInflight int
	MaxQueued   int
	MaxWait     time.Duration
	NominalRPS  float64
	BatchWindow time.Duration
	MaxBatch    int
	// MaxColdStartWait is a request's deadline when it arrives while the
	// engine is not ready (0: MaxWait plus the expected start time).
	MaxColdStartWait time.Duration
	// SLO is the latency objective of interactive requests (0: none).
	SLO time.Duration
	// BatchMaxWait is MaxWait for batch requests (0: MaxWait).
	BatchMaxWait time.Duration
	// BatchShare: batch requests are dispatched only while less than this
	// share of the in-flight limit is in use, keeping the rest for
	// interactive ones (0 or 1: no reserve).
	BatchShare float64
}

// Priority classes.
const (
	Interactive = 0
	Batch       = 1
)

// ClassName names a priority class.
func ClassName(c int) string {
	if c == Batch {
		return "batch"
	}
	return "interactive"
}

// Warmup reports how much longer the engine is expected to take to start.
// It returns 0 when the engine is ready.
type Warmup interface {
	RemainingStart() time.Duration
}

// Observer is told about dispatches and admission decisions, for metrics.
type Observer interface {
	Dispatched(requests int)
	// Decided reports an admission decision: "dispatch", "queue" or
	// "refuse", with its reason, for a request of class.
	Decided(class int, decision, reason string)
}

// Request describes what a caller asks to admit.
type Request struct {
	// Weight is the number of sequences (slots) the request occupies.
	Weight int
	// Key groups requests that may be coalesced; "" means never.
	Key string
	// Class is Interactive (the zero value) or Batch.
	Class int
}

// Refusal is returned when a request is not admitted or times out in the
// queue. It carries what the client is told.
type Refusal struct {
	Status     int
	Reason     string
	Message    string
	RetryAfter time.Duration
}

func (r *Refusal) Error() string { return r.Reason + ": " + r.Message }

// RetryAfterSeconds is the Retry-After header value, at least 1.
func (r *Refusal) RetryAfterSeconds() int {
	return max(1, int(math.Ceil(r.RetryAfter.Seconds())))
}

// Refusal reasons.
const (
	ReasonQueueFull     = "queue_full"
	ReasonOverloaded    = "overloaded"
	ReasonQueueTimeout  = "queue_timeout"
	ReasonDraining      = "draining"
	ReasonTooManyTokens = "too_many_sequences"
	ReasonSLO           = "slo"
	ReasonDisplaced     = "displaced"
)

// Queue is safe for concurrent use.
type Queue struct {
	warmup Warmup
	obs    Observer

	mu          sync.Mutex
	cfg         Config
	inflight    int
	waiters     [2]list.List // of *waiter, FIFO per class
	queuedSlots [2]int
	timer       *time.Timer
	draining    bool
	notReady    bool // the engine is starting or stopped: hold everything
	hold        bool // the engine is saturated: dispatch nothing more
	limit       int  // the adaptive in-flight limit (0: MaxInflight)
	rate        rateEstimator
	// engineTime is a moving average of the time a request holds its
	// slots (dispatch to release), the engine's latency as clients see it;
	// engineP95 the 95th percentile of the last len(recent) of those times.
	engineTime time.Duration
	engineP95  time.Duration
	// fullTime is a moving average of the time a request holds its
	// slots with the engine at the in-flight limit (nFull such requests
	// seen): what a request that waits for a slot will take, since it
	// runs with the engine full. Light load says little about it: the
	// engine's steps grow with its batch.
	fullTime time.Duration
	nFull    int
	// slotSeconds is the integral of the slots in use since New, from
	// which a ticket's average occupancy over its hold is read.
	slotSeconds float64
	lastSlots   time.Time
	// running holds the dispatched tickets, oldest first: the order in
	// which, holding alike, they free their slots.
	running list.List
	recent  [100]time.Duration
	nRecent int
	scratch [100]time.Duration
	// margin corrects the engine's tail time that admission adds to a
	// predicted wait, learned from what became of the requests it let
	// wait (see judgeLocked).
	margin time.Duration
	// budget is the objective's miss budget, in requests (see
	// spendLocked): what admission may spend on requests predicted past
	// the tail but not past the mean.
	budget float64
	window Window
}

// MissTarget is the share of the requests admitted to wait that admission
// aims to see finish past the objective (or refused late, at their queue
// deadline). It is below the 5% a 95th-percentile objective allows, so
// that the requests that never waited, and noise, still fit.
const MissTarget = 0.03

// MissBudget is the share of interactive requests that admission lets
// finish past the objective on purpose: a 95th-percentile objective
// allows 5%, and refusing a request that would only have been among them
// turns a slow answer that counts as met into an error. Each completed
// interactive request earns MissBudget of a request; each miss, and each
// request admitted although its predicted wait plus the engine's tail time
// is past the objective, spends one; a request so admitted that finishes in
// time gives its share back.
const MissBudget = 0.03

// minBudgetCap is the fewest such requests that may be outstanding at
// once; more at high rates (budgetCapLocked).
const minBudgetCap = 4

// Window is what happened since the last TakeWindow: the adaptive limit's
// input.
type Window struct {
	// EngineTimes are the slot-holding times of the requests released.
	EngineTimes []time.Duration
	// Blocked says requests waited for a slot (demand beyond the limit).
	Blocked bool
	// MaxInflight is the most slots in use at once.
	MaxInflight int
	// Completed is the number of slots released (sequences finished).
	Completed int
	// Start and End bound the window; AvgInflight is the time-average of
	// the slots in use over it.
	Start, End  time.Time
	AvgInflight float64
	// BlockedFor is how long requests waited for a slot during the window:
	// only while they do is the engine's throughput its capacity rather
	// than the demand.
	BlockedFor time.Duration
	// Refused counts the requests refused for want of capacity (queue
	// full, overloaded, the objective, a queue timeout): demand beyond
	// what the engine serves, which admission turned away rather than
	// queued.
	Refused int

	slotsAt    float64 // the queue's slotSeconds when the window started
	blocked    bool    // requests wait for a slot since lastB
	lastB      time.Time
	blockedSum time.Duration
}

// trackBlocked notes at now whether requests wait for a slot from now on.
func (w *Window) trackBlocked(now time.Time, blocked bool) {
	if w.blocked && !w.lastB.IsZero() {
		w.blockedSum += now.Sub(w.lastB)
	}
	w.lastB, w.blocked = now, blocked
}

type waiter struct {
	req     Request
	arrived time.Time
	// onBudget says admission spent the miss budget on it; judged that
	// its outcome teaches the margin (admitted to wait by the tail rule,
	// the engine ready).
	onBudget, judged bool
	ready            chan struct{}
	elem             *list.Element
	ticket           *Ticket
	refusal          *Refusal
}

// Ticket is an admitted request's hold on engine slots.
type Ticket struct {
	q          *Queue
	weight     int
	waited     time.Duration
	group      *Group
	released   bool
	dispatched time.Time
	arrived    time.Time
	slotsAt    float64       // the queue's slotSeconds at dispatch
	elem       *list.Element // in the queue's running list
	// interactive tickets under an objective earn and spend the miss
	// budget; onBudget ones were admitted on it; the outcome of judged
	// ones teaches the margin.
	interactive, onBudget, judged bool
}

// Group is the set of tickets with the same Key dispatched together.
type Group struct {
	Members []*Ticket
}

// Index returns t's position in g, or -1.
func (g *Group) Index(t *Ticket) int {
	for i, m := range g.Members {
		if m == t {
			return i
		}
	}
	return -1
}

// New returns a queue with the given limits. warmup and obs may be nil.
func New(cfg Config, warmup Warmup, obs Observer) *Queue {
	q := &Queue{cfg: cfg, warmup: warmup, obs: obs, budget: minBudgetCap}
	now := time.Now()
	q.window.Start, q.window.lastB, q.lastSlots = now, now, now
	q.rate.nominal = cfg.NominalRPS
	return q
}

// SetConfig replaces the limits; waiting requests are re-examined at once.
func (q *Queue) SetConfig(cfg Config) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.cfg = cfg
	q.rate.nominal = cfg.NominalRPS
	q.dispatchLocked(time.Now(), false)
}

// SetLimit sets the adaptive in-flight limit, capped by MaxInflight (0:
// MaxInflight). Lowering it takes effect as requests complete.
func (q *Queue) SetLimit(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.limit = n
	q.dispatchLocked(time.Now(), false)
}

// SetHold pauses (true) or resumes dispatching, for an engine that reports
// itself saturated. Requests keep queuing within their deadlines. A hold
// never stops the first request of an idle engine: pressure with nothing
// of ours in the engine is not ours to relieve.
func (q *Queue) SetHold(hold bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.hold = hold
	if !hold {
		q.dispatchLocked(time.Now(), false)
	}
}

// capLocked is the in-flight limit now.
func (q *Queue) capLocked() int {
	if q.limit > 0 && q.limit < q.cfg.MaxInflight {
		return q.limit
	}
	return q.cfg.MaxInflight
}

// capForLocked is the in-flight limit for class.
func (q *Queue) capForLocked(class int) int {
	c := q.capLocked()
	if class == Batch && q.cfg.BatchShare > 0 && q.cfg.BatchShare < 1 {
		c = max(1, int(float64(c)*q.cfg.BatchShare))
	}
	return c
}

// fitsLocked reports whether a request of weight w and class may enter
// the engine now.
func (q *Queue) fitsLocked(w, class int) bool {
	if q.notReady || (q.hold && q.inflight > 0) {
		return false
	}
	return q.inflight+w <= q.capForLocked(class) || (q.inflight == 0 && w <= q.cfg.MaxInflight)
}

func (q *Queue) decided(class int, decision, reason string) {
	if q.obs != nil {
		q.obs.Decided(class, decision, reason)
	}
}

// queuedLocked is the number of requests queued, all classes.
func (q *Queue) queuedLocked() int { return q.waiters[Interactive].Len() + q.waiters[Batch].Len() }

// queuedSlotsLocked is the number of slots queued, all classes.
func (q *Queue) queuedSlotsLocked() int { return q.queuedSlots[Interactive] + q.queuedSlots[Batch] }

// TakeWindow returns what happened since the last call and starts a new
// window.
func (q *Queue) TakeWindow() Window {
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	q.accountLocked(now)
	w := q.window
	w.End = now
	if d := w.End.Sub(w.Start).Seconds(); !w.Start.IsZero() && d > 0 {
		w.AvgInflight = (q.slotSeconds - w.slotsAt) / d
	}
	blocked := q.blockedLocked()
	w.trackBlocked(now, blocked)
	w.BlockedFor = w.blockedSum
	q.window = Window{MaxInflight: q.inflight, Blocked: blocked, Start: now, slotsAt: q.slotSeconds, blocked: blocked, lastB: now}
	return w
}

// EngineTime is the recent average time a request holds its slots.
func (q *Queue) EngineTime() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.engineTime
}

// SeedEngineTime restores an engine time learned in an earlier run.
func (q *Queue) SeedEngineTime(d time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.engineTime == 0 {
		q.engineTime = d
	}
}

// Acquire admits r, waiting in the FIFO if needed. It returns a *Refusal
// when the request is refused or times out in the queue, and ctx's error
// when the caller gives up first.
func (q *Queue) Acquire(ctx context.Context, r Request) (*Ticket, error) {
	now := time.Now()
	if r.Class != Batch {
		r.Class = Interactive
	}
	q.mu.Lock()
	ref, onBudget := q.admitLocked(r)
	if ref != nil {
		switch ref.Reason {
		case ReasonQueueFull, ReasonOverloaded, ReasonSLO:
			q.window.Refused++
		}
		q.mu.Unlock()
		q.decided(r.Class, "refuse", ref.Reason)
		return nil, ref
	}
	if q.cfg.BatchWindow == 0 && q.aheadLocked(r.Class) == 0 && q.fitsLocked(r.Weight, r.Class) {
		q.accountLocked(now)
		q.inflight += r.Weight
		q.window.MaxInflight = max(q.window.MaxInflight, q.inflight)
		q.noteBlockedLocked(now)
		t := q.runLocked(&Ticket{q: q, weight: r.Weight, dispatched: now, arrived: now, interactive: r.Class == Interactive && q.cfg.SLO > 0})
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
	case onBudget:
		why = "miss_budget"
	}
	wait := q.deadlineLocked(r.Class)
	w := &waiter{req: r, ready: make(chan struct{}), onBudget: onBudget, arrived: now}
	if r.Class == Interactive && q.cfg.SLO > 0 && !q.notReady && !onBudget {
		w.judged = true
	}
	w.elem = q.waiters[r.Class].PushBack(w)
	q.queuedSlots[r.Class] += r.Weight
	q.window.Blocked = q.window.Blocked || q.blockedLocked()
	q.dispatchLocked(now, false)
	q.mu.Unlock()
	q.decided(r.Class, "queue", why)

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-w.ready:
	case <-ctx.Done():
	case <-timer.C:
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
	q.noteBlockedLocked(time.Now())
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	q.window.Refused++
	if r.Class == Interactive && q.cfg.SLO > 0 {
		// Admitted, then refused late: the worst miss.
		q.settleLocked(w.onBudget, true)
		if w.judged {
			q.judgeLocked(true)
		}
	}
	q.decided(r.Class, "refuse", ReasonQueueTimeout)
	return nil, &Refusal{
		Status:     http.StatusServiceUnavailable,
		Reason:     ReasonQueueTimeout,
		Message:    fmt.Sprintf("the request waited %s in the queue without reaching the engine; the server is overloaded", wait.Round(time.Millisecond)),
		RetryAfter: q.drainTimeLocked(),
	}
}

// deadlineLocked is how long a request of class may wait in the queue.
func (q *Queue) deadlineLocked(class int) time.Duration {
	if q.notReady && q.cfg.MaxColdStartWait > 0 {
		return q.cfg.MaxColdStartWait
	}
	wait := q.maxWaitLocked(class)
	if class == Interactive && q.cfg.SLO > 0 && !q.notReady {
		// Served later than this, it would miss the objective even with
		// the engine's average time when full. Admission asked for the engine's
		// tail time (engineTimesLocked) to fit: the difference is the
		// slack that keeps a wait a little longer than predicted from
		// turning into a late refusal.
		wait = min(wait, max(q.cfg.SLO-q.holdLocked(), q.cfg.SLO/10))
	}
	return wait + q.remainingStart()
}

func (q *Queue) maxWaitLocked(class int) time.Duration {
	if class == Batch && q.cfg.BatchMaxWait > 0 {
		return q.cfg.BatchMaxWait
	}
	return q.cfg.MaxWait
}

// aheadLocked is the number of queued requests a new one of class waits
// behind.
func (q *Queue) aheadLocked(class int) int {
	if class == Batch {
		return q.queuedLocked()
	}
	return q.waiters[Interactive].Len()
}

// admitLocked applies the admission rules of the package doc.
func (q *Queue) admitLocked(r Request) (ref *Refusal, onBudget bool) {
	if r.Weight > q.cfg.MaxInflight {
		return &Refusal{Status: http.StatusBadRequest, Reason: ReasonTooManyTokens,
			Message: fmt.Sprintf("the request asks for %d sequences; the server runs at most %d at once", r.Weight, q.cfg.MaxInflight)}, false
	}
	if q.aheadLocked(r.Class) == 0 && q.fitsLocked(r.Weight, r.Class) {
		// Even while draining: the request reached a connection accepted
		// before the listeners closed, and a free slot costs it no wait.
		return nil, false
	}
	if q.draining {
		return &Refusal{Status: http.StatusServiceUnavailable, Reason: ReasonDraining,
			Message: "the server is shutting down", RetryAfter: time.Second}, false
	}
	if r.Class == Interactive {
		// Batch work makes room for interactive work, newest first.
		for q.queuedSlotsLocked()+r.Weight > q.cfg.MaxQueued && q.waiters[Batch].Len() > 0 {
			q.displaceNewestBatchLocked()
		}
	}
	if q.queuedSlotsLocked()+r.Weight > q.cfg.MaxQueued {
		return &Refusal{Status: http.StatusTooManyRequests, Reason: ReasonQueueFull,
			Message: fmt.Sprintf("the queue is full (%d sequences waiting); retry later", q.queuedSlotsLocked()), RetryAfter: q.drainTimeLocked()}, false
	}
	maxWait := q.maxWaitLocked(r.Class)
	wait := q.predictLocked(r.Weight, r.Class)
	if wait > maxWait+q.remainingStart() {
		return &Refusal{Status: http.StatusServiceUnavailable, Reason: ReasonOverloaded,
			Message: fmt.Sprintf("the predicted wait of %s exceeds the %s limit; the server is overloaded", wait.Round(time.Millisecond), maxWait), RetryAfter: wait - maxWait}, false
	}
	hold, tail := q.engineTimesLocked(q.shortLocked(r.Weight, r.Class) > 0 || q.hold)
	if r.Class == Interactive && q.cfg.SLO > 0 && !q.notReady && wait+tail > q.cfg.SLO {
		if wait+hold <= q.cfg.SLO && q.budget >= 1 {
			// Predicted past the tail, not past the mean: let it be one of
			// the misses the objective allows.
			q.budget--
			return nil, true
		}
		return &Refusal{Status: http.StatusServiceUnavailable, Reason: ReasonSLO,
			Message: fmt.Sprintf("the predicted wait of %s plus the engine's %s per request exceeds the %s latency objective; the server is overloaded",
				wait.Round(time.Millisecond), tail.Round(time.Millisecond), q.cfg.SLO),
			RetryAfter: wait + tail - q.cfg.SLO}, false
	}
	return nil, false
}

// fullShare is the average occupancy, as a share of the in-flight limit,
// at which a request's time counts as the engine's time when full.
const fullShare = 0.9

// accountLocked brings the integral of slots in use up to now, with
// q.inflight slots in use since the last call. A window's average and a
// ticket's occupancy are differences of it.
func (q *Queue) accountLocked(now time.Time) {
	q.slotSeconds += float64(q.inflight) * now.Sub(q.lastSlots).Seconds()
	q.lastSlots = now
}

// runLocked notes t, just dispatched, as running.
func (q *Queue) runLocked(t *Ticket) *Ticket {
	t.slotsAt = q.slotSeconds
	t.elem = q.running.PushBack(t)
	return t
}

// holdLocked is how long a request that waits for a slot can expect to
// hold it. It will run with the engine at the in-flight limit, so this
// is the engine's measured time when full (fullTime), or, before one has
// been measured, the limit over the completion rate (Little's law: a
// full engine completing rate requests a second holds each for
// limit/rate), which the nominal rate gives before anything has run.
// Never below the engine's recent mean. Without it, admission after a
// spell of light load predicted from the light load's short times and
// let requests wait that then took the full engine's longer ones.
func (q *Queue) holdLocked() time.Duration {
	hold := q.fullTime
	if q.nFull == 0 {
		hold = time.Duration(float64(q.capLocked()) / q.rate.rate() * float64(time.Second))
	}
	return max(hold, q.engineTime)
}

// engineTimesLocked is the engine time admission expects of a request:
// hold, its mean, and tail, what admission adds to its predicted wait. A
// request that waits for a slot (full) runs with the engine at the limit,
// so its hold is holdLocked; one that waits at most for a batch window
// (slots free for it and for every one ahead) runs with the engine as it
// is now, so its hold is the recent mean. The tail starts at the 95th
// percentile of the engine's recent times: the objective is the 95th
// percentile of end-to-end latency, so admission asks that the predicted
// wait plus this tail, not the mean, fit in it, whatever the shape of the
// engine's times (an engine that queues inside, as Ollama does past its
// slots, has a long tail). The margin then corrects it by what became of
// the requests admitted to wait (judgeLocked); it never goes below the
// hold.
func (q *Queue) engineTimesLocked(full bool) (hold, tail time.Duration) {
	hold = q.engineTime
	if full {
		hold = q.holdLocked()
	}
	return hold, max(max(q.engineP95, hold)+q.margin, hold)
}

// budgetCapLocked is the most of the miss budget kept: minBudgetCap, or
// twice what the requests of one objective's span earn at the current
// completion rate.
func (q *Queue) budgetCapLocked() float64 {
	return max(minBudgetCap, 2*MissBudget*q.rate.rate()*q.cfg.SLO.Seconds())
}

// settleLocked accounts for one interactive request's end: it earns
// MissBudget; a late one spends a request, unless admission spent it
// already (onBudget); an onBudget one in time gives its request back.
func (q *Queue) settleLocked(onBudget, late bool) {
	q.budget += MissBudget
	switch {
	case late && !onBudget:
		q.budget--
	case !late && onBudget:
		q.budget++
	}
	// No debt: after a spell of misses (a cold start, an overload) the
	// budget earns its way back from zero, at 0.03 a request.
	q.budget = min(max(q.budget, 0), q.budgetCapLocked())
}

// judgeLocked learns the margin from one request admitted to wait against
// the objective: miss says it finished past the objective or was refused
// at its queue deadline. The margin moves up SLO/40 on a miss and down
// just enough on a hit that it settles where MissTarget of such requests
// miss (a stochastic quantile tracker). The engine's 95th percentile
// alone is a guess: an engine with a long tail (Ollama's slots) makes it
// refuse requests that would have been served in time, and a wait
// predicted short makes it admit some that will not be. Down, it stops at
// the engine's mean time, where the queue deadline would refuse them
// late; up, at half the objective.
func (q *Queue) judgeLocked(miss bool) {
	step := q.cfg.SLO / 40
	if miss {
		q.margin += step
	} else {
		q.margin -= time.Duration(float64(step) * MissTarget / (1 - MissTarget))
	}
	hold := q.holdLocked()
	lo := hold - max(q.engineP95, hold)
	q.margin = min(max(q.margin, lo), q.cfg.SLO/2)
}

// EngineTail is the engine's tail time per request for a request that
// waits for a slot (see engineTimesLocked).
func (q *Queue) EngineTail() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, tail := q.engineTimesLocked(true)
	return tail
}

// displaceNewestBatchLocked refuses the newest queued batch request.
func (q *Queue) displaceNewestBatchLocked() {
	e := q.waiters[Batch].Back()
	w := q.waiters[Batch].Remove(e).(*waiter)
	q.queuedSlots[Batch] -= w.req.Weight
	w.refusal = &Refusal{Status: http.StatusServiceUnavailable, Reason: ReasonDisplaced,
		Message: "the batch request was displaced from a full queue by interactive work; retry later", RetryAfter: q.drainTimeLocked()}
	close(w.ready)
	q.decided(Batch, "refuse", ReasonDisplaced)
}

// predictLocked estimates the queue wait of a new request of weight w and
// class.
func (q *Queue) predictLocked(w, class int) time.Duration {
	ahead := q.shortLocked(w, class)
	d := q.remainingStart()
	if ahead > 0 {
		d += max(time.Duration(float64(ahead)/q.rate.rate()*float64(time.Second)), q.freedLocked(ahead))
	}
	return d
}

// shortLocked is how many slots a request of weight w and class lacks
// once the requests queued ahead of it are dispatched (0 or less: it waits
// for none to be freed).
func (q *Queue) shortLocked(w, class int) int {
	queued := q.queuedSlots[Interactive]
	if class == Batch {
		queued += q.queuedSlots[Batch]
	}
	return queued + w - (q.capForLocked(class) - q.inflight)
}

// freedLocked estimates when n more slots will have been freed: when the
// running request that frees the n-th of them, oldest first, will have
// held its slots for holdLocked, and past the running ones at the
// completion rate. The completion rate alone assumes completions spread
// evenly; after a step in load the running requests started together and
// will finish together, and nothing is freed before the oldest is done.
func (q *Queue) freedLocked(n int) time.Duration {
	now, hold := time.Now(), q.holdLocked()
	var last time.Time
	for e := q.running.Front(); e != nil; e = e.Next() {
		t := e.Value.(*Ticket)
		last = t.dispatched
		if n -= t.weight; n <= 0 {
			return max(t.dispatched.Add(hold).Sub(now), 0)
		}
	}
	if last.IsZero() {
		return 0
	}
	return max(last.Add(hold).Sub(now), 0) + time.Duration(float64(n)/q.rate.rate()*float64(time.Second))
}

// drainTimeLocked estimates how long the current queue takes to drain.
func (q *Queue) drainTimeLocked() time.Duration {
	return q.remainingStart() + time.Duration(float64(q.queuedSlotsLocked())/q.rate.rate()*float64(time.Second))
}

func (q *Queue) remainingStart() time.Duration {
	if q.warmup == nil {
		return 0
	}
	return q.warmup.RemainingStart()
}

func (q *Queue) removeLocked(w *waiter) {
	q.waiters[w.req.Class].Remove(w.elem)
	q.queuedSlots[w.req.Class] -= w.req.Weight
	// The head may have changed: a smaller request behind may now fit.
	q.dispatchLocked(time.Now(), false)
}

// noteBlockedLocked brings the completion rate's and the window's account
// of time blocked on slots up to now.
func (q *Queue) noteBlockedLocked(now time.Time) {
	b := q.blockedLocked()
	q.rate.update(now, b)
	q.window.trackBlocked(now, b)
}

// blockedLocked reports whether requests wait for slots (as opposed to
// waiting for a batch window): only then do completions measure capacity.
func (q *Queue) blockedLocked() bool {
	w := q.frontLocked()
	return w != nil && !q.notReady && q.inflight+w.req.Weight > q.capForLocked(w.req.Class)
}

// frontLocked is the next request to dispatch: interactive first.
func (q *Queue) frontLocked() *waiter {
	for _, c := range []int{Interactive, Batch} {
		if e := q.waiters[c].Front(); e != nil {
			return e.Value.(*waiter)
		}
	}
	return nil
}

// dispatchLocked releases waiters to the engine. Without a batch window it
// releases the FIFO head while it fits. With one, it releases up to
// a batch (MaxBatch, at most the in-flight limit) when the window closes
// (timerFired) or as soon as a batch waits, and otherwise makes sure a window is running.
func (q *Queue) dispatchLocked(now time.Time, timerFired bool) {
	defer q.noteBlockedLocked(now)
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
		w := q.frontLocked()
		if w == nil || !q.fitsLocked(w.req.Weight, w.req.Class) {
			break
		}
		q.waiters[w.req.Class].Remove(w.elem)
		q.queuedSlots[w.req.Class] -= w.req.Weight
		q.accountLocked(now)
		q.inflight += w.req.Weight
		w.ticket = q.runLocked(&Ticket{q: q, weight: w.req.Weight, dispatched: now, arrived: w.arrived,
			interactive: w.req.Class == Interactive && q.cfg.SLO > 0, onBudget: w.onBudget, judged: w.judged})
		released = append(released, w)
	}
	q.window.MaxInflight = max(q.window.MaxInflight, q.inflight)
	q.window.Blocked = q.window.Blocked || q.blockedLocked()
	if len(released) == 0 {
		if q.cfg.BatchWindow > 0 && q.queuedLocked() > 0 && !q.blockedLocked() {
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
	if q.cfg.BatchWindow > 0 && q.queuedLocked() > 0 && !q.blockedLocked() {
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

// SetEngineReady opens (true) or closes the gate to the engine. While it
// is closed requests queue, each within its deadline, and none is
// dispatched: a cold start holds requests instead of refusing them.
func (q *Queue) SetEngineReady(ready bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.notReady = !ready
	if ready {
		q.dispatchLocked(time.Now(), true)
	}
}

// FailWaiting answers every queued request with 503 and the reason, for an
// engine that failed to start or died.
func (q *Queue) FailWaiting(reason, message string, retryAfter time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for w := q.frontLocked(); w != nil; w = q.frontLocked() {
		q.waiters[w.req.Class].Remove(w.elem)
		q.queuedSlots[w.req.Class] -= w.req.Weight
		w.refusal = &Refusal{Status: http.StatusServiceUnavailable, Reason: reason, Message: message, RetryAfter: retryAfter}
		close(w.ready)
	}
}

// Busy is the number of requests queued plus sequences in flight.
func (q *Queue) Busy() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queuedLocked() + q.inflight
}

// Inflight is the number of sequences in the engine.
func (q *Queue) Inflight() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.inflight
}

// Drain refuses every queued request, and every new one that would have
// to queue (503), for shutdown; a new request that finds a free slot is
// still dispatched.
func (q *Queue) Drain() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.draining = true
	for w := q.frontLocked(); w != nil; w = q.frontLocked() {
		q.waiters[w.req.Class].Remove(w.elem)
		q.queuedSlots[w.req.Class] -= w.req.Weight
		w.refusal = &Refusal{Status: http.StatusServiceUnavailable, Reason: ReasonDraining,
			Message: "the server is shutting down", RetryAfter: time.Second}
		close(w.ready)
	}
}

// LearnedRate returns the learned completion rate, or 0 if none yet.
func (q *Queue) LearnedRate() float64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.rate.learned() {
		return 0
	}
	return q.rate.rate()
}

// SeedRate restores a completion rate learned in an earlier run.
func (q *Queue) SeedRate(rate float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.rate.seed(rate)
}

// Stats is a snapshot of the queue.
type Stats struct {
	Queued      int     `json:"queued"`
	QueuedBatch int     `json:"queued_batch"`
	QueuedSlots int     `json:"queued_sequences"`
	Inflight    int     `json:"inflight_sequences"`
	MaxInflight int     `json:"max_inflight"`
	Limit       int     `json:"inflight_limit"`
	Hold        bool    `json:"engine_saturated"`
	MaxQueued   int     `json:"max_queued"`
	RateRPS     float64 `json:"completion_rate"`
	RateLearned bool    `json:"completion_rate_learned"`
	// EngineSeconds is the recent average time a request holds its slots.
	EngineSeconds float64 `json:"engine_seconds_per_request"`
	// AdmissionTailSeconds is the engine time admission adds to a
	// predicted wait before comparing it with the objective: the engine's
	// recent 95th percentile corrected by the learned margin.
	AdmissionTailSeconds float64 `json:"admission_tail_seconds"`
	// MissBudget is the objective's miss budget left, in requests.
	MissBudget float64 `json:"miss_budget"`
}

// Stats returns a snapshot of the queue's state.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, tail := q.engineTimesLocked(true)
	return Stats{
		Queued:        q.queuedLocked(),
		QueuedBatch:   q.waiters[Batch].Len(),
		QueuedSlots:   q.queuedSlotsLocked(),
		Inflight:      q.inflight,
		MaxInflight:   q.cfg.MaxInflight,
		Limit:         q.capLocked(),
		Hold:          q.hold,
		MaxQueued:     q.cfg.MaxQueued,
		RateRPS:       q.rate.rate(),
		RateLearned:   q.rate.learned(),
		EngineSeconds: q.engineTime.Seconds(),

		AdmissionTailSeconds: tail.Seconds(),
		MissBudget:           q.budget,
	}
}

// Waited is how long the request spent in the queue.
func (t *Ticket) Waited() time.Duration { return t.waited }

// Weight is the number of slots the ticket holds.
func (t *Ticket) Weight() int { return t.weight }

// Group returns the coalescing group the ticket was dispatched in, or nil.
func (t *Ticket) Group() *Group { return t.group }

// Release returns the ticket's slots; it is safe to call more than once.
func (t *Ticket) Release() {
	q := t.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if t.released {
		return
	}
	t.released = true
	now := time.Now()
	if t.elem != nil {
		q.running.Remove(t.elem)
		t.elem = nil
	}
	if !t.dispatched.IsZero() {
		held := now.Sub(t.dispatched)
		q.accountLocked(now)
		if held > 0 && (q.slotSeconds-t.slotsAt)/held.Seconds() >= fullShare*float64(q.capLocked()) {
			// The engine was at the limit (on average) while this one ran.
			if q.nFull == 0 {
				q.fullTime = held
			} else {
				q.fullTime += (held - q.fullTime) / 20
			}
			q.nFull++
		}
		if len(q.window.EngineTimes) < 8192 {
			q.window.EngineTimes = append(q.window.EngineTimes, held)
		}
		if q.engineTime == 0 {
			q.engineTime = held
		} else {
			q.engineTime += (held - q.engineTime) / 20
		}
		q.recent[q.nRecent%len(q.recent)] = held
		q.nRecent++
		last := q.recent[:min(q.nRecent, len(q.recent))]
		sorted := q.scratch[:len(last)]
		copy(sorted, last)
		slices.Sort(sorted)
		q.engineP95 = sorted[len(sorted)*95/100]
	}
	if t.interactive {
		late := now.Sub(t.arrived) > q.cfg.SLO
		q.settleLocked(t.onBudget, late)
		if t.judged {
			q.judgeLocked(late)
		}
	}
	q.rate.complete(now, t.weight, q.blockedLocked())
	q.window.trackBlocked(now, q.blockedLocked())
	q.window.Completed += t.weight
	q.accountLocked(now)
	q.inflight -= t.weight
	q.dispatchLocked(now, false)
}
