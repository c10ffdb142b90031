package queue

import (
	"container/list"
	"sync/atomic"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// Ticket is an admitted request's hold on engine slots. The gateway tells
// it how the answer goes (Progress, Report); Release frees its slots and
// teaches the engine model what the request took.
type Ticket struct {
	q          *Queue
	weight     int
	shape      enginemodel.Shape
	stream     bool
	waited     time.Duration
	group      *Group
	released   bool
	dispatched time.Time
	arrived    time.Time
	slotsAt    float64       // the queue's slotSeconds at dispatch
	elem       *list.Element // in the queue's running list
	// model learns from the answer; inflightAt is the slots in flight just
	// after the ticket was dispatched.
	model      *enginemodel.Model
	inflightAt int
	// tokens counts the streamed events carrying tokens so far;
	// markTokens is its value at SampleProgress number markSeq.
	tokens     atomic.Int64
	markTokens int64
	// streaming is 0 before the first token, 1 once the ticket counts in
	// the queue's streaming, 2 once released (Progress, Release).
	streaming atomic.Int32
	markSeq   uint64
	report    *Report
	// judged: a request under an objective (objective), whose answer
	// moves admission's level (lateness).
	judged    bool
	objective time.Duration
	// class and flow are where fair sharing counts it; cost is the tokens
	// it was charged at dispatch, prompt the prompt's share of them.
	class        Class
	flow         *flow
	cost, prompt float64
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

// Waited is how long the request spent in the queue.
func (t *Ticket) Waited() time.Duration { return t.waited }

// Weight is the number of slots the ticket holds.
func (t *Ticket) Weight() int { return t.weight }

// Group returns the coalescing group the ticket was dispatched in, or nil.
func (t *Ticket) Group() *Group { return t.group }

// Progress adds n streamed events carrying tokens: the running request's
// progress, from which admission predicts when it ends. Safe to call
// without the queue's lock, from the goroutine proxying the answer.
//
// The first event tells the model the engine ran a request dispatched
// with inflightAt in flight, beside the others streaming then (the limit's
// growth is bounded by what was seen to run at once): an engine that
// queues a request internally sends nothing of its answer until it runs.
func (t *Ticket) Progress(n int) {
	if n > 0 && t.tokens.Add(int64(n)) == int64(n) {
		running := 0
		if t.streaming.CompareAndSwap(0, 1) {
			running = int(t.q.streaming.Add(int64(t.weight)))
		}
		t.model.FirstToken(t.inflightAt, running, time.Since(t.dispatched))
		t.q.prefilled.Add(int64(t.model.PromptTokens(t.shape)))
	}
}

// Report is how a request's answer went, as the gateway saw it.
type Report struct {
	// PromptTokens and OutputTokens are the engine's usage report (0: none).
	PromptTokens, OutputTokens int
	// FirstByte is when the first byte of a streamed answer came (zero: not
	// streamed).
	FirstByte time.Time
}

// Complete says the engine answered the request in full, as r tells; a
// ticket released without it (an error, a client that left) teaches the
// model nothing. Call it before Release.
func (t *Ticket) Complete(r Report) {
	t.q.mu.Lock()
	defer t.q.mu.Unlock()
	t.report = &r
}

// Release returns the ticket's slots; it is safe to call more than once.
func (t *Ticket) Release() {
	q := t.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if t.released {
		return
	}
	t.released = true
	if t.streaming.Swap(2) == 1 {
		q.streaming.Add(-int64(t.weight))
	}
	now := time.Now()
	if t.elem != nil {
		q.running.Remove(t.elem)
		t.elem = nil
	}
	tokens := t.tokens.Load()
	q.progress.ended += tokens - t.markTokens
	q.accountLocked(now)
	if held := now.Sub(t.dispatched); !t.dispatched.IsZero() && held > 0 {
		if q.engineTime == 0 {
			q.engineTime = held
		} else {
			q.engineTime += (held - q.engineTime) / 20
		}
		if r := t.report; r != nil {
			o := enginemodel.Observation{Shape: t.shape, Concurrency: (q.slotSeconds - t.slotsAt) / held.Seconds(), AtDispatch: t.inflightAt,
				PromptTokens: r.PromptTokens, OutputTokens: r.OutputTokens / t.weight, Chunks: int(tokens) / t.weight, Total: held,
				Sampled: t.markSeq > 0 && t.markTokens > 0, FirstSeen: tokens > 0}
			if !r.FirstByte.IsZero() && r.FirstByte.After(t.dispatched) {
				o.TTFT = r.FirstByte.Sub(t.dispatched)
			}
			q.model.Observe(o)
			if t.judged {
				q.late.answered(now.Sub(t.arrived) > t.objective)
			}
		}
	}
	q.inflight -= t.weight
	if t.flow != nil {
		worked := t.workedLocked()
		q.classes[t.class].released(now, t.flow, t.weight, t.cost-worked)
		if q.obs != nil {
			q.obs.Served(t.class, t.flow.name, worked)
		}
	}
	q.dispatchLocked(now, false)
}

// workedLocked is the tokens the request took, which fair sharing charges
// its flow in the end instead of its cost at dispatch: the engine's usage
// report where there is one; else, for a stream, its prompt as estimated
// and the chunks it streamed (vLLM sends a token a chunk); else (an answer
// that was not streamed and ended without usage, so what it took is not
// known) the cost at dispatch.
func (t *Ticket) workedLocked() float64 {
	prompt, out := t.prompt, t.cost-t.prompt
	streamed := float64(t.tokens.Load())
	switch r := t.report; {
	case r != nil && (r.PromptTokens > 0 || r.OutputTokens > 0):
		if r.PromptTokens > 0 {
			prompt = float64(r.PromptTokens)
		}
		out = float64(r.OutputTokens)
	case t.stream:
		out = streamed
	}
	return prompt + out
}
