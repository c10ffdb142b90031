package enginemodel

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"
)

// engine is a synthetic engine: the time a request of prompt p and out
// tokens takes with n in flight, as TTFT and the total.
type engine func(n float64, prompt, out int) (ttft, total time.Duration)

// batching is a continuous-batching engine: every step runs every
// sequence, and costs stepFixed plus perSeq for each.
func batching(stepFixed, perSeq, perPrompt time.Duration) engine {
	return func(n float64, prompt, out int) (time.Duration, time.Duration) {
		step := stepFixed + time.Duration(n*float64(perSeq))
		ttft := step + time.Duration(prompt)*perPrompt
		return ttft, ttft + time.Duration(out-1)*step
	}
}

// slots is a slot engine: s requests run at once, each at tpot per token
// whatever the others do; the rest wait inside it (Little's law: past s,
// a request's time is n/s of the service time).
func slots(s int, tpot time.Duration) engine {
	return func(n float64, prompt, out int) (time.Duration, time.Duration) {
		service := time.Duration(out) * tpot
		wait := time.Duration(0)
		if n > float64(s) {
			wait = time.Duration((n/float64(s) - 1) * float64(service))
		}
		return wait + tpot, wait + service
	}
}

// feed runs requests of 200+200 tokens (1000 prompt bytes at 0.2 tokens a
// byte) through m at concurrencies drawn from [lo, hi], streamed, with
// noise of ±noise.
func feed(m *Model, e engine, r *rand.Rand, count int, lo, hi, noise float64) {
	for range count {
		m.Seen(Shape{PromptBytes: 1000, MaxTokens: 200})
		n := lo + r.Float64()*(hi-lo)
		ttft, total := e(n, 200, 200)
		f := 1 + noise*(2*r.Float64()-1)
		m.Observe(Observation{Shape: Shape{PromptBytes: 1000, MaxTokens: 200}, Concurrency: n,
			PromptTokens: 200, OutputTokens: 200, Chunks: 200,
			TTFT: time.Duration(float64(ttft) * f), Total: time.Duration(float64(total) * f)})
	}
}

func within(got, want time.Duration, tol float64) bool {
	return math.Abs(got.Seconds()-want.Seconds()) <= tol*want.Seconds()
}

func TestLearnsABatchingEngine(t *testing.T) {
	// A card ten times faster than the prior: the model must leave it.
	e := batching(2*time.Millisecond, 100*time.Microsecond, 50*time.Microsecond)
	m := New(DefaultSeed)
	r := rand.New(rand.NewPCG(1, 2))
	feed(m, e, r, 400, 1, 40, 0.05)
	shape := Shape{PromptBytes: 1000, MaxTokens: 200}
	for _, n := range []float64{1, 10, 40, 80} {
		_, want := e(n, 200, 200)
		got := m.Predict(n, shape, 0.95).Mean
		// 80 was never run: the fit's line carries it.
		if !within(got, want, 0.1) {
			t.Errorf("Predict(%v).Mean = %v, want %v within 10%%", n, got, want)
		}
	}
	st := m.Status()
	if st.Observed != 400 || st.Measured < 0.95 {
		t.Errorf("Status() = %+v, want 400 observed and a measured share above 0.95", st)
	}
	if k, ok := m.Knee(); ok {
		t.Errorf("Knee() = %d, want none: a continuous batch queues nothing inside", k)
	}
	if st.Spread < 1 || st.Spread > 1.1 {
		t.Errorf("spread = %v, want the 95th percentile of ±5%% noise (1.00-1.10)", st.Spread)
	}
	// The limit: the largest n whose tail fits 1 s.
	lim := m.Limit(time.Second, 1, 1000, 0.95)
	var want int
	for n := 1; n < 1000; n++ {
		if _, tot := e(float64(n), 200, 200); tot.Seconds()*st.Spread <= 1 {
			want = n
		}
	}
	if d := lim - want; d < -want/10 || d > want/10 {
		t.Errorf("Limit(1s) = %d, want %d within 10%%", lim, want)
	}
	if got := m.Limit(time.Second, 1, 16, 0.95); got != 16 {
		t.Errorf("Limit(1s, hi 16) = %d, want the ceiling 16", got)
	}
	if got := m.Limit(10*time.Millisecond, 3, 16, 0.95); got != 3 {
		t.Errorf("Limit(10ms, lo 3) = %d, want the floor 3", got)
	}
}

func TestNonStreamedRequestsTeachTheTotal(t *testing.T) {
	e := batching(5*time.Millisecond, 200*time.Microsecond, 100*time.Microsecond)
	m := New(DefaultSeed)
	r := rand.New(rand.NewPCG(3, 4))
	for range 300 {
		n := 1 + r.Float64()*30
		_, total := e(n, 200, 200)
		m.Observe(Observation{Shape: Shape{PromptBytes: 1000, MaxTokens: 200}, Concurrency: n,
			PromptTokens: 200, OutputTokens: 200, Total: total})
	}
	for _, n := range []float64{2, 20} {
		_, want := e(n, 200, 200)
		if got := m.Predict(n, Shape{PromptBytes: 1000, MaxTokens: 200}, 0.95).Mean; !within(got, want, 0.1) {
			t.Errorf("Predict(%v).Mean = %v, want %v within 10%%", n, got, want)
		}
	}
}

func TestOutputShareAndTokensPerByte(t *testing.T) {
	e := batching(5*time.Millisecond, 200*time.Microsecond, 100*time.Microsecond)
	m := New(DefaultSeed)
	for range 200 {
		// Requests ask for 400 tokens and stop at 100; prompts are 0.25
		// tokens a byte.
		ttft, total := e(8, 250, 100)
		m.Observe(Observation{Shape: Shape{PromptBytes: 1000, MaxTokens: 400}, Concurrency: 8,
			PromptTokens: 250, OutputTokens: 100, Chunks: 100, TTFT: ttft, Total: total})
	}
	st := m.Status()
	if math.Abs(st.OutputShare-0.25) > 0.01 || math.Abs(st.TokensPerByte-0.25) > 0.01 {
		t.Errorf("output share %v, tokens per byte %v; want 0.25 and 0.25", st.OutputShare, st.TokensPerByte)
	}
	_, want := e(8, 250, 100)
	if got := m.Predict(8, Shape{PromptBytes: 1000, MaxTokens: 400}, 0.95).Mean; !within(got, want, 0.1) {
		t.Errorf("Predict(8) for max_tokens 400 = %v, want %v (a quarter of it used) within 10%%", got, want)
	}
}

func TestSpreadIsMeasured(t *testing.T) {
	e := batching(5*time.Millisecond, 200*time.Microsecond, 100*time.Microsecond)
	m := New(DefaultSeed)
	r := rand.New(rand.NewPCG(5, 6))
	// One request in ten takes twice as long: the 95th percentile of
	// time over prediction is about 2.
	for i := range 500 {
		ttft, total := e(10, 200, 200)
		if i%10 == 0 {
			total *= 2
		}
		f := 1 + 0.02*(2*r.Float64()-1)
		m.Observe(Observation{Shape: Shape{PromptBytes: 1000, MaxTokens: 200}, Concurrency: 10,
			PromptTokens: 200, OutputTokens: 200, Chunks: 200, TTFT: ttft, Total: time.Duration(float64(total) * f)})
	}
	p := m.Predict(10, Shape{PromptBytes: 1000, MaxTokens: 200}, 0.95)
	if r := p.Tail.Seconds() / p.Mean.Seconds(); r < 1.6 || r > 2.3 {
		t.Errorf("tail/mean = %.2f, want about 2 (one request in ten twice as long)", r)
	}
}

// TestLimitClosedLoop runs the limit against each engine as llmlabd does:
// the requests seen run at concurrencies up to the current limit, and the
// limit is chosen again from what they taught.
func TestLimitClosedLoop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		e      engine
		target time.Duration
		lo, hi int // where the limit must settle
	}{
		// TPOT 11.3 ms + 0.42 ms a sequence (the prior's card): 200 tokens
		// within 4 s at about 20.
		{"batching/4s", batching(11300*time.Microsecond, 422*time.Microsecond, 422*time.Microsecond), 4 * time.Second, 14, 24},
		// A card five times faster: the prior is left behind.
		{"fast batching/4s", batching(2*time.Millisecond, 80*time.Microsecond, 80*time.Microsecond), 4 * time.Second, 150, 260},
		// 4 slots at 1 ms a token: 0.2 s a request; the objective would
		// allow 16 in flight, the slots serve 4, and a slot engine needs
		// a request or two ready beyond them.
		{"4 slots/3.2s", slots(4, time.Millisecond), 3200 * time.Millisecond, 4, 8},
		{"8 slots/1.2s", slots(8, time.Millisecond), 1200 * time.Millisecond, 8, 14},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New(DefaultSeed)
			r := rand.New(rand.NewPCG(7, 8))
			limit := 8
			var seen []int
			for round := range 40 {
				feed(m, tc.e, r, 25, max(float64(limit)/2, 1), float64(limit), 0.05)
				limit = m.Limit(tc.target, 1, 512, 0.95)
				if round >= 30 {
					seen = append(seen, limit)
				}
			}
			if k, ok := m.Knee(); tc.name[0] != 'f' && tc.name[0] != 'b' && (!ok || k < tc.lo-1 || k > tc.lo+1) {
				t.Errorf("Knee() = %d, %v; want the slot count %d", k, ok, tc.lo)
			}
			for _, l := range seen {
				if l < tc.lo || l > tc.hi {
					t.Fatalf("the limit settled at %v in its last 10 rounds, want within [%d, %d]; model %+v", seen, tc.lo, tc.hi, m.Status())
				}
			}
		})
	}
}

func TestRemainingFollowsProgress(t *testing.T) {
	e := batching(5*time.Millisecond, 0, 0)
	m := New(DefaultSeed)
	feed(m, e, rand.New(rand.NewPCG(9, 10)), 200, 1, 4, 0)
	s := Shape{PromptBytes: 1000, MaxTokens: 200}
	// 150 of 200 tokens streamed: 50 steps of 5 ms left.
	if got := m.Remaining(2, s, 0, 150); !within(got, 250*time.Millisecond, 0.05) {
		t.Errorf("Remaining(150 of 200 tokens) = %v, want 250ms", got)
	}
	// Not streamed: the expected total less the time it has run.
	if got := m.Remaining(2, s, 500*time.Millisecond, 0); !within(got, 500*time.Millisecond, 0.05) {
		t.Errorf("Remaining(0.5 s of 1 s) = %v, want 500ms", got)
	}
	// Overdue: about to end, a step or so.
	if got := m.Remaining(2, s, 5*time.Second, 0); got > 10*time.Millisecond {
		t.Errorf("Remaining(overdue) = %v, want a step", got)
	}
}

func TestStateRoundTrip(t *testing.T) {
	e := batching(2*time.Millisecond, 100*time.Microsecond, 50*time.Microsecond)
	m := New(DefaultSeed)
	feed(m, e, rand.New(rand.NewPCG(11, 12)), 300, 1, 40, 0.05)
	s := Shape{PromptBytes: 1000, MaxTokens: 200}
	want := m.Predict(20, s, 0.95)
	n := New(DefaultSeed)
	if err := n.Restore(m.State()); err != nil {
		t.Fatal(err)
	}
	if got := n.Predict(20, s, 0.95); got != want {
		t.Errorf("restored Predict(20) = %+v, want %+v", got, want)
	}
	if got, want := n.Status(), m.Status(); got != want {
		t.Errorf("restored Status() = %+v, want %+v", got, want)
	}
	if got, want := n.Limit(time.Second, 1, 1000, 0.95), m.Limit(time.Second, 1, 1000, 0.95); got != want {
		t.Errorf("restored Limit = %d, want %d", got, want)
	}
	bad := m.State()
	bad.Spread = math.NaN()
	if err := n.Restore(bad); err == nil {
		t.Error("Restore accepted a NaN spread")
	}
}

// A knee, once seen, stays while nothing runs past it: admission keeps the
// engine below its slots, and evidence that faded with time alone would
// send the limit back into the engine's queue to find it again (measured
// in front of Ollama: a limit swinging between 6 and 101 on 4 slots).
func TestKneeStaysWhileNothingRunsPastIt(t *testing.T) {
	e := slots(4, time.Millisecond)
	m := New(DefaultSeed)
	r := rand.New(rand.NewPCG(13, 14))
	feed(m, e, r, 300, 1, 12, 0.05)
	if k, ok := m.Knee(); !ok || k < 3 || k > 5 {
		t.Fatalf("Knee() = %d, %v after running 1-12 on 4 slots, want about 4", k, ok)
	}
	feed(m, e, r, 3000, 1, 4, 0.05)
	if k, ok := m.Knee(); !ok || k < 3 || k > 5 {
		t.Fatalf("Knee() = %d, %v after 3000 requests below the slots, want it kept at about 4", k, ok)
	}
	if l := m.Limit(time.Minute, 1, 256, 0.95); l > 8 {
		t.Errorf("Limit = %d, want at most a quarter and one past the knee", l)
	}
}

// The limit grows only as answers come back at it: a quarter and one past
// the highest concurrency seen, min_inflight before any.
func TestLimitGrowsWithWhatWasSeen(t *testing.T) {
	e := batching(2*time.Millisecond, 80*time.Microsecond, 80*time.Microsecond)
	m := New(DefaultSeed)
	if got := m.Limit(time.Minute, 4, 256, 0.95); got != 4 {
		t.Errorf("a fresh model's Limit = %d, want min_inflight 4", got)
	}
	feed(m, e, rand.New(rand.NewPCG(15, 16)), 50, 8, 8, 0)
	if got := m.Limit(time.Minute, 4, 256, 0.95); got != 17 {
		t.Errorf("Limit after answers at 8 = %d, want 17", got)
	}
}

// The limit grows as soon as the engine starts a request at a new high,
// before any answer at it has come back.
func TestLimitGrowsWithWhatRan(t *testing.T) {
	m := New(DefaultSeed)
	m.FirstToken(4, 4, 0)
	if got := m.Limit(time.Minute, 4, 256, 0.95); got != 9 {
		t.Errorf("Limit after a first token at 4 = %d, want 9", got)
	}
	m.FirstToken(6, 6, 0)
	m.FirstToken(5, 5, 0)
	if got := m.Limit(time.Minute, 4, 256, 0.95); got != 13 {
		t.Errorf("Limit after first tokens at 6 and 5 = %d, want 13", got)
	}
}

// A request that waited inside a slot engine was dispatched with many in
// flight but streams beside only the slots: the limit grows with the
// second, not the first.
func TestLimitGrowsWithWhatRanAtOnce(t *testing.T) {
	m := New(DefaultSeed)
	for _, at := range []int{10, 21, 30, 43} {
		m.FirstToken(at, 4, time.Second)
	}
	if got := m.Limit(time.Minute, 4, 256, 0.95); got != 9 {
		t.Errorf("Limit after first tokens dispatched at 10-43 with 4 streaming = %d, want 9", got)
	}
}

// A step costs what it carries: learned from steps measured on 200-in and
// 200-out requests, the model predicts a 50-token answer behind 200-token
// prompts, whose steps carry four prompt tokens for each decode token.
// A time per token in sequences alone, fitted on the first mix, would
// predict about half of it.
func TestStepTokensCarryTheMix(t *testing.T) {
	step := func(tokens float64) float64 { return 0.005 + 0.0002*tokens }
	m := New(DefaultSeed)
	long := Shape{PromptBytes: 1000, MaxTokens: 200}
	for i := range 300 {
		m.Seen(long)
		n := float64(1 + i%40)
		m.ObserveStep(2*n, step(2*n)) // 200 in, 200 out: n decode and n prompt tokens a step
	}
	short := Shape{PromptBytes: 1000, MaxTokens: 50}
	for range 1000 { // the typical request is a recent average
		m.Seen(short)
	}
	m.Observe(Observation{Shape: short, Concurrency: 30, PromptTokens: 200, OutputTokens: 50, Chunks: 50,
		TTFT: 100 * time.Millisecond, Total: 100*time.Millisecond + seconds(49*step(150)), Sampled: true})
	want := seconds(49 * step(30*5))
	if got := m.Remaining(30, short, 0, 1); !within(got, want, 0.1) {
		t.Errorf("Remaining(30 in flight, 49 tokens left of 50) = %v, want %v within 10%%", got, want)
	}
}

// A state from before the step-token fit keeps its other learning, not its
// time per token, which meant something else.
func TestStateOfAnOtherDecodeBasis(t *testing.T) {
	m := New(DefaultSeed)
	feed(m, batching(2*time.Millisecond, 100*time.Microsecond, 50*time.Microsecond), rand.New(rand.NewPCG(3, 4)), 100, 1, 20, 0)
	s := m.State()
	s.DecodeBasis = ""
	n := New(DefaultSeed)
	if err := n.Restore(s); err != nil {
		t.Fatal(err)
	}
	if got, want := n.Status().TPOTSeconds, New(DefaultSeed).Status().TPOTSeconds; got != want {
		t.Errorf("TPOT after restoring a per-sequence fit = %v, want the prior's %v", got, want)
	}
	if n.Status().Observed != 100 {
		t.Errorf("Observed = %d, want 100 kept", n.Status().Observed)
	}
}

// A knee found holds for a while when the fit loses it, and goes after.
func TestKneeHoldsWhenTheFitLosesIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := New(DefaultSeed)
		feed(m, slots(4, time.Millisecond), rand.New(rand.NewPCG(15, 16)), 300, 1, 12, 0.05)
		k, ok := m.Knee()
		if !ok {
			t.Fatal("no knee after running 1-12 on 4 slots")
		}
		m.mu.Lock()
		m.knees = bins{} // the evidence gone: the fit finds nothing
		m.mu.Unlock()
		time.Sleep(kneeHold - time.Second)
		if got, ok := m.Knee(); !ok || got != k {
			t.Errorf("Knee() = %d, %v just within the hold, want %d kept", got, ok, k)
		}
		time.Sleep(2 * time.Second)
		if got, ok := m.Knee(); ok {
			t.Errorf("Knee() = %d past the hold with no evidence, want none", got)
		}
	})
}

// Other work on the card (SetContention) slows what the model predicts at
// once, and what the engine does beside it teaches the model the engine
// alone: when the other work stops, the predictions are the engine's own
// again without relearning.
func TestContentionScalesPredictionsNotTheFit(t *testing.T) {
	e := batching(2*time.Millisecond, 100*time.Microsecond, 50*time.Microsecond)
	m := New(DefaultSeed)
	r := rand.New(rand.NewPCG(3, 4))
	feed(m, e, r, 400, 1, 40, 0.02)
	shape := Shape{PromptBytes: 1000, MaxTokens: 200}
	alone := m.Predict(10, shape, 0.95).Mean
	limAlone := m.Limit(time.Second, 1, 1000, 0.95)

	// A process beside the engine takes half the GPU's time: the engine's
	// every step takes twice as long, and the model is told so.
	m.SetContention(2)
	if got := m.Predict(10, shape, 0.95).Mean; !within(got, 2*alone, 0.01) {
		t.Fatalf("Predict beside another process = %v, want twice %v", got, alone)
	}
	if lim := m.Limit(time.Second, 1, 1000, 0.95); lim >= limAlone*3/4 {
		t.Fatalf("Limit beside another process = %d, alone %d: want it well lower", lim, limAlone)
	}
	slowed := func(n float64, prompt, out int) (time.Duration, time.Duration) {
		ttft, total := e(n, prompt, out)
		return 2 * ttft, 2 * total
	}
	feed(m, slowed, r, 400, 1, 40, 0.02)
	for tokens := 1.0; tokens < 60; tokens += 10 {
		m.ObserveStep(tokens, 2*(0.002+tokens*0.0001))
	}
	if got := m.Predict(10, shape, 0.95).Mean; !within(got, 2*alone, 0.05) {
		t.Fatalf("Predict after learning beside it = %v, want %v within 5%%", got, 2*alone)
	}
	m.SetContention(1)
	if got := m.Predict(10, shape, 0.95).Mean; !within(got, alone, 0.05) {
		t.Fatalf("Predict once the other process stopped = %v, want the engine alone's %v within 5%%", got, alone)
	}
	if st := m.Status(); st.Contention != 1 {
		t.Fatalf("Status().Contention = %v, want 1", st.Contention)
	}
}

// NVML's factor assumes fair time slices; a compute-bound neighbour took
// far more on an H100 (docs/gpu.md). The answers that end beside it
// measure the real slowdown, which replaces the estimate; the fits, which
// describe the engine alone, learn nothing meanwhile, so when the other
// work stops (or a restart restores the state file) the predictions are
// the engine alone's.
func TestContentionMeasuredFromTheAnswers(t *testing.T) {
	e := batching(2*time.Millisecond, 100*time.Microsecond, 50*time.Microsecond)
	m := New(DefaultSeed)
	r := rand.New(rand.NewPCG(5, 6))
	feed(m, e, r, 400, 1, 40, 0.02)
	shape := Shape{PromptBytes: 1000, MaxTokens: 200}
	alone := m.Predict(10, shape, 0.95).Mean
	fits := func() string {
		st := m.State()
		return fmt.Sprint(st.Decode, st.TTFT, st.Bins, st.Ratios)
	}
	before := fits()

	m.SetContention(2)
	if got := m.Predict(10, shape, 0.95).Mean; !within(got, 2*alone, 0.01) {
		t.Fatalf("Predict before any answer beside the other work = %v, want NVML's twice %v", got, alone)
	}
	tenfold := func(n float64, prompt, out int) (time.Duration, time.Duration) {
		ttft, total := e(n, prompt, out)
		return 10 * ttft, 10 * total
	}
	feed(m, tenfold, r, 60, 1, 40, 0.02)
	for tokens := 1.0; tokens < 60; tokens += 10 {
		m.ObserveStep(tokens, 10*(0.002+tokens*0.0001))
	}
	if got := m.Predict(10, shape, 0.95).Mean; !within(got, 10*alone, 0.15) {
		t.Fatalf("Predict after answers ten times slower = %v, want %v within 15%%", got, 10*alone)
	}
	if st := m.Status(); st.Contention < 8.5 || st.Contention > 11.5 {
		t.Fatalf("Status().Contention = %.2f, want about 10 (measured)", st.Contention)
	}
	if during := fits(); during != before {
		t.Fatalf("the engine alone's fits and spread changed beside the other work:\nbefore %s\nduring %s", before, during)
	}
	m.SetContention(1)
	if got := m.Predict(10, shape, 0.95).Mean; !within(got, alone, 0.02) {
		t.Fatalf("Predict once the other work stopped = %v, want the engine alone's %v", got, alone)
	}
	// The next contention starts from NVML's estimate again.
	m.SetContention(3)
	if got := m.Predict(10, shape, 0.95).Mean; !within(got, 3*alone, 0.02) {
		t.Fatalf("Predict at the next contention = %v, want NVML's 3 x %v", got, alone)
	}
}
