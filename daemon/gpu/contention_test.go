package gpu

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// samples are n sample periods from t0 (µs apart by 100 ms) in which each
// PID ran its SM share (percent).
func samples(t0 uint64, n int, share map[uint32]uint32) []nvml.ProcessUtilizationSample {
	var out []nvml.ProcessUtilizationSample
	for i := range n {
		for pid, sm := range share {
			out = append(out, nvml.ProcessUtilizationSample{Pid: pid, TimeStamp: t0 + uint64(i)*100_000 + uint64(pid), SmUtil: sm})
		}
	}
	return out
}

// The engine's steps slow by the share of the SMs other processes take,
// as NVML's per-process samples show it, and by no more than the
// time-slicing among the busy contexts allows; nothing else on the card,
// or an engine not known yet, is no slowdown.
func TestContention(t *testing.T) {
	c := &card{total: 16 * gib, used: 1 * gib, procs: []nvml.ProcessInfo{{Pid: 777, UsedGpuMemory: 1 * gib}}}
	m, _ := runEvery(t, c.lib(), time.Hour)
	ctx := context.Background()
	a, _ := newAdmission(t, m, 4*gib)
	if err := a.BeforeStart(ctx); err != nil {
		t.Fatal(err)
	}
	c.set(func(c *card) {
		c.procs = append(c.procs, nvml.ProcessInfo{Pid: 100, UsedGpuMemory: 4 * gib})
		c.samples = samples(1_000_000, 5, map[uint32]uint32{777: 60})
	})
	m.Fresh(ctx)
	if f, _ := a.Contention(); f != 1 {
		t.Fatalf("before the engine is known to run: contention %v, want 1", f)
	}
	a.NoteRunning(ctx) // the engine is PID 100; this reading takes the samples so far

	check := func(what string, s []nvml.ProcessUtilizationSample, wantFactor, wantForeign float64) {
		t.Helper()
		c.set(func(c *card) { c.samples = append(c.samples, s...) })
		m.Fresh(ctx)
		f, foreign := a.Contention()
		if math.Abs(f-wantFactor) > 0.01 || math.Abs(foreign-wantForeign) > 0.01 {
			t.Fatalf("%s: contention %.3f (others' share %.3f), want %.3f (%.3f)", what, f, foreign, wantFactor, wantForeign)
		}
	}
	// Both compute, time-sliced: the other took 40% of the time, so the
	// engine's steps take 1/0.6 as long.
	check("another process at 40% beside the engine", samples(2_000_000, 10, map[uint32]uint32{100: 55, 777: 40}), 1/0.6, 0.4)
	// Only its samples since the last reading count: none new, none busy.
	check("the other process idle since", nil, 1, 0)
	// Idle in half the periods: half its share.
	check("the other busy in half the periods", append(samples(3_000_000, 10, map[uint32]uint32{100: 50}),
		samples(4_000_000, 10, map[uint32]uint32{777: 50, 100: 50})...), 1/0.75, 0.25)
	// Alone on the card it takes nearly all of it; beside a computing
	// engine it could take only half: twice as long, not a hundredfold.
	check("a busy process beside an idle engine", samples(5_000_000, 10, map[uint32]uint32{777: 99}), 2, 0.99)
	// Two busy processes: the engine gets one slice in three.
	c.set(func(c *card) { c.procs = append(c.procs, nvml.ProcessInfo{Pid: 778, UsedGpuMemory: gib}) })
	check("two busy processes", samples(6_000_000, 10, map[uint32]uint32{777: 45, 778: 45, 100: 10}), 3, 0.9)
	// The engine alone.
	check("the engine alone", samples(7_000_000, 10, map[uint32]uint32{100: 90}), 1, 0)
}

// A device that does not report per-process utilisation is no slowdown.
func TestContentionUnsupported(t *testing.T) {
	c := &card{total: 16 * gib, used: 1 * gib, noProcessUtil: true}
	m, _ := runEvery(t, c.lib(), time.Hour)
	ctx := context.Background()
	a, _ := newAdmission(t, m, 4*gib)
	if err := a.BeforeStart(ctx); err != nil {
		t.Fatal(err)
	}
	c.set(func(c *card) {
		c.procs = []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: 4 * gib}, {Pid: 777, UsedGpuMemory: gib}}
		c.samples = samples(1_000_000, 5, map[uint32]uint32{777: 60})
	})
	a.NoteRunning(ctx)
	m.Fresh(ctx)
	if d, _ := m.Snapshot().Device(0); d.ProcessUtilOK {
		t.Fatal("the reading claims per-process utilisation the device did not give")
	}
	if f, _ := a.Contention(); f != 1 {
		t.Fatalf("contention %v without per-process readings, want 1", f)
	}
}
