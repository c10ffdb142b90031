// Package enginemodel learns, from the requests llmlabd proxies, how long
// the engine takes to answer a request as a function of how many it runs
// at once, and predicts from that how long a request admitted now will
// take. Admission (daemon/queue) judges every request with it, and the
// in-flight limit is chosen from it.
//
// The model follows what an engine's latency is made of (vLLM's
// continuous batching, vllm/v1/core/sched/scheduler.py: every step runs
// every running sequence once, plus prompt chunks within
// max_num_batched_tokens):
//
//	time = TTFT(n, prompt) + (output tokens - 1) x TPOT(n)
//	TPOT(n)         = a + b·s(n)         (a step's fixed cost, and its cost per token it carries)
//	s(n)            = n·(1 + P/O)        (the tokens a step carries with n in flight)
//	TTFT(n, prompt) = c + d·n + e·prompt (the prefill, and any wait inside the engine)
//
// where n is the number of sequences in flight while the request ran (the
// average over its life, from the queue's slot integral), and P and O the
// recent typical request's prompt and output tokens. A step carries one
// token of each running sequence and chunks of the prompts waiting
// (vllm/v1/core/sched/scheduler.py, schedule: decodes first, then prefill
// chunks within max_num_batched_tokens); with n in flight, about n/O
// requests end, and as many prompts are prefilled, per step, so a step
// carries n decode and n·P/O prompt tokens. A line in n alone fits the
// mix it was learned on and extrapolates badly to another: a 50-token answer
// behind 200-token prompts spends four fifths of each step on prefill.
// The per-token line is learned from what the streams show (SampleProgress
// measures the tokens per step and the time per step directly), and from
// finished requests whose steps no stream showed. A slot engine
// (Ollama, llama.cpp's server) fits the same form: past its slots a
// request waits inside the engine, which shows as TTFT growing with n
// while TPOT stops growing, and as throughput n / time(n) that no longer
// rises; the limit stops there (Limit).
//
// Both lines are least-squares fits of the requests seen, the old ones
// fading (the last few hundred count), pulled toward a prior (Seed) where
// nothing was seen: before the first request, and at concurrencies never
// run. Streamed requests give TTFT and TPOT apart (the first token's time,
// then the rest over the tokens counted); a non-streamed one gives only its
// total, from which the fitted TTFT is taken. The output length a request
// will have is its max_tokens times the share of it that requests have
// used, and its prompt tokens are its prompt's bytes times the tokens per
// byte the engine's usage reports showed.
//
// The spread is measured, not assumed: the distribution of each finished
// request's time over what the model predicted for it, from the last 256.
// A prediction's tail at level q is its mean times that distribution's
// q-quantile (admission chooses q: daemon/queue).
package enginemodel

import (
	"slices"
	"sync"
	"time"
)

// Shape is what admission knows of a request before it runs.
type Shape struct {
	// PromptBytes is the size of its prompt (or messages) in bytes.
	PromptBytes int
	// MaxTokens is its output cap (the engine's default where it names
	// none).
	MaxTokens int
}

// Observation is one finished request as the gateway saw it.
type Observation struct {
	Shape
	// Concurrency is the average number of sequences in flight while it
	// held its slots; AtDispatch the number in flight, itself included,
	// when it was sent (0: Concurrency), which is what its time to first
	// token depends on where the engine queues past its slots.
	Concurrency float64
	AtDispatch  int
	// PromptTokens and OutputTokens are the engine's usage report (0: none).
	PromptTokens, OutputTokens int
	// Chunks is the number of streamed events that carried tokens (0: not
	// streamed).
	Chunks int
	// TTFT is dispatch to the first byte of a streamed answer (0: not
	// streamed); Total is dispatch to the last byte.
	TTFT, Total time.Duration
	// Sampled: its stream's steps were already learned while it ran
	// (ObserveStep), so its time per token teaches the model nothing more.
	Sampled bool
	// FirstSeen: its time to first token was already learned when the
	// token came (FirstToken).
	FirstSeen bool
}

// Seed is the prior: the engine the model assumes before it has seen one.
type Seed struct {
	// StepFixed and PerToken give a step's time, StepFixed + PerToken per
	// token it carries (decode and prefill alike).
	StepFixed, PerToken time.Duration
	// PerPromptToken is the prefill's cost per prompt token.
	PerPromptToken time.Duration
	// TokensPerByte converts a prompt's bytes to tokens.
	TokensPerByte float64
}

// DefaultSeed is the target card's engine: Qwen2.5-0.5B on a GeForce GTX
// 1650, as the simulator's gtx1650-derived profile stood before 2026-12-07
// (derived from the unfused H200 measurement: 11.89 ms a step, rounded
// here to 11.3, and 0.42 ms a token). Today's profile, derived from the
// H100 measurement in vLLM's structure, is faster (9.72 ms and 0.20 ms:
// docs/calibration.md); the seed stays until a step-from-idle benchmark on
// both the simulator and a real engine says which prior refuses less
// without admitting late answers. A faster engine is learned within a few
// requests; a slower prior refuses more while it learns, a faster one
// admits more.
var DefaultSeed = Seed{StepFixed: 11300 * time.Microsecond, PerToken: 422 * time.Microsecond,
	PerPromptToken: 422 * time.Microsecond, TokensPerByte: 0.2}

const (
	// decay fades old observations: about the last 1/(1-decay) count.
	decay = 0.995
	// priorWeight is the prior's strength, in requests.
	priorWeight = 1.0
	// nScale, sScale and pScale put concurrency, a step's tokens and
	// prompt tokens on the scale of the intercept in the fits.
	nScale = 16.0
	sScale = 16.0
	pScale = 100.0
	// spreadSamples is how many finished requests the spread is read from.
	spreadSamples = 256
	// minSpreadSamples is how many it takes before the spread is measured;
	// before, defaultSpread.
	minSpreadSamples = 20
	// minMeasured is the weight of observations in the fit, in requests,
	// before the spread is read from what it predicts.
	minMeasured = 8
	// queueShare: past a knee at which each further sequence adds at
	// least this share of a request's time per slot to the time to first
	// token, requests wait inside the engine.
	queueShare = 0.5
	// kneeHold is how long a knee found holds while the fit does not
	// find it again.
	kneeHold = 30 * time.Second
)

// Model is safe for concurrent use.
type Model struct {
	mu     sync.Mutex
	decode fit // a step's time (seconds) on [1, tokens/sScale]
	ttft   fit // TTFT (seconds) on [1, n/nScale, prompt/pScale]
	// cached solutions
	dec, pre [3]float64
	// outShare is the share of max_tokens requests produce; tokensPerByte
	// converts prompt bytes to tokens; both moving averages.
	outShare, tokensPerByte float64
	// typical is the recent average request admission was asked about
	// (typSeen of them), for choosing a limit.
	typPrompt, typMax float64
	typSeen           int
	ratios            [spreadSamples]float64
	nRatios           int
	sorted            []float64 // the ratios, sorted
	observed          int
	nLo, nHi          float64
	knees             bins
	// lastKnee is the knee last found, at kneeAt (kneeLocked).
	lastKnee int
	kneeAt   time.Time
	// slow is how much NVML says other work on the card slows the engine
	// now (SetContention; 1: none). While it is above 1 the fits, which
	// describe the engine alone, learn nothing, and seen learns from the
	// answers how much slower than alone the engine really is (seenN
	// answers so far): NVML tells that other work runs, the answers how
	// much it costs.
	slow  float64
	seen  float64
	seenN int
}

// minSeen is the answers beside other work after which their measured
// slowdown replaces NVML's estimate.
const minSeen = 3

// New returns a model seeded with s.
func New(s Seed) *Model {
	m := &Model{
		decode:        newFit(2, decay, []float64{s.StepFixed.Seconds(), s.PerToken.Seconds() * sScale}, []float64{priorWeight, priorWeight}),
		ttft:          newFit(3, decay, []float64{s.StepFixed.Seconds(), s.PerToken.Seconds() * nScale, s.PerPromptToken.Seconds() * pScale}, []float64{priorWeight, priorWeight, priorWeight}),
		outShare:      1,
		tokensPerByte: s.TokensPerByte,
		slow:          1,
	}
	if m.tokensPerByte <= 0 {
		m.tokensPerByte = DefaultSeed.TokensPerByte
	}
	m.solveLocked()
	return m
}

func (m *Model) solveLocked() {
	m.dec = m.decode.solve()
	m.pre = m.ttft.solve()
}

func (m *Model) promptTokensLocked(s Shape) float64 {
	return float64(s.PromptBytes) * m.tokensPerByte
}

func (m *Model) outTokensLocked(s Shape) float64 {
	return max(1, m.outShare*float64(max(s.MaxTokens, 1)))
}

// stepTokensLocked is the tokens a step carries with n in flight, in the
// steady state of the recent typical request: n decode tokens and n·P/O
// prompt tokens.
func (m *Model) stepTokensLocked(n float64) float64 {
	prompt, out := m.typicalLocked()
	return n * (1 + prompt/out)
}

// tpotLocked and ttftLocked are the fitted lines, never below zero.
func (m *Model) tpotLocked(n float64) float64 {
	return max(m.dec[0]+m.dec[1]*m.stepTokensLocked(n)/sScale, 0)
}

func (m *Model) ttftLocked(n, prompt float64) float64 {
	return max(m.pre[0]+m.pre[1]*n/nScale+m.pre[2]*prompt/pScale, 0)
}

// aloneLocked is a request's mean time with the engine alone on the card;
// meanLocked as it runs now, beside the card's other work.
func (m *Model) aloneLocked(n, prompt, out float64) float64 {
	return m.ttftLocked(n, prompt) + (out-1)*m.tpotLocked(n)
}

func (m *Model) meanLocked(n, prompt, out float64) float64 {
	return m.slowLocked() * m.aloneLocked(n, prompt, out)
}

// slowLocked is how much slower than alone the engine runs now: 1 without
// other work on the card; beside it, NVML's estimate until minSeen answers
// have measured it.
func (m *Model) slowLocked() float64 {
	switch {
	case m.slow <= 1:
		return 1
	case m.seenN >= minSeen:
		return max(m.seen, 1)
	}
	return m.slow
}

// SetContention tells the model how much the card's other work slows the
// engine now, by NVML's reading: its steps take factor times as long as
// alone (1: nothing else runs; daemon/gpu's Admission.Contention). NVML's
// factor assumes fair time slices; a compute-bound neighbour took far more
// on an H100 (docs/gpu.md: ten times, where the factor said two), so the
// answers that end beside the other work measure the slowdown and replace
// the estimate, and teach the fits nothing: when the other work stops, the
// predictions are the engine alone's again at once, neither faded by what
// it did beside it nor kept in the state file.
func (m *Model) SetContention(factor float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.slow = max(factor, 1)
	if m.slow == 1 {
		m.seen, m.seenN = 0, 0
	}
}

// answerTokensLocked is how many tokens a finished request's answer had:
// its usage, else its streamed chunks, else what its shape predicts.
func (m *Model) answerTokensLocked(o Observation) float64 {
	switch {
	case o.OutputTokens > 0:
		return float64(o.OutputTokens)
	case o.Chunks > 0:
		return float64(o.Chunks)
	}
	return m.outTokensLocked(o.Shape)
}

// Observe learns from one finished request.
func (m *Model) Observe(o Observation) {
	if o.Total <= 0 || o.Concurrency <= 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := o.Concurrency
	if o.PromptTokens > 0 && o.PromptBytes > 0 {
		m.tokensPerByte += (float64(o.PromptTokens)/float64(o.PromptBytes) - m.tokensPerByte) / 20
	}
	prompt := float64(o.PromptTokens)
	if prompt == 0 {
		prompt = m.promptTokensLocked(o.Shape)
	}
	if m.slow > 1 {
		// Beside other work: how much slower than alone the engine runs,
		// and nothing about the engine alone (its fits, its spread).
		if alone := m.aloneLocked(n, prompt, max(m.answerTokensLocked(o), 1)); alone > 0 {
			r := o.Total.Seconds() / alone
			if m.seenN == 0 {
				m.seen = r
			} else {
				m.seen += (r - m.seen) / 8
			}
			m.seenN++
		}
		return
	}
	// The spread compares the finished request with what admission would
	// have predicted for it: its output length unknown, as at admission.
	// Not while the fit is mostly prior: those ratios measure the prior's
	// error, not the engine's spread, and would stay among the last 256 long
	// after the model has learned.
	if pred := m.meanLocked(n, m.promptTokensLocked(o.Shape), m.outTokensLocked(o.Shape)); pred > 0 && m.decode.n >= minMeasured {
		m.ratios[m.nRatios%spreadSamples] = o.Total.Seconds() / pred
		m.nRatios++
		if m.nRatios >= minSpreadSamples && (m.nRatios < spreadSamples || m.nRatios%8 == 0) {
			m.sortRatiosLocked()
		}
	}
	if o.OutputTokens > 0 && o.MaxTokens > 0 {
		m.outShare += (min(float64(o.OutputTokens)/float64(o.MaxTokens), 1) - m.outShare) / 20
	}
	out := m.answerTokensLocked(o)
	total := o.Total.Seconds()
	ttft := o.TTFT.Seconds()
	if o.TTFT > 0 && o.TTFT <= o.Total {
		m.ttft.add([]float64{1, n / nScale, prompt / pScale}, ttft)
		at := float64(o.AtDispatch)
		if at <= 0 {
			at = n
		}
		if !o.FirstSeen {
			m.knees.add(at, ttft)
		}
	} else {
		ttft = min(m.ttftLocked(n, prompt), total)
		if out <= 1 {
			m.ttft.add([]float64{1, n / nScale, prompt / pScale}, total)
		}
	}
	if out > 1 && !o.Sampled {
		m.decode.add([]float64{1, m.stepTokensLocked(n) / sScale}, (total-ttft)/(out-1))
	}
	if m.observed == 0 || n < m.nLo {
		m.nLo = n
	}
	if !o.FirstSeen {
		// A streamed answer's running count came with its first token
		// (FirstToken); its average in flight counts those that waited
		// inside the engine too.
		m.nHi = max(m.nHi, n)
	}
	m.observed++
	m.solveLocked()
}

// FirstToken notes that the engine started answering a request dispatched
// with atDispatch in flight (its first streamed token came back, ttft after
// it was sent), while running requests, itself included, were streaming
// tokens: the limit may grow to twice and one past running. A first token
// comes back within a step or a prefill where the engine runs what it is
// sent, and only once a slot frees where it queues them, so the limit grows
// as fast as the engine shows it can take more, not a whole answer's time
// per turn. Counting the requests streaming at once, not those in flight
// at dispatch, keeps a slot engine's internal queue out of it: a request
// that waited inside a 4-slot Ollama behind 40 others still streams beside
// only 3, and counting it at 44 had doubled the limit from 10 to 55 in 2 s
// before the knee showed (make test-engines, TestRealEngineOllama).
//
// It also learns from ttft where requests wait inside the engine (Knee),
// by the concurrency at dispatch: the knee shows a whole answer's time
// earlier than from finished requests: in front of a 4-slot Ollama, read
// only from finished requests, it came after the limit had doubled to
// 37-68, most of them in Ollama's queue.
func (m *Model) FirstToken(atDispatch, running int, ttft time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.nHi = max(m.nHi, float64(running))
	if atDispatch > 0 && ttft > 0 && m.slow <= 1 {
		m.knees.add(float64(atDispatch), ttft.Seconds())
	}
}

// ObserveStep learns a step's time, seconds, with tokens carried in it
// (decode and prefill), as measured across the running requests' streams
// (Queue.SampleProgress): each counts as much as one answer.
func (m *Model) ObserveStep(tokens, seconds float64) {
	if tokens < 1 || seconds <= 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slow > 1 {
		return // beside other work: not the engine alone's step
	}
	m.decode.add([]float64{1, tokens / sScale}, seconds)
	m.solveLocked()
}

// PromptTokens is the prompt tokens of a request of shape s, as the
// engine's usage reports convert its bytes.
func (m *Model) PromptTokens(s Shape) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.promptTokensLocked(s)
}

func (m *Model) sortRatiosLocked() {
	m.sorted = append(m.sorted[:0], m.ratios[:min(m.nRatios, spreadSamples)]...)
	slices.Sort(m.sorted)
}

// spreadLocked is the q-quantile of finished requests' times over their
// predictions; before minSpreadSamples, a guess of 1 at the median rising
// to 1.2 at the 95th percentile.
func (m *Model) spreadLocked(q float64) float64 {
	q = min(max(q, 0), 1)
	if len(m.sorted) < minSpreadSamples {
		return 1 + 0.2*max(q-0.5, 0)/0.45
	}
	return min(max(m.sorted[min(int(q*float64(len(m.sorted))), len(m.sorted)-1)], 0.25), 4)
}

// Prediction is what the model expects of a request.
type Prediction struct {
	// Mean is its expected time in the engine; Tail the time it stays
	// within at the level asked (the measured spread's quantile).
	Mean, Tail time.Duration
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Predict is what a request of shape s takes in the engine with n
// sequences in flight while it runs; its tail at level q (0.95: 95 times
// in 100).
func (m *Model) Predict(n float64, s Shape, q float64) Prediction {
	m.mu.Lock()
	defer m.mu.Unlock()
	mean := m.meanLocked(max(n, 1), m.promptTokensLocked(s), m.outTokensLocked(s))
	return Prediction{Mean: seconds(mean), Tail: seconds(mean * m.spreadLocked(q))}
}

// Remaining is how much longer a running request of shape s, dispatched
// elapsed ago with tokens of its answer streamed so far (0: unknown), is
// expected to hold its slots with n in flight.
func (m *Model) Remaining(n float64, s Shape, elapsed time.Duration, tokens int) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	n = max(n, 1)
	tpot := m.slowLocked() * m.tpotLocked(n)
	out := m.outTokensLocked(s)
	var left float64
	if tokens > 0 {
		left = (out - float64(tokens)) * tpot
	} else {
		left = m.meanLocked(n, m.promptTokensLocked(s), out) - elapsed.Seconds()
	}
	// Past its expected length it is about to end: a step or so.
	return seconds(max(left, tpot))
}

// Seen notes a request admission was asked about: the recent average of
// them is the typical request the limit is chosen for.
func (m *Model) Seen(s Shape) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.typSeen++
	k := float64(min(m.typSeen, 100))
	m.typPrompt += (m.promptTokensLocked(s) - m.typPrompt) / k
	m.typMax += (float64(s.MaxTokens) - m.typMax) / k
}

// typicalLocked is the recent typical request's prompt and output tokens;
// before any was seen, the project's workload (200 and 200).
func (m *Model) typicalLocked() (prompt, out float64) {
	if m.typSeen == 0 {
		return 200, 200
	}
	return m.typPrompt, max(1, m.outShare*m.typMax)
}

// Rate is the engine's completion rate in sequences per second with n in
// flight, for the recent typical request (Little's law).
func (m *Model) Rate(n int) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	prompt, out := m.typicalLocked()
	t := m.meanLocked(float64(max(n, 1)), prompt, out)
	if t <= 0 {
		return 0
	}
	return float64(max(n, 1)) / t
}

// Status is the model as /status shows it.
type Status struct {
	// Observed is the number of requests learned from; Measured the share
	// of the fits' weight that is observation rather than prior (0 to 1).
	Observed int     `json:"observed_requests"`
	Measured float64 `json:"measured_share"`
	// A step's fixed time, and its growth per token it carries.
	TPOTSeconds      float64    `json:"tpot_seconds"`
	TPOTPerToken     float64    `json:"tpot_seconds_per_step_token"`
	TTFTSeconds      float64    `json:"ttft_seconds"`
	TTFTPerSequence  float64    `json:"ttft_seconds_per_sequence"`
	PrefillPerToken  float64    `json:"prefill_seconds_per_prompt_token"`
	Spread           float64    `json:"spread_p95"`
	OutputShare      float64    `json:"output_share_of_max_tokens"`
	TokensPerByte    float64    `json:"prompt_tokens_per_byte"`
	ConcurrencyRange [2]float64 `json:"concurrency_seen"`
	// Knee is the concurrency past which requests wait inside the engine
	// (0: none seen).
	Knee int `json:"knee"`
	// Contention is how much the card's other work slows the engine now
	// (SetContention; 1: none).
	Contention float64 `json:"gpu_contention"`
}

// Status returns the model's parameters and how much of it is measured.
func (m *Model) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := Status{
		Observed: m.observed, Measured: m.decode.n / (m.decode.n + priorWeight),
		TPOTSeconds: m.dec[0], TPOTPerToken: m.dec[1] / sScale,
		TTFTSeconds: m.pre[0], TTFTPerSequence: m.pre[1] / nScale, PrefillPerToken: m.pre[2] / pScale,
		Spread: m.spreadLocked(0.95), OutputShare: m.outShare, TokensPerByte: m.tokensPerByte,
		ConcurrencyRange: [2]float64{m.nLo, m.nHi}, Contention: m.slowLocked(),
	}
	if k, ok := m.kneeLocked(); ok {
		st.Knee = k
	}
	return st
}

// TypicalTail is the tail time at level q of the recent typical request
// with n in flight.
func (m *Model) TypicalTail(n int, q float64) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	prompt, out := m.typicalLocked()
	return seconds(m.meanLocked(float64(max(n, 1)), prompt, out) * m.spreadLocked(q))
}
