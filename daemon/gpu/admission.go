package gpu

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// GiB formats bytes as GiB for messages.
func GiB(b uint64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }

// Utilization is the --gpu-memory-utilization that gives the engine budget
// bytes of a card of total bytes. A budget of 0 means "fraction of the
// card" and returns fraction. A budget the card cannot hold is an error
// with the numbers.
func Utilization(budget, total uint64, fraction float64) (float64, error) {
	if budget == 0 {
		return fraction, nil
	}
	if total == 0 {
		return 0, fmt.Errorf("the GPU reports no memory")
	}
	if budget > total {
		return 0, fmt.Errorf("gpu.memory_budget %s is more than the card's %s", GiB(budget), GiB(total))
	}
	u := float64(budget) / float64(total)
	// vLLM takes the fraction of the total; round down to four places so
	// the engine never takes more than the budget.
	return float64(int(u*10000)) / 10000, nil
}

// Refusal is a start that admission turned down; Reason is a metric label.
type Refusal struct {
	Reason  string // "gpu_memory", "budget"
	Message string
}

func (r *Refusal) Error() string { return r.Message }

// Admission guards engine starts with GPU readings: before a start it
// computes the engine's memory share (Env gives it to the engine) and
// checks that the memory is free; after a stop it waits until
// the engine's memory is released.
type Admission struct {
	Monitor *Monitor
	// Device is the GPU the engine runs on.
	Device int
	// Budget (bytes, 0: none) or Fraction of the card for the engine.
	Budget   uint64
	Fraction float64
	// ReleaseTimeout bounds the wait after a stop.
	ReleaseTimeout time.Duration
	Log            *slog.Logger
	// OnRefuse and OnRelease, when set, count refusals and release waits.
	OnRefuse  func(reason string)
	OnRelease func(took time.Duration, released bool)

	mu      sync.Mutex
	util    float64
	before  []uint32 // compute processes on the device before the start
	engine  []uint32 // those that appeared with the engine
	usedPre uint64   // memory used before the start
}

// Instrument counts refusals (llmlab_engine_start_refusals_total{reason})
// and release waits (llmlab_gpu_release_seconds,
// llmlab_gpu_release_timeouts_total) on reg.
func (a *Admission) Instrument(reg prometheus.Registerer) {
	refusals := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmlab_engine_start_refusals_total",
		Help: "Engine starts refused before they began, by reason (gpu_memory: the memory is taken; budget: the budget cannot be met)."}, []string{"reason"})
	release := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "llmlab_gpu_release_seconds",
		Help: "Time from the engine's exit to its GPU memory being released.", Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30}})
	timeouts := prometheus.NewCounter(prometheus.CounterOpts{Name: "llmlab_gpu_release_timeouts_total",
		Help: "Engine stops whose GPU memory was not released within gpu.release_timeout."})
	contention := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_gpu_contention_factor",
		Help: "How much the GPU's other compute processes slow the engine now: its steps take this many times as long as alone (1: nothing else runs)."},
		func() float64 { f, _ := a.Contention(); return f })
	reg.MustRegister(refusals, release, timeouts, contention)
	for _, r := range []string{"gpu_memory", "budget"} {
		refusals.WithLabelValues(r)
	}
	a.OnRefuse = func(reason string) { refusals.WithLabelValues(reason).Inc() }
	a.OnRelease = func(took time.Duration, ok bool) {
		if ok {
			release.Observe(took.Seconds())
		} else {
			timeouts.Inc()
		}
	}
}

// SetShare changes the engine's share for the starts to come (a reload).
func (a *Admission) SetShare(budget uint64, fraction float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.Budget, a.Fraction = budget, fraction
}

// Env is the engine's environment for the current start (for an engine run
// as a child process).
func (a *Admission) Env() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.util == 0 {
		return nil
	}
	return []string{fmt.Sprintf("LLMLAB_GPU_MEMORY_UTILIZATION=%g", a.util)}
}

// BeforeStart decides whether the engine may start now. Without GPU
// readings (no driver, a laptop with the simulator) it lets the start go
// ahead with the configured fraction, having nothing to check against.
func (a *Admission) BeforeStart(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s := a.Monitor.Fresh(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.util, a.before, a.engine, a.usedPre = a.Fraction, nil, nil, 0
	d, ok := s.Device(a.Device)
	if !s.Available || !ok {
		reason := s.Reason
		if s.Available {
			reason = fmt.Sprintf("no GPU %d (the machine has %d)", a.Device, len(s.Devices))
		}
		if a.Budget > 0 {
			return a.refuse("budget", fmt.Sprintf("gpu.memory_budget is set but the GPU cannot be read (%s)", reason))
		}
		a.Log.Info("starting the engine without GPU readings", "reason", reason)
		return nil
	}
	util, err := Utilization(a.Budget, d.MemoryTotal, a.Fraction)
	if err != nil {
		return a.refuse("budget", fmt.Sprintf("GPU %d (%s): %v", d.Index, d.Name, err))
	}
	need := uint64(util * float64(d.MemoryTotal))
	if d.MemoryFree < need {
		var holders []string
		for _, p := range d.Processes {
			holders = append(holders, fmt.Sprintf("PID %d (%s)", p.PID, GiB(p.UsedMemory)))
		}
		held := "by no compute process NVML can see"
		if len(holders) > 0 {
			held = "by " + strings.Join(holders, ", ")
		}
		return a.refuse("gpu_memory", fmt.Sprintf("GPU %d has %s free of %s; the engine needs %s (%.2f of the card); the memory is held %s",
			d.Index, GiB(d.MemoryFree), GiB(d.MemoryTotal), GiB(need), util, held))
	}
	a.util = util
	for _, p := range d.Processes {
		a.before = append(a.before, p.PID)
	}
	a.usedPre = d.MemoryUsed
	a.Log.Info("engine start admitted", "gpu", d.Index, "free", GiB(d.MemoryFree), "engine_share", util, "engine_bytes", GiB(need))
	return nil
}

func (a *Admission) refuse(reason, msg string) error {
	if a.OnRefuse != nil {
		a.OnRefuse(reason)
	}
	a.Log.Warn("engine start refused", "reason", reason, "detail", msg)
	return &Refusal{Reason: reason, Message: msg}
}

// NoteRunning records the engine's compute processes (those that appeared
// since the start); call it once the engine is ready.
func (a *Admission) NoteRunning(ctx context.Context) {
	s := a.Monitor.Fresh(ctx)
	d, ok := s.Device(a.Device)
	if !s.Available || !ok {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.engine = nil
	for _, p := range d.Processes {
		if !slices.Contains(a.before, p.PID) {
			a.engine = append(a.engine, p.PID)
		}
	}
}

// EngineMemory is the GPU memory the engine's compute processes hold in
// the latest reading (those NoteRunning recorded); false when there is no
// reading, no recorded process, or NVML reports none of their memory.
func (a *Admission) EngineMemory() (uint64, bool) {
	a.mu.Lock()
	engine := slices.Clone(a.engine)
	a.mu.Unlock()
	s := a.Monitor.Snapshot()
	d, ok := s.Device(a.Device)
	if !s.Available || !ok || len(engine) == 0 {
		return 0, false
	}
	var used uint64
	for _, p := range d.Processes {
		if slices.Contains(engine, p.PID) {
			used += p.UsedMemory
		}
	}
	return used, used > 0
}

// AfterStop waits, at most ReleaseTimeout, until the engine's memory is
// released: its compute processes are gone from the device and the memory
// in use is back to what it was before the start (within 2% of the card).
func (a *Admission) AfterStop(ctx context.Context) {
	a.mu.Lock()
	engine, usedPre := slices.Clone(a.engine), a.usedPre
	a.mu.Unlock()
	t0 := time.Now()
	deadline := t0.Add(a.ReleaseTimeout)
	for {
		s := a.Monitor.Fresh(ctx)
		d, ok := s.Device(a.Device)
		if !s.Available || !ok {
			return // nothing to wait for
		}
		if released(d, engine, usedPre) {
			took := time.Since(t0)
			a.Log.Info("engine's GPU memory released", "gpu", d.Index, "took", took, "free", GiB(d.MemoryFree))
			if a.OnRelease != nil {
				a.OnRelease(took, true)
			}
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			a.Log.Warn("engine's GPU memory not released in time", "gpu", d.Index, "waited", time.Since(t0),
				"used", GiB(d.MemoryUsed), "used_before_start", GiB(usedPre), "engine_pids", engine)
			if a.OnRelease != nil {
				a.OnRelease(time.Since(t0), false)
			}
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func released(d Device, engine []uint32, usedPre uint64) bool {
	for _, p := range d.Processes {
		if slices.Contains(engine, p.PID) {
			return false
		}
	}
	return d.MemoryUsed <= usedPre+d.MemoryTotal/50
}
