// Package queue owns admission control: the bounded FIFO in front of the
// engine, the in-flight cap, per-request deadlines and the micro-batch
// dispatch window.
//
// A request occupies one slot per sequence it asks the engine for. At most
// MaxInflight slots are in the engine at once; the rest wait in a FIFO of at
// most MaxQueued slots. Admission is decided when a request arrives:
//
//  1. While draining, refuse (503).
//  2. If there is room in the engine and no batch window, dispatch at once.
//  3. If the FIFO would overflow, refuse (429, reason queue_full).
//  4. Predict the wait: the slots that must complete before this request
//     gets one, over the completion rate (the nominal rate until one has been
//     measured while requests were waiting for slots), plus the engine's
//     remaining start time. If it exceeds MaxWait, refuse (503, overloaded).
//  5. Otherwise queue it. A request still queued at its deadline gets 503
//     (queue_timeout); one whose client leaves is removed at once.
//
// Every refusal carries a Retry-After computed from the drain rate.
package queue

import (
	"container/list"
	"context"
	"fmt"
	"math"
	"net/http"
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
}

// Warmup reports how much longer the engine is expected to take to start.
// It returns 0 when the engine is ready.
type Warmup interface {
	RemainingStart() time.Duration
}

// Observer is told about dispatches, for metrics.
type Observer interface {
	Dispatched(requests int)
}

// Request describes what a caller asks to admit.
type Request struct {
	// Weight is the number of sequences (slots) the request occupies.
	Weight int
	// Key groups requests that may be coalesced; "" means never.
	Key string
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
)

// Queue is safe for concurrent use.
type Queue struct {
	warmup Warmup
	obs    Observer

	mu          sync.Mutex
	cfg         Config
	inflight    int
	waiters     list.List // of *waiter, FIFO
	queuedSlots int
	timer       *time.Timer
	draining    bool
	notReady    bool // the engine is starting or stopped: hold everything
	rate        rateEstimator
}

type waiter struct {
	req     Request
	ready   chan struct{}
	elem    *list.Element
	ticket  *Ticket
	refusal *Refusal
}

// Ticket is an admitted request's hold on engine slots.
type Ticket struct {
	q        *Queue
	weight   int
	waited   time.Duration
	group    *Group
	released bool
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
	q := &Queue{cfg: cfg, warmup: warmup, obs: obs}
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

// Acquire admits r, waiting in the FIFO if needed. It returns a *Refusal
// when the request is refused or times out in the queue, and ctx's error
// when the caller gives up first.
func (q *Queue) Acquire(ctx context.Context, r Request) (*Ticket, error) {
	now := time.Now()
	q.mu.Lock()
	if ref := q.admitLocked(r); ref != nil {
		q.mu.Unlock()
		return nil, ref
	}
	if !q.notReady && q.cfg.BatchWindow == 0 && q.waiters.Len() == 0 && q.inflight+r.Weight <= q.cfg.MaxInflight {
		q.inflight += r.Weight
		q.rate.update(now, q.blockedLocked())
		q.mu.Unlock()
		if q.obs != nil {
			q.obs.Dispatched(1)
		}
		return &Ticket{q: q, weight: r.Weight}, nil
	}
	wait := q.cfg.MaxWait + q.remainingStart()
	if q.notReady && q.cfg.MaxColdStartWait > 0 {
		wait = q.cfg.MaxColdStartWait
	}
	w := &waiter{req: r, ready: make(chan struct{})}
	w.elem = q.waiters.PushBack(w)
	q.queuedSlots += r.Weight
	q.dispatchLocked(now, false)
	q.mu.Unlock()

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
	q.rate.update(time.Now(), q.blockedLocked())
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, &Refusal{
		Status:     http.StatusServiceUnavailable,
		Reason:     ReasonQueueTimeout,
		Message:    fmt.Sprintf("the request waited %s in the queue without reaching the engine; the server is overloaded", wait.Round(time.Millisecond)),
		RetryAfter: q.drainTimeLocked(),
	}
}

// admitLocked applies the admission rules of the package doc.
func (q *Queue) admitLocked(r Request) *Refusal {
	if q.draining {
		return &Refusal{Status: http.StatusServiceUnavailable, Reason: ReasonDraining,
			Message: "the server is shutting down", RetryAfter: time.Second}
	}
	if r.Weight > q.cfg.MaxInflight {
		return &Refusal{Status: http.StatusBadRequest, Reason: ReasonTooManyTokens,
			Message: fmt.Sprintf("the request asks for %d sequences; the server runs at most %d at once", r.Weight, q.cfg.MaxInflight)}
	}
	free := q.cfg.MaxInflight - q.inflight
	if !q.notReady && q.waiters.Len() == 0 && r.Weight <= free {
		return nil
	}
	if q.queuedSlots+r.Weight > q.cfg.MaxQueued {
		return &Refusal{Status: http.StatusTooManyRequests, Reason: ReasonQueueFull,
			Message: fmt.Sprintf("the queue is full (%d sequences waiting); retry later", q.queuedSlots), RetryAfter: q.drainTimeLocked()}
	}
	if wait := q.predictLocked(r.Weight); wait > q.cfg.MaxWait+q.remainingStart() {
		return &Refusal{Status: http.StatusServiceUnavailable, Reason: ReasonOverloaded,
			Message: fmt.Sprintf("the predicted wait of %s exceeds the %s limit; the server is overloaded", wait.Round(time.Millisecond), q.cfg.MaxWait), RetryAfter: wait - q.cfg.MaxWait}
	}
	return nil
}

// predictLocked estimates the queue wait of a new request of weight w.
func (q *Queue) predictLocked(w int) time.Duration {
	ahead := q.queuedSlots + w - (q.cfg.MaxInflight - q.inflight)
	d := q.remainingStart()
	if ahead > 0 {
		d += time.Duration(float64(ahead) / q.rate.rate() * float64(time.Second))
	}
	return d
}

// drainTimeLocked estimates how long the current queue takes to drain.
func (q *Queue) drainTimeLocked() time.Duration {
	return q.remainingStart() + time.Duration(float64(q.queuedSlots)/q.rate.rate()*float64(time.Second))
}

func (q *Queue) remainingStart() time.Duration {
	if q.warmup == nil {
		return 0
	}
	return q.warmup.RemainingStart()
}

func (q *Queue) removeLocked(w *waiter) {
	q.waiters.Remove(w.elem)
	q.queuedSlots -= w.req.Weight
	// The head may have changed: a smaller request behind may now fit.
	q.dispatchLocked(time.Now(), false)
}

// blockedLocked reports whether requests wait for slots (as opposed to
// waiting for a batch window): only then do completions measure capacity.
func (q *Queue) blockedLocked() bool {
	front := q.waiters.Front()
	return front != nil && q.inflight+front.Value.(*waiter).req.Weight > q.cfg.MaxInflight
}

// dispatchLocked releases waiters to the engine. Without a batch window it
// releases the FIFO head while it fits. With one, it releases up to
// MaxBatch requests when the window closes (timerFired) or as soon as
// MaxBatch requests wait, and otherwise makes sure a window is running.
func (q *Queue) dispatchLocked(now time.Time, timerFired bool) {
	defer func() { q.rate.update(now, q.blockedLocked()) }()
	if q.waiters.Len() == 0 || q.notReady {
		return
	}
	limit := q.waiters.Len()
	if q.cfg.BatchWindow > 0 {
		if !timerFired && q.waiters.Len() < q.cfg.MaxBatch {
			q.armLocked()
			return
		}
		limit = q.cfg.MaxBatch
	}
	var released []*waiter
	for len(released) < limit {
		front := q.waiters.Front()
		if front == nil {
			break
		}
		w := front.Value.(*waiter)
		if q.inflight+w.req.Weight > q.cfg.MaxInflight {
			break
		}
		q.waiters.Remove(front)
		q.queuedSlots -= w.req.Weight
		q.inflight += w.req.Weight
		w.ticket = &Ticket{q: q, weight: w.req.Weight}
		released = append(released, w)
	}
	if len(released) == 0 {
		if q.cfg.BatchWindow > 0 && q.waiters.Len() > 0 && !q.blockedLocked() {
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
	if q.cfg.BatchWindow > 0 && q.waiters.Len() > 0 && !q.blockedLocked() {
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
	for e := q.waiters.Front(); e != nil; e = q.waiters.Front() {
		w := q.waiters.Remove(e).(*waiter)
		q.queuedSlots -= w.req.Weight
		w.refusal = &Refusal{Status: http.StatusServiceUnavailable, Reason: reason, Message: message, RetryAfter: retryAfter}
		close(w.ready)
	}
}

// Busy is the number of requests queued plus sequences in flight.
func (q *Queue) Busy() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waiters.Len() + q.inflight
}

// Inflight is the number of sequences in the engine.
func (q *Queue) Inflight() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.inflight
}

// Drain refuses every queued request and all new ones (503), for shutdown.
func (q *Queue) Drain() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.draining = true
	for e := q.waiters.Front(); e != nil; e = q.waiters.Front() {
		w := q.waiters.Remove(e).(*waiter)
		q.queuedSlots -= w.req.Weight
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
	QueuedSlots int     `json:"queued_sequences"`
	Inflight    int     `json:"inflight_sequences"`
	MaxInflight int     `json:"max_inflight"`
	MaxQueued   int     `json:"max_queued"`
	RateRPS     float64 `json:"completion_rate"`
	RateLearned bool    `json:"completion_rate_learned"`
}

// Stats returns a snapshot of the queue's state.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return Stats{
		Queued:      q.waiters.Len(),
		QueuedSlots: q.queuedSlots,
		Inflight:    q.inflight,
		MaxInflight: q.cfg.MaxInflight,
		MaxQueued:   q.cfg.MaxQueued,
		RateRPS:     q.rate.rate(),
		RateLearned: q.rate.learned(),
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
	q.rate.complete(now, t.weight, q.blockedLocked())
	q.inflight -= t.weight
	q.dispatchLocked(now, false)
}
