package limiter

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/queue"
)

func times(d time.Duration, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = d
	}
	return out
}

// engine is a model engine for the law: the time a request holds its
// slot at a given number in flight.
type engine func(inflight int) time.Duration

// slots is a fixed-slot engine (Ollama, llama.cpp): n requests run at once
// in each, the rest wait inside it, so past n throughput is flat at
// n/each and time grows with the limit.
func slots(n int, each time.Duration) engine {
	return func(l int) time.Duration {
		return time.Duration(float64(each) * math.Max(1, float64(l)/float64(n)))
	}
}

// batching is a continuous-batching engine (vLLM): every step serves all
// in flight, and a step costs base plus perSeq for each of them, so
// throughput grows with concurrency while each request's time does too.
func batching(steps int, base, perSeq time.Duration) engine {
	return func(l int) time.Duration {
		return time.Duration(steps) * (base + time.Duration(l)*perSeq)
	}
}

// drive runs the law for n windows of two seconds against e with demand
// beyond any limit, and returns the limit after each.
func drive(a *Law, e engine, n int) []int {
	var seen []int
	at := time.Unix(1e9, 0)
	for range n {
		l := a.Limit()
		start := at
		at = at.Add(2 * time.Second)
		a.Update(queue.Window{Blocked: true, BlockedFor: 2 * time.Second, AvgInflight: float64(l), Start: start, End: at,
			EngineTimes: times(e(l), 20)}, Signals{})
		seen = append(seen, a.Limit())
	}
	return seen
}

func TestLaw(t *testing.T) {
	a := New(Config{Min: 4, Max: 200, Initial: 10, Target: 3 * time.Second})
	at := time.Unix(1e9, 0)
	win := func(blocked bool, d time.Duration) queue.Window {
		at = at.Add(10 * time.Second) // past any settling
		return queue.Window{Blocked: blocked, EngineTimes: times(d, 10), Start: at.Add(-time.Second), End: at}
	}
	// Far below the target with demand: up by the 50% cap.
	if n, why := a.Update(win(true, time.Second), Signals{}); n != 15 || why != "demand" {
		t.Fatalf("fast with demand: %d %s", n, why)
	}
	// A little below: up in proportion, at least one.
	if n, why := a.Update(win(true, 2900*time.Millisecond), Signals{}); n != 16 || why != "demand" {
		t.Fatalf("near the target: %d %s", n, why)
	}
	// No demand: keep.
	if n, why := a.Update(win(false, time.Second), Signals{}); n != 16 || why != "steady" {
		t.Fatalf("without demand: %d %s", n, why)
	}
	// Within 3% of the target: keep.
	if n, why := a.Update(win(true, 3050*time.Millisecond), Signals{}); n != 16 || why != "steady" {
		t.Fatalf("at the target: %d %s", n, why)
	}
	// Over the target: down in proportion (4 s against 3 s: x0.875).
	if n, why := a.Update(win(true, 4*time.Second), Signals{}); n != 14 || why != "latency" {
		t.Fatalf("slow: %d %s", n, why)
	}
	// The engine queues internally: cut to 90% whatever the latency.
	if n, why := a.Update(win(true, time.Second), Signals{Known: true, Waiting: 3, KVUsage: 0.5}); n != 12 || why != "engine_queueing" {
		t.Fatalf("engine queueing: %d %s", n, why)
	}
	// Another client's queue in the engine, with none of our work there:
	// not ours to relieve.
	if n, why := a.Update(queue.Window{}, Signals{Known: true, Waiting: 50, KVUsage: 0.5}); n != 12 || why == "engine_queueing" {
		t.Fatalf("engine queueing with no work of ours: %d %s", n, why)
	}
	// One waiting request at a half-full cache is a request between steps.
	if _, why := a.Update(win(false, time.Second), Signals{Known: true, Waiting: 1, KVUsage: 0.5}); why == "engine_queueing" {
		t.Fatal("a transient waiting request counted as queueing")
	}
	// Stale readings, or nothing finished: hold.
	before := a.Limit()
	if n, why := a.Update(win(true, time.Second), Signals{Known: true, Stale: true}); n != before || why != "stale" {
		t.Fatalf("stale: %d %s", n, why)
	}
	if n, why := a.Update(queue.Window{Blocked: true}, Signals{}); n != before || why != "no_samples" {
		t.Fatalf("no samples: %d %s", n, why)
	}
	// Bounds.
	for range 100 {
		a.Update(win(true, 10*time.Second), Signals{})
	}
	if a.Limit() != 4 {
		t.Fatalf("floor: %d", a.Limit())
	}
	for range 200 {
		a.Update(win(true, time.Millisecond), Signals{})
	}
	if a.Limit() != 200 {
		t.Fatalf("ceiling: %d", a.Limit())
	}
}

// After a change, windows whose requests started before it are skipped.
func TestSettlesAfterAChange(t *testing.T) {
	a := New(Config{Min: 1, Max: 100, Initial: 10, Target: 10 * time.Second})
	at := time.Unix(1e9, 0)
	w := queue.Window{Blocked: true, AvgInflight: 10, Start: at, End: at.Add(time.Second), EngineTimes: times(3*time.Second, 10)}
	if n, why := a.Update(w, Signals{}); n != 15 || why != "demand" {
		t.Fatalf("first: %d %s", n, why)
	}
	w.Start, w.End = w.End, w.End.Add(time.Second) // 1 s after a change, requests take 3 s
	if n, why := a.Update(w, Signals{}); n != 15 || why != "settle" {
		t.Fatalf("a window of requests from before the change: %d %s, want 15 settle", n, why)
	}
	// A window that ends after the change settled but began before it
	// holds early completions at the old limit's times: skipped too.
	w.Start, w.End = at.Add(3500*time.Millisecond), at.Add(4500*time.Millisecond)
	if n, why := a.Update(w, Signals{}); n != 15 || why != "settle" {
		t.Fatalf("a window that began before the change settled: %d %s, want 15 settle", n, why)
	}
	w.Start, w.End = w.End, w.End.Add(time.Second)
	if _, why := a.Update(w, Signals{}); why == "settle" {
		t.Fatalf("a window wholly after the change settled: %s, want a decision", why)
	}
}

// risingLoadSim is the simulator of TestAdaptiveConcurrencyRisingLoad
// (cmd/llmlabd): its time per request by requests in flight, as measured
// there; from 8 to 11 in flight, throughput grows by half the rise
// (elasticity 0.5).
func risingLoadSim(l int) time.Duration {
	measured := map[int]time.Duration{6: 450, 7: 490, 8: 530, 9: 570, 10: 600, 11: 620, 12: 640, 13: 660, 14: 680}
	if d, ok := measured[l]; ok {
		return d * time.Millisecond
	}
	return (680 + 20*time.Duration(l-14)) * time.Millisecond
}

// The window in which demand rises past capacity is no base for a probe:
// its completions ran beside fewer requests than its average in flight,
// so Little's law overstates its throughput, and a probe judged against it
// finds a knee on an engine whose throughput still grows. The figures are
// the simulator's in TestAdaptiveConcurrencyRisingLoad (cmd/llmlabd), where
// 160 clients arriving left the limit at 8 with the engine at 0.53 s of an
// 0.8 s target.
func TestNoKneeFromTheRiseOfDemand(t *testing.T) {
	e := risingLoadSim
	a := New(Config{Min: 2, Max: 256, Initial: 8, Target: 800 * time.Millisecond})
	at := time.Unix(1e9, 0)
	var reasons []string
	window := func(w queue.Window) {
		w.Start, w.End = at, at.Add(time.Second)
		at = w.End
		_, why := a.Update(w, Signals{})
		reasons = append(reasons, why)
	}
	// Six clients, no wait for a slot.
	for range 3 {
		window(queue.Window{AvgInflight: 6, EngineTimes: times(e(6), 13)})
	}
	// 160 clients arrive: admission refuses thousands, the engine fills
	// during the window, and what finished had run beside five others.
	window(queue.Window{Blocked: true, BlockedFor: 600 * time.Millisecond, Refused: 8000, AvgInflight: 7.17,
		EngineTimes: append(times(e(6), 6), times(410*time.Millisecond, 8)...)})
	// In the next window, half of what finishes had started before.
	l := a.Limit()
	window(queue.Window{Blocked: true, BlockedFor: time.Second, Refused: 8000, AvgInflight: float64(l),
		EngineTimes: append(times(e(6), 8), times(e(l), 8)...)})
	for range 12 {
		l := a.Limit()
		window(queue.Window{Blocked: true, BlockedFor: time.Second, Refused: 8000, AvgInflight: float64(l), EngineTimes: times(e(l), 16)})
	}
	// This engine's elasticity stays above 0.4 to beyond the target (20 in
	// flight): no knee.
	if slices.Contains(reasons, "knee") || a.Limit() <= 10 {
		t.Fatalf("limit %d after the rise (reasons %v): want above 10 and no knee, throughput grows by half the rise from 8 to 11", a.Limit(), reasons)
	}
}

// One probe's windows can come out slow by chance (a busy host, a burst of
// long prompts): a knee is called only when a second probe agrees.
func TestOneSlowProbeIsNoKnee(t *testing.T) {
	e := risingLoadSim // elasticity 0.45 from 8 to 10
	a := New(Config{Min: 2, Max: 256, Initial: 8, Target: 800 * time.Millisecond})
	at := time.Unix(1e9, 0)
	var reasons []string
	probes, last := 0, 8
	for range 30 {
		l := a.Limit()
		if l > 8 && last == 8 {
			probes++
		}
		last = l
		d := e(l)
		if l > 8 && probes == 1 {
			d = d * 108 / 100 // the first probe's windows, 8% slow
		}
		_, why := a.Update(queue.Window{Blocked: true, BlockedFor: time.Second, AvgInflight: float64(l),
			Start: at, End: at.Add(time.Second), EngineTimes: times(d, 16)}, Signals{})
		at = at.Add(time.Second)
		reasons = append(reasons, why)
	}
	if slices.Contains(reasons, "knee") || a.Limit() <= 10 {
		t.Fatalf("limit %d (reasons %v): want above 10 and no knee from one slow probe", a.Limit(), reasons)
	}
}

// A fixed-slot engine: past its slots nothing is gained. The limit finds
// the slot count without any engine metric and stays near it, though the
// latency target alone would allow three times as many.
func TestFindsTheKneeOfASlotEngine(t *testing.T) {
	e := slots(4, 250*time.Millisecond) // 16 req/s at most
	a := New(Config{Min: 1, Max: 64, Initial: 2, Target: 800 * time.Millisecond})
	seen := drive(a, e, 120)
	over := 0
	for _, l := range seen[20:] {
		if l > 6 {
			t.Fatalf("limit %d on a 4-slot engine (all: %v)", l, seen)
		}
		if l != 4 {
			over++
		}
	}
	// Probes above and below the knee are brief.
	if over > len(seen[20:])/4 {
		t.Fatalf("limit away from the 4 slots in %d of %d windows: %v", over, len(seen[20:]), seen)
	}
	// Started far above the knee (a limit kept from another engine), it
	// comes down to it.
	a = New(Config{Min: 1, Max: 64, Initial: 12, Target: 800 * time.Millisecond})
	seen = drive(a, e, 200)
	if l := seen[len(seen)-1]; l < 4 || l > 5 {
		t.Fatalf("from 12: limit %d at the end, want 4 or 5 (all: %v)", l, seen)
	}
}

// A continuous-batching engine whose throughput still grows at the target:
// the limit settles where the time meets the target, without a saw-tooth.
func TestConvergesOnABatchingEngine(t *testing.T) {
	// 200 steps of 10 ms + 0.5 ms per sequence: 2 s + 0.1 s per request in
	// flight; the 3 s target is met at 10.
	e := batching(200, 10*time.Millisecond, 500*time.Microsecond)
	a := New(Config{Min: 1, Max: 512, Target: 3 * time.Second})
	seen := drive(a, e, 80)
	away := 0
	for _, l := range seen[40:] {
		if l > 11 {
			t.Fatalf("limit %d in the last half (all: %v), want at most 11", l, seen)
		}
		if l < 9 {
			away++ // a probe below
		}
	}
	// A probe below lasts the engine's time (3 s) to settle plus two
	// windows to judge, four windows in all, once per ten held: below 9 a
	// quarter of the time at most.
	if away > len(seen[40:])/4 {
		t.Fatalf("limit below 9 in %d of %d windows (all: %v): probes below should be brief", away, len(seen[40:]), seen)
	}
	// A larger target meets throughput that no longer grows: 200 steps of
	// 1 ms + 1 ms per sequence, at 5 s (L = 24), elasticity 1/25.
	e = batching(200, time.Millisecond, time.Millisecond)
	a = New(Config{Min: 1, Max: 512, Target: 5 * time.Second})
	seen = drive(a, e, 120)
	for _, l := range seen[60:] {
		if l > 24 {
			t.Fatalf("limit %d in the last half (all: %v), want at most 24 (the target)", l, seen)
		}
	}
}

// When admission refuses early, the queue can be empty most of the time
// though demand is twice the capacity: capacity refusals count as demand
// beyond it, and the knee of a slot engine is found all the same.
func TestKneeWithRefusalsInsteadOfAQueue(t *testing.T) {
	e := slots(4, 250*time.Millisecond)
	a := New(Config{Min: 1, Max: 64, Initial: 2, Target: 800 * time.Millisecond})
	at := time.Unix(1e9, 0)
	var seen []int
	for range 120 {
		l := a.Limit()
		start := at
		at = at.Add(2 * time.Second)
		a.Update(queue.Window{Blocked: true, BlockedFor: 100 * time.Millisecond, Refused: 7, AvgInflight: float64(l),
			Start: start, End: at, EngineTimes: times(e(l), 20)}, Signals{})
		seen = append(seen, a.Limit())
	}
	over := 0
	for _, l := range seen[20:] {
		if l > 6 {
			over++
		}
	}
	if over > len(seen[20:])/4 {
		t.Fatalf("limit above 6 in %d of %d windows on a 4-slot engine (all: %v)", over, len(seen[20:]), seen)
	}
}

// Below the engine's capacity, throughput is the demand, whatever the
// limit: requests that wait for a slot only now and then say nothing about
// a knee, and no probe is judged by them.
func TestNoKneeFromDemand(t *testing.T) {
	a := New(Config{Min: 1, Max: 64, Initial: 4, Target: 2 * time.Second})
	at := time.Unix(1e9, 0)
	for range 60 {
		l := a.Limit()
		start := at
		at = at.Add(2 * time.Second)
		// 6 req/s offered to a 4-slot engine of 16 req/s: 1.5 in flight,
		// a slot waited for a quarter of the time.
		_, why := a.Update(queue.Window{Blocked: true, BlockedFor: 500 * time.Millisecond, AvgInflight: math.Min(float64(l), 1.5),
			Start: start, End: at, EngineTimes: times(250*time.Millisecond, 12)}, Signals{})
		if why == "knee" || why == "probe" || why == "knee_hold" {
			t.Fatalf("reason %q at a demand below capacity (limit %d)", why, a.Limit())
		}
	}
}

// Without a latency target (no objective), the knee alone bounds it.
func TestNoTargetStopsAtTheKnee(t *testing.T) {
	a := New(Config{Min: 1, Max: 256, Initial: 1})
	seen := drive(a, slots(8, 100*time.Millisecond), 120)
	over := 0
	for _, l := range seen[40:] {
		if l > 10 {
			over++ // a probe above
		}
	}
	if over > len(seen[40:])/10 {
		t.Fatalf("limit above 10 in %d of %d windows with no target on an 8-slot engine (all: %v)", over, len(seen[40:]), seen)
	}
	if l := seen[len(seen)-1]; l < 7 {
		t.Fatalf("limit %d at the end, want about the 8 slots (all: %v)", l, seen)
	}
}

func TestSaturated(t *testing.T) {
	for _, tc := range []struct {
		s    Signals
		want bool
	}{
		{Signals{}, false}, // no metrics: nothing to act on
		{Signals{Known: true, Waiting: 0, KVUsage: 0.99}, false},
		{Signals{Known: true, Waiting: 3, KVUsage: 0.5}, false}, // between steps
		{Signals{Known: true, Waiting: 1, KVUsage: 0.96}, true},
		{Signals{Known: true, Stale: true}, true}, // stale counts as saturated
	} {
		if got := tc.s.Saturated(); got != tc.want {
			t.Errorf("%+v: Saturated %v, want %v", tc.s, got, tc.want)
		}
	}
}
