// Package sim is llmlab's engine simulator: it speaks vLLM's HTTP API and
// metrics and schedules sequences the way vLLM's continuous batching does,
// in real time, with step times from a cost model of a GPU and a model
// (see Profile).
//
// Each engine step decodes one token for every running sequence whose
// prompt is computed, and spends the rest of max_num_batched_tokens on
// prompt chunks (chunked prefill), first for running sequences, then for
// waiting ones, while fewer than max_num_seqs run and the KV cache has
// blocks. A decode that finds no free block preempts a running sequence,
// which frees its blocks and is recomputed later, as vLLM's recompute
// preemption does; a step that preempts admits no waiting sequence.
//
// The scheduling policy is vLLM's --scheduling-policy, read in
// vllm/v1/core/sched/scheduler.py (Scheduler.schedule) and
// vllm/v1/core/sched/request_queue.py at commit 017e9f4448b7:
//
//   - "fcfs" (the default): the waiting queue is first come first served,
//     a preempted sequence goes back to its front, and the victim of a
//     preemption is the last of the running list (self.running.pop()).
//     A request's priority is accepted and ignored.
//   - "priority": the waiting queue is ordered by (priority, arrival),
//     lower first (PriorityRequestQueue, Request.__lt__ in
//     vllm/v1/request.py, whose last tie-break, the request id, is the
//     order of submission here), and a preempted sequence re-enters it by
//     that order; the victim is the running sequence with the largest
//     (priority, arrival), the first of equals (max(self.running, key=...)),
//     even one already given its share of this step, which then gives it
//     back. Running sequences are not preempted to admit a waiting one of
//     better priority: only a lack of KV blocks preempts.
//
// With prefix caching (on by default, as in vLLM), a waiting sequence's
// leading full blocks that an earlier prompt computed are not prefilled
// again; at least the prompt's last token always is.
//
// Sleep pauses the scheduler as vLLM's does (vllm/v1/engine/core.py,
// pause_scheduler): new sequences queue until Resume; "abort" ends the
// sequences in the engine first, "wait" lets them finish.
package sim

import (
	"container/list"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// BlockSize is the KV-cache block size in tokens.
const BlockSize = 16

// Config sets the engine's knobs.
type Config struct {
	Profile             Profile
	MaxNumSeqs          int
	MaxNumBatchedTokens int
	MaxModelLen         int
	KVBlocks            int
	// MaxNumQueuedReqs bounds the sequences in flight, waiting and
	// running, past which a request is refused with 503 (0: unbounded), as
	// vLLM's --max-num-queued-reqs does (vLLM PR #49445: checked in
	// AsyncLLM.add_request before the request enters the engine; a
	// request with n > 1 counts as n).
	MaxNumQueuedReqs int
	// PrefixCaching reuses computed prompt blocks (vLLM's
	// --enable-prefix-caching, on by default: CacheConfig).
	PrefixCaching bool
	// SchedulingPolicy is vLLM's --scheduling-policy: PolicyFCFS (also
	// "") or PolicyPriority (see the package doc).
	SchedulingPolicy string
}

// Scheduling policies, as vLLM names them (vllm/config/scheduler.py,
// SchedulerPolicy).
const (
	PolicyFCFS     = "fcfs"
	PolicyPriority = "priority"
)

// seq is one sequence the engine generates.
type seq struct {
	arrival   time.Time
	prompt    int  // prompt tokens
	maxTokens int  // stop after this many output tokens
	byLength  bool // maxTokens is the request's cap (finish_reason "length")
	// priority is the request's (lower is served first); it orders the
	// engine's work only under the priority policy.
	priority int
	// blockHashes key the prompt's full blocks in the prefix cache.
	blockHashes []uint64
	// order is the sequence's place in submission order, set by Submit:
	// the last tie-break of the priority policy's order.
	order uint64
	// Owned by the engine goroutine:
	preemptions  int  // times preempted
	cacheChecked bool // looked up in the prefix cache
	cacheStored  bool // its blocks are in the prefix cache
	computed     int  // context tokens whose KV is computed
	blocks       int
	scheduled    time.Time // first time scheduled
	// Read by the request's goroutine:
	generated atomic.Int32
	done      atomic.Bool
	firstTok  atomic.Int64 // unix nanos of the first token
	cancelled atomic.Bool
	aborted   atomic.Bool // ended by the engine (a sleep in abort mode)
	// notify is poked (non-blocking) on every new token; the sequences of
	// one request share it.
	notify chan struct{}
}

func newSeq(prompt, maxTokens int, notify chan struct{}) *seq {
	return &seq{arrival: time.Now(), prompt: prompt, maxTokens: maxTokens, notify: notify}
}

// context is the number of tokens whose KV the sequence needs.
func (s *seq) context() int { return s.prompt + int(s.generated.Load()) }

func (s *seq) poke() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Engine runs the scheduler. Create it with NewEngine and run Loop.
type Engine struct {
	cfg     Config
	metrics *metrics

	mu        sync.Mutex
	incoming  []*seq
	submitted uint64 // sequences submitted so far (seq.order)
	wake      chan struct{}
	waitingN  atomic.Int32 // waiting + incoming, for admission and metrics
	runningN  atomic.Int32 // running, as of the last step, for admission

	// paused holds new sequences out of the scheduler (set by Pause, ended
	// by Resume); abort asks the loop to end the sequences it has.
	paused atomic.Bool
	abort  atomic.Bool
	// idle is closed by the loop when it is paused with nothing left.
	idleMu sync.Mutex
	idle   chan struct{}

	// Owned by the loop goroutine.
	running    []*seq
	waiting    []*seq
	freeBlocks int
	// cache is the prefix cache: block keys, least recently used first,
	// at most KVBlocks of them (cached blocks live in otherwise free KV
	// memory; this does not take them out of freeBlocks).
	cache    *list.List
	cacheIdx map[uint64]*list.Element
}

// NewEngine returns an engine; m may be nil.
func NewEngine(cfg Config, m *metrics) *Engine {
	return &Engine{cfg: cfg, metrics: m, wake: make(chan struct{}, 1), freeBlocks: cfg.KVBlocks,
		cache: list.New(), cacheIdx: map[uint64]*list.Element{}}
}

// Pause stops scheduling new sequences, as vLLM's sleep does; with abort,
// the sequences already in the engine end at once (their requests see an
// abort), else they run to their end. The returned channel closes when
// the engine holds no sequence of its own.
func (e *Engine) Pause(abort bool) <-chan struct{} {
	e.idleMu.Lock()
	e.idle = make(chan struct{})
	ch := e.idle
	e.idleMu.Unlock()
	e.abort.Store(abort)
	e.paused.Store(true)
	e.poke()
	return ch
}

// Resume lets the sequences that queued while paused in.
func (e *Engine) Resume() {
	e.paused.Store(false)
	e.poke()
}

// signalIdle closes the idle channel of a pause that is waiting for it.
func (e *Engine) signalIdle() {
	e.idleMu.Lock()
	if e.idle != nil {
		close(e.idle)
		e.idle = nil
	}
	e.idleMu.Unlock()
}

// cachedPrefix looks s's blocks up in the prefix cache and returns how
// many leading blocks are there, marking them recently used.
func (e *Engine) cachedPrefix(s *seq) int {
	n := 0
	for _, h := range s.blockHashes {
		el, ok := e.cacheIdx[h]
		if !ok {
			break
		}
		e.cache.MoveToBack(el)
		n++
	}
	return n
}

// storePrefix puts s's prompt blocks in the prefix cache, evicting the
// least recently used beyond KVBlocks.
func (e *Engine) storePrefix(s *seq) {
	for _, h := range s.blockHashes {
		if el, ok := e.cacheIdx[h]; ok {
			e.cache.MoveToBack(el)
			continue
		}
		e.cacheIdx[h] = e.cache.PushBack(h)
		for e.cache.Len() > e.cfg.KVBlocks {
			old := e.cache.Front()
			delete(e.cacheIdx, old.Value.(uint64))
			e.cache.Remove(old)
		}
	}
}

// ErrQueueFull is returned by Submit when max_num_queued_reqs is reached.
type ErrQueueFull struct{}

func (ErrQueueFull) Error() string {
	return "the engine has as many requests in flight as --max-num-queued-reqs allows"
}

// Submit hands sequences to the engine.
func (e *Engine) Submit(seqs ...*seq) error {
	if max := e.cfg.MaxNumQueuedReqs; max > 0 && int(e.waitingN.Load()+e.runningN.Load())+len(seqs) > max {
		return ErrQueueFull{}
	}
	e.mu.Lock()
	for _, s := range seqs {
		e.submitted++
		s.order = e.submitted
	}
	e.incoming = append(e.incoming, seqs...)
	e.mu.Unlock()
	e.waitingN.Add(int32(len(seqs)))
	e.poke()
	return nil
}

// Cancel marks s for removal at the next step.
func (e *Engine) Cancel(s *seq) {
	s.cancelled.Store(true)
	e.poke()
}

func (e *Engine) poke() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Loop runs engine steps until stop is closed.
func (e *Engine) Loop(stop <-chan struct{}) {
	next := time.Now() // when the next step may start, on the model's clock
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if !e.paused.Load() {
			e.takeIncoming()
		}
		if e.abort.Swap(false) {
			for _, s := range append(e.running, e.waiting...) {
				s.aborted.Store(true)
				s.done.Store(true)
				s.poke()
			}
			e.running = e.removeIf(e.running, func(*seq) bool { return true })
			e.waitingN.Add(-int32(len(e.waiting)))
			e.waiting = e.waiting[:0]
		}
		e.dropCancelled()
		if e.paused.Load() && len(e.running) == 0 && len(e.waiting) == 0 {
			e.signalIdle()
		}

		tokens, kv, pairs, chunks := e.schedule()
		e.publish()
		if tokens == 0 {
			select {
			case <-e.wake:
				next = time.Now()
				continue
			case <-stop:
				return
			}
		}
		step := e.cfg.Profile.StepTime(tokens, kv, pairs)
		now := time.Now()
		if next.Before(now) {
			next = now
		}
		end := next.Add(step)
		timer.Reset(time.Until(end))
		select {
		case <-timer.C:
		case <-stop:
			return
		}
		if e.metrics != nil {
			e.metrics.observeStep(tokens, time.Since(end))
		}
		next = end
		e.finishStep(end, chunks)
	}
}

// takeIncoming moves the submitted sequences into the waiting queue.
func (e *Engine) takeIncoming() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.incoming {
		e.enqueue(s)
	}
	clear(e.incoming)
	e.incoming = e.incoming[:0]
}

// priority reports whether the engine schedules by priority.
func (e *Engine) priority() bool { return e.cfg.SchedulingPolicy == PolicyPriority }

// before is the priority policy's order: lower priority value first, then
// earlier arrival (vllm/v1/request.py, Request.__lt__), then submission.
func before(a, b *seq) bool {
	if a.priority != b.priority {
		return a.priority < b.priority
	}
	if !a.arrival.Equal(b.arrival) {
		return a.arrival.Before(b.arrival)
	}
	return a.order < b.order
}

// enqueue adds s to the waiting queue: at the back first come first
// served, in (priority, arrival) order under the priority policy
// (PriorityRequestQueue.add_request).
func (e *Engine) enqueue(s *seq) {
	if !e.priority() {
		e.waiting = append(e.waiting, s)
		return
	}
	i, _ := slices.BinarySearchFunc(e.waiting, s, func(w, s *seq) int {
		if before(w, s) {
			return -1
		}
		return 1
	})
	e.waiting = slices.Insert(e.waiting, i, s)
}

// victim is the running sequence a preemption takes: the last one
// first come first served (self.running.pop()); the first with the
// largest (priority, arrival) under the priority policy
// (max(self.running, key=lambda r: (r.priority, r.arrival_time)), which
// keeps the first of equals).
func (e *Engine) victim() *seq {
	if !e.priority() {
		return e.running[len(e.running)-1]
	}
	v := e.running[0]
	for _, r := range e.running[1:] {
		if r.priority > v.priority || r.priority == v.priority && r.arrival.After(v.arrival) {
			v = r
		}
	}
	return v
}

// scheduled work of one step.
type chunk struct {
	s *seq
	n int
}

// schedule picks the step's work and reserves KV blocks for it. It returns
// the tokens processed, the KV tokens read and the chunks: a decoding
// sequence's chunk is its one newest token, a prefilling sequence's is the
// next part of its prompt (or, after a preemption, of its prompt and the
// tokens it had generated).
func (e *Engine) schedule() (tokens, kv, pairs int, chunks []chunk) {
	budget := e.cfg.MaxNumBatchedTokens
	take := func(s *seq, n, sign int) {
		tokens += sign * n
		kv += sign * (s.computed + n)
		if n > 1 {
			pairs += sign * prefillPairs(s.computed, n)
		}
		budget -= sign * n
	}
	preempted := false
	// Running sequences first, in the order they were scheduled; a lack of
	// blocks preempts the policy's victim.
	for i := 0; i < len(e.running) && budget > 0; i++ {
		s := e.running[i]
		n := min(s.context()-s.computed, budget)
		for !e.reserve(s, s.computed+n) {
			victim := e.victim()
			if vi := slices.Index(e.running, victim); vi < i {
				// Scheduled earlier in this step (only the priority
				// policy picks one): its share of the step is given back,
				// as scheduler.py restores the victim's token budget.
				j := slices.IndexFunc(chunks, func(c chunk) bool { return c.s == victim })
				take(victim, chunks[j].n, -1)
				chunks = slices.Delete(chunks, j, j+1)
				i--
			}
			e.preempt(victim)
			preempted = true
			if victim == s {
				break
			}
		}
		if i >= len(e.running) || e.running[i] != s {
			break // s itself was preempted
		}
		chunks = append(chunks, chunk{s, n})
		take(s, n, 1)
	}
	// Then waiting sequences in the queue's order, unless this step
	// preempted (scheduler.py: "if not preempted_reqs").
	admitted := 0
	for !preempted && admitted < len(e.waiting) && budget > 0 && len(e.running) < e.cfg.MaxNumSeqs {
		s := e.waiting[admitted]
		if e.cfg.PrefixCaching && !s.cacheChecked {
			s.cacheChecked = true
			hit := min(e.cachedPrefix(s)*BlockSize, s.prompt-1)
			s.computed = max(hit, 0)
			if e.metrics != nil {
				e.metrics.cacheQueries.Add(float64(s.prompt))
				e.metrics.cacheHits.Add(float64(s.computed))
			}
		}
		n := min(s.context()-s.computed, budget)
		if !e.reserve(s, s.computed+n) {
			break
		}
		if s.scheduled.IsZero() {
			s.scheduled = time.Now()
			if e.metrics != nil {
				e.metrics.queueTime.Observe(s.scheduled.Sub(s.arrival).Seconds())
			}
		}
		e.running = append(e.running, s)
		chunks = append(chunks, chunk{s, n})
		take(s, n, 1)
		admitted++
	}
	if admitted > 0 {
		e.waiting = append(e.waiting[:0], e.waiting[admitted:]...)
		e.waitingN.Add(-int32(admitted))
	}
	return tokens, kv, pairs, chunks
}

// reserve grows s's KV blocks to hold tokens; false if the cache is full.
func (e *Engine) reserve(s *seq, tokens int) bool {
	need := (tokens + BlockSize - 1) / BlockSize
	if need <= s.blocks {
		return true
	}
	if need-s.blocks > e.freeBlocks {
		return false
	}
	e.freeBlocks -= need - s.blocks
	s.blocks = need
	return true
}

func (e *Engine) release(s *seq) {
	e.freeBlocks += s.blocks
	s.blocks = 0
}

// preempt moves a running sequence back to the waiting queue (its front
// first come first served, its place by (priority, arrival) under the
// priority policy: prepend_request) and frees its KV cache; it will be
// recomputed (prompt and the tokens generated so far).
func (e *Engine) preempt(s *seq) {
	if i := slices.Index(e.running, s); i >= 0 {
		e.running = slices.Delete(e.running, i, i+1)
	}
	e.release(s)
	s.computed = 0
	s.preemptions++
	if e.priority() {
		e.enqueue(s)
	} else {
		e.waiting = slices.Insert(e.waiting, 0, s)
	}
	e.waitingN.Add(1)
	if e.metrics != nil {
		e.metrics.preemptions.Inc()
	}
}

// finishStep applies a step's results at the model's time end.
func (e *Engine) finishStep(end time.Time, chunks []chunk) {
	for _, c := range chunks {
		c.s.computed += c.n
		if e.cfg.PrefixCaching && !c.s.cacheStored && c.s.computed >= c.s.prompt {
			c.s.cacheStored = true
			e.storePrefix(c.s)
		}
		if c.s.computed >= c.s.context() {
			// A step that computes a sequence's whole context samples its
			// next token.
			e.emit(c.s, end)
		}
	}
	e.running = e.removeIf(e.running, func(s *seq) bool { return s.done.Load() })
}

// removeIf drops the sequences for which drop is true from list, freeing
// their KV blocks, and returns the shortened list.
func (e *Engine) removeIf(list []*seq, drop func(*seq) bool) []*seq {
	kept := list[:0]
	for _, s := range list {
		if drop(s) {
			e.release(s)
			continue
		}
		kept = append(kept, s)
	}
	clear(list[len(kept):])
	return kept
}

func (e *Engine) emit(s *seq, at time.Time) {
	g := s.generated.Add(1)
	if g == 1 {
		s.firstTok.Store(at.UnixNano())
		if e.metrics != nil {
			e.metrics.ttft.Observe(at.Sub(s.arrival).Seconds())
		}
	}
	if int(g) >= s.maxTokens {
		s.done.Store(true)
		if e.metrics != nil {
			e.metrics.e2e.Observe(at.Sub(s.arrival).Seconds())
			e.metrics.success.Inc()
		}
	}
	s.poke()
}

// dropCancelled removes sequences whose clients left.
func (e *Engine) dropCancelled() {
	cancelled := func(s *seq) bool { return s.cancelled.Load() }
	e.running = e.removeIf(e.running, cancelled)
	before := len(e.waiting)
	e.waiting = e.removeIf(e.waiting, cancelled)
	e.waitingN.Add(-int32(before - len(e.waiting)))
}

// publish updates the gauges from the loop's state.
func (e *Engine) publish() {
	e.runningN.Store(int32(len(e.running)))
	if e.metrics == nil {
		return
	}
	e.metrics.running.Set(float64(len(e.running)))
	e.metrics.waiting.Set(float64(e.waitingN.Load()))
	if e.cfg.KVBlocks > 0 {
		e.metrics.kvUsage.Set(1 - float64(e.freeBlocks)/float64(e.cfg.KVBlocks))
	}
}
