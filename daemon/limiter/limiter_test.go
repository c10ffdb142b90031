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

func TestAIMD(t *testing.T) {
	cfg := Config{Min: 4, Max: 200, Initial: 10, Target: 3 * time.Second}
	a := New(cfg)
	// Fast answers and demand beyond the limit: grow by 10%.
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(time.Second, 10)}, Signals{}); n != 11 || why != "demand" {
		t.Fatalf("fast with demand: %d %s", n, why)
	}
	// Near the target: grow by one.
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(2*time.Second, 10)}, Signals{}); n != 12 || why != "demand" {
		t.Fatalf("near the target: %d %s", n, why)
	}
	// No demand: keep.
	if n, why := a.Update(queue.Window{EngineTimes: times(time.Second, 10)}, Signals{}); n != 12 || why != "steady" {
		t.Fatalf("without demand: %d %s", n, why)
	}
	// Over the target: cut to 85%.
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(4*time.Second, 10)}, Signals{}); n != 10 || why != "latency" {
		t.Fatalf("slow: %d %s", n, why)
	}
	// The engine queues internally: cut to 90% whatever the latency.
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(time.Second, 10)}, Signals{Known: true, Waiting: 3, KVUsage: 0.5}); n != 9 || why != "engine_queueing" {
		t.Fatalf("engine queueing: %d %s", n, why)
	}
	// One waiting request at a half-full cache is a request between steps.
	if _, why := a.Update(queue.Window{EngineTimes: times(time.Second, 10)}, Signals{Known: true, Waiting: 1, KVUsage: 0.5}); why == "engine_queueing" {
		t.Fatal("a transient waiting request counted as queueing")
	}
	// Stale readings: hold.
	before := a.Limit()
	if n, why := a.Update(queue.Window{Blocked: true, EngineTimes: times(time.Second, 10)}, Signals{Known: true, Stale: true}); n != before || why != "stale" {
		t.Fatalf("stale: %d %s", n, why)
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

// Against a model engine whose latency grows with concurrency past a
// knee, the limit settles where the latency meets the target, and holds
// there.
func TestConvergesOnModelEngine(t *testing.T) {
	// Throughput saturates at 40 req/s; latency = max(1 s, L/40 s).
	latency := func(l int) time.Duration {
		return max(time.Second, time.Duration(float64(l)/40*float64(time.Second)))
	}
	a := New(Config{Min: 4, Max: 512, Target: 3 * time.Second})
	var seen []int
	for range 120 {
		l := a.Limit()
		a.Update(queue.Window{Blocked: true, EngineTimes: times(latency(l), 20)}, Signals{Known: true, KVUsage: 0.3})
		seen = append(seen, a.Limit())
	}
	// At the target, L = 3 s x 40/s = 120; the last minute stays near it.
	for _, l := range seen[60:] {
		if l < 95 || l > 125 {
			t.Fatalf("limit %d in the last minute (all: %v), want about 120", l, seen)
		}
	}
}
