package limiter

import (
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

func TestLaw(t *testing.T) {
	a := New(Config{Min: 4, Max: 200, Initial: 10, Target: 3 * time.Second})
	// Far below the target with demand: up by the 50% cap.
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(time.Second, 10)}, Signals{}); n != 15 || why != "demand" {
		t.Fatalf("fast with demand: %d %s", n, why)
	}
	// A little below: up in proportion, at least one.
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(2900*time.Millisecond, 10)}, Signals{}); n != 16 || why != "demand" {
		t.Fatalf("near the target: %d %s", n, why)
	}
	// No demand: keep.
	if n, why := a.Update(queue.Window{EngineTimes: times(time.Second, 10)}, Signals{}); n != 16 || why != "steady" {
		t.Fatalf("without demand: %d %s", n, why)
	}
	// Within 3% of the target: keep.
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(3050*time.Millisecond, 10)}, Signals{}); n != 16 || why != "steady" {
		t.Fatalf("at the target: %d %s", n, why)
	}
	// Over the target: down in proportion (4 s against 3 s: x0.875).
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(4*time.Second, 10)}, Signals{}); n != 14 || why != "latency" {
		t.Fatalf("slow: %d %s", n, why)
	}
	// The engine queues internally: cut to 90% whatever the latency.
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(time.Second, 10)}, Signals{Known: true, Waiting: 3, KVUsage: 0.5}); n != 12 || why != "engine_queueing" {
		t.Fatalf("engine queueing: %d %s", n, why)
	}
	// One waiting request at a half-full cache is a request between steps.
	if _, why := a.Update(queue.Window{EngineTimes: times(time.Second, 10)}, Signals{Known: true, Waiting: 1, KVUsage: 0.5}); why == "engine_queueing" {
		t.Fatal("a transient waiting request counted as queueing")
	}
	// Stale readings, or nothing finished: hold.
	before := a.Limit()
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(time.Second, 10)}, Signals{Known: true, Stale: true}); n != before || why != "stale" {
		t.Fatalf("stale: %d %s", n, why)
	}
	if n, why := a.Update(queue.Window{Blocked: true}, Signals{}); n != before || why != "no_samples" {
		t.Fatalf("no samples: %d %s", n, why)
	}
	// Bounds.
	for range 100 {
		a.Update(queue.Window{Blocked: true, EngineTimes: times(10*time.Second, 10)}, Signals{})
	}
	if a.Limit() != 4 {
		t.Fatalf("floor: %d", a.Limit())
	}
	for range 200 {
		a.Update(queue.Window{Blocked: true, EngineTimes: times(time.Millisecond, 10)}, Signals{})
	}
	if a.Limit() != 200 {
		t.Fatalf("ceiling: %d", a.Limit())
	}
}

// Against a model engine whose latency grows linearly with concurrency
// past a knee, the limit settles where the latency meets the target and
// stays there, without a saw-tooth.
func TestConvergesOnModelEngine(t *testing.T) {
	// Throughput saturates at 40 req/s; latency = max(1 s, L/40 s).
	latency := func(l int) time.Duration {
		return max(time.Second, time.Duration(float64(l)/40*float64(time.Second)))
	}
	a := New(Config{Min: 4, Max: 512, Target: 3 * time.Second})
	var seen []int
	for range 60 {
		l := a.Limit()
		a.Update(queue.Window{Blocked: true, EngineTimes: times(latency(l), 20)}, Signals{Known: true, KVUsage: 0.3})
		seen = append(seen, a.Limit())
	}
	// At the target, L = 3 s x 40/s = 120; the last half stays within 5%.
	for _, l := range seen[30:] {
		if l < 114 || l > 126 {
			t.Fatalf("limit %d in the last half (all: %v), want 120 +- 5%%", l, seen)
		}
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
