// Package queue owns admission control: the bounded FIFOs in front of the
// engine, the in-flight limit, per-request deadlines and the micro-batch
// dispatch window. It judges every request with a model of the engine
// (daemon/enginemodel), which it teaches with each request that ends.
//
// A request occupies one slot per sequence it asks the engine for. At most
// the in-flight limit of slots are in the engine at once (MaxInflight, or
// the limit set with SetLimit, never above MaxInflight); the rest wait in
// queues of at most MaxQueued slots, one per priority class. The order of
// dispatch:
//
//  1. Class: interactive requests are dispatched before batch ones, and
//     batch ones only while less than BatchShare of the limit is in use.
//  2. Flow: within a class, each flow (Request.Flow, the API key) gets its
//     weight's share of the engine's work, counted in tokens: the queue in
//     start-time fair order (fair.go), and when the limit is contended,
//     each flow's share of its slots (shares.go: a flow under its share
//     goes in on arrival, one over it only into the slots its share
//     leaves it); without keys there is one flow.
//  3. Deadline: within a flow the earliest deadline goes first: a
//     request's deadline is its arrival plus its objective (the SLO, or the
//     client's own Request.Deadline; see objective), so without client
//     deadlines each flow is a FIFO, and a request with none of either goes
//     behind those with one.
//
// The decision is made when a request arrives (admission.go):
//
//  1. A request asking for more sequences than MaxInflight is invalid.
//  2. While draining, a request that would have to queue is refused.
//  3. If the queues would overflow, refuse (queue_full); an interactive
//     request first displaces queued batch requests, and any request
//     displaces those of another flow of its class that has more queued
//     for its weight than its own flow would have with it (each time the
//     last request of the flow with the most queued for its weight).
//  4. Predict its wait (0 if a slot is free for it) from the running
//     requests' progress, and its time in the engine from the model at
//     the concurrency it will run with. A wait past MaxWait is refused
//     (overloaded); with a latency objective, a request whose wait plus
//     the model's tail time is past it is refused (slo, or deadline for
//     the client's own), unless the engine has nothing of ours to learn
//     from (idle) or is starting. A client's deadline that the model's
//     tail time alone passes is refused in any case (deadline_too_short).
//  5. Otherwise dispatch it, or queue it. A request still queued at its
//     deadline is refused (queue_timeout); one whose client leaves is
//     removed at once.
//
// Every refusal carries the time after which the request would be
// admitted (Retry-After), and every decision is reported to the Observer
// with its reason. The queue decides nothing about HTTP: the gateway maps
// each Reason to a status.
package queue

import (
	"container/list"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// Config holds the queue's limits. It may be replaced at run time.
type Config struct {
	MaxInflight int
	MaxQueued   int
	MaxWait     time.Duration
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
	// DeadlineBeyondSLO lets an interactive request's own deadline
	// (Request.Deadline) be longer than SLO; otherwise SLO caps it.
	DeadlineBeyondSLO bool
}

// Class is a request's priority class.
type Class int

// Priority classes.
const (
	Interactive Class = 0
	Batch       Class = 1
)

// String names a priority class.
func (c Class) String() string {
	if c == Batch {
		return "batch"
	}
	return "interactive"
}

// ClassName names a priority class.
func ClassName(c Class) string { return c.String() }

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
	Decided(class Class, decision, reason string)
	// Served reports the tokens of engine work a request of flow took, as
	// fair sharing counted them, when it ends.
	Served(class Class, flow string, tokens float64)
}

// Request describes what a caller asks to admit.
type Request struct {
	// Weight is the number of sequences (slots) the request occupies.
	Weight int
	// Key groups requests that may be coalesced; "" means never.
	Key string
	// Class is Interactive (the zero value) or Batch.
	Class Class
	// Shape is the request's size as the engine model reads it.
	Shape enginemodel.Shape
	// Stream: its answer is streamed, so its tokens show as they come
	// (Ticket.Progress).
	Stream bool
	// Deadline is the client's own objective for this request, arrival
	// to the end of its answer (0: none): admission judges it against
	// that, and the queue serves each class earliest deadline first.
	Deadline time.Duration
	// Flow is the API key's name ("": no keys): within a class each flow
	// gets FlowWeight's share of the engine's work, counted in tokens
	// (fair.go). FlowWeight 0 means 1.
	Flow       string
	FlowWeight float64
	// Waiting, when set with Updates above 0, is told every Updates while
	// the request waits in the queue how many requests are queued ahead of
	// it and when it is predicted to be sent, from then. It is called from
	// the goroutine in Acquire, without the queue's lock.
	Waiting func(ahead int, start time.Duration)
	Updates time.Duration
}

// Queue is safe for concurrent use.
type Queue struct {
	warmup Warmup
	obs    Observer
	model  *enginemodel.Model

	mu       sync.Mutex
	cfg      Config
	inflight int
	classes  [2]fairQueue // the waiters of each class, by flow
	timer    *time.Timer
	draining bool
	notReady bool // the engine is starting or stopped: hold everything
	hold     bool // the engine is saturated: dispatch nothing more
	limit    int  // the in-flight limit set with SetLimit (0: MaxInflight)
	// engineTime is a moving average of the time a request holds its
	// slots (dispatch to release), the engine's latency as clients see it.
	engineTime time.Duration
	// slotSeconds is the integral of the slots in use since New, from
	// which a ticket's average concurrency over its hold is read;
	// avgInflight is its recent time-average (avgTau).
	slotSeconds float64
	avgInflight float64
	lastSlots   time.Time
	// running holds the dispatched tickets, oldest first.
	running list.List
	// late chooses the level admission predicts at.
	late lateness
	// progress is where SampleProgress last looked; prefilled counts the
	// prompt tokens of requests whose first token came since.
	progress  progressMark
	prefilled atomic.Int64
	// streaming counts the slots of running tickets whose answer has begun
	// (Ticket.Progress): what the engine runs at once, as opposed to what
	// it holds, which counts those waiting inside it.
	streaming atomic.Int64
}

// avgTau is the time constant of the recent average in flight.
const avgTau = 5 * time.Second

type waiter struct {
	req     Request
	arrived time.Time
	// judged: admitted by the model against its objective (not held
	// through a cold start, nor exempt).
	judged bool
	// objective is what it is judged against (0: none); due is arrival
	// plus that (zero: none), by which its flow's queue is ordered.
	objective time.Duration
	due       time.Time
	// cost is its tokens as fair sharing counts them at dispatch: prompt
	// tokens (prompt, estimated) and the output cap; flow is the flow it is
	// queued in, elem its place there.
	cost, prompt float64
	flow         *flow
	ready        chan struct{}
	elem         *list.Element
	ticket       *Ticket
	refusal      *Refusal
}

// New returns a queue with the given limits, judging requests with a
// model seeded with enginemodel.DefaultSeed (SetModel replaces it).
// warmup and obs may be nil.
func New(cfg Config, warmup Warmup, obs Observer) *Queue {
	q := &Queue{cfg: cfg, warmup: warmup, obs: obs, model: enginemodel.New(enginemodel.DefaultSeed), late: newLateness()}
	q.lastSlots = time.Now()
	return q
}

// Model is the engine model the queue judges with and teaches.
func (q *Queue) Model() *enginemodel.Model {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.model
}

// SetModel replaces the engine model.
func (q *Queue) SetModel(m *enginemodel.Model) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.model = m
}

// SetConfig replaces the limits; waiting requests are re-examined at once.
func (q *Queue) SetConfig(cfg Config) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.cfg = cfg
	q.dispatchLocked(time.Now(), false)
}

// SetLimit sets the in-flight limit, capped by MaxInflight (0:
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

func (q *Queue) decided(class Class, decision, reason string) {
	if q.obs != nil {
		q.obs.Decided(class, decision, reason)
	}
}

// queuedLocked is the number of requests queued, all classes.
func (q *Queue) queuedLocked() int { return q.classes[Interactive].n + q.classes[Batch].n }

// queuedSlotsLocked is the number of slots queued, all classes.
func (q *Queue) queuedSlotsLocked() int { return q.classes[Interactive].slots + q.classes[Batch].slots }

// Level is the quantile of the engine model's spread at which admission
// predicts (see lateness).
func (q *Queue) Level() float64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.late.level
}

// RestoreLevel sets a level learned in an earlier run.
func (q *Queue) RestoreLevel(level float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.late.restore(level)
}

// EngineTime is the recent average time a request holds its slots.
func (q *Queue) EngineTime() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.engineTime
}

// accountLocked brings the integral of slots in use, and its recent
// average, up to now, with q.inflight slots in use since the last call.
func (q *Queue) accountLocked(now time.Time) {
	dt := now.Sub(q.lastSlots).Seconds()
	if dt <= 0 {
		return
	}
	q.slotSeconds += float64(q.inflight) * dt
	q.avgInflight += (float64(q.inflight) - q.avgInflight) * (1 - math.Exp(-dt/avgTau.Seconds()))
	q.lastSlots = now
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

// FailWaiting refuses every queued request with the reason, for an engine
// that failed to start or died.
func (q *Queue) FailWaiting(reason Reason, message string, retryAfter time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for w := q.frontLocked(); w != nil; w = q.frontLocked() {
		q.classes[w.req.Class].remove(w)
		w.refusal = &Refusal{Reason: reason, Message: message, RetryAfter: retryAfter}
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
// to queue, for shutdown; a new request that finds a free slot is still
// dispatched.
func (q *Queue) Drain() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.draining = true
	for w := q.frontLocked(); w != nil; w = q.frontLocked() {
		q.classes[w.req.Class].remove(w)
		w.refusal = &Refusal{Reason: ReasonDraining, Message: "the server is shutting down", RetryAfter: time.Second}
		close(w.ready)
	}
}

// Stats is a snapshot of the queue.
type Stats struct {
	Queued      int  `json:"queued"`
	QueuedBatch int  `json:"queued_batch"`
	QueuedSlots int  `json:"queued_sequences"`
	Inflight    int  `json:"inflight_sequences"`
	MaxInflight int  `json:"max_inflight"`
	Limit       int  `json:"inflight_limit"`
	Hold        bool `json:"engine_saturated"`
	MaxQueued   int  `json:"max_queued"`
	// RateRPS is the engine's completion rate at the limit, as the model
	// predicts it.
	RateRPS float64 `json:"completion_rate"`
	// EngineSeconds is the recent average time a request holds its slots.
	EngineSeconds float64 `json:"engine_seconds_per_request"`
	// AdmissionTailSeconds is the model's tail time for the recent typical
	// request at the limit: what a request that waits for a slot is
	// expected to take in the engine, 95 times in 100.
	AdmissionTailSeconds float64 `json:"admission_tail_seconds"`
	// AdmissionLevel is the quantile of the model's spread admission
	// predicts at, learned so that about LateTarget of the answers are
	// late.
	AdmissionLevel float64 `json:"admission_level"`
	// Model is the engine model: its parameters and how much of it is
	// measured rather than assumed.
	Model enginemodel.Status `json:"engine_model"`
}

// Stats returns a snapshot of the queue's state.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	limit := q.capLocked()
	return Stats{
		Queued:        q.queuedLocked(),
		QueuedBatch:   q.classes[Batch].n,
		QueuedSlots:   q.queuedSlotsLocked(),
		Inflight:      q.inflight,
		MaxInflight:   q.cfg.MaxInflight,
		Limit:         limit,
		Hold:          q.hold,
		MaxQueued:     q.cfg.MaxQueued,
		RateRPS:       q.model.Rate(limit),
		EngineSeconds: q.engineTime.Seconds(),

		AdmissionTailSeconds: q.model.TypicalTail(limit, q.late.level).Seconds(),
		AdmissionLevel:       q.late.level,
		Model:                q.model.Status(),
	}
}

func (q *Queue) remainingStart() time.Duration {
	if q.warmup == nil {
		return 0
	}
	return q.warmup.RemainingStart()
}

// fmtDur rounds a duration for a message.
func fmtDur(d time.Duration) string { return fmt.Sprint(d.Round(time.Millisecond)) }
