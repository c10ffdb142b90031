// Package limiter finds the engine's in-flight limit at run time
// (queue.concurrency = "adaptive"), so that an operator need not tune
// max_inflight against vLLM's --max-num-seqs by hand.
//
// The control law is proportional to the engine's latency against a
// target, bounded by the engine's own signals. Windows of completions are
// gathered until at least MinSamples requests have finished (or five
// intervals have passed), then:
//
//   - the engine queues internally (vllm:num_requests_waiting at least 2
//     and a tenth of the limit, or any waiting with the KV cache at 95%):
//     the limit exceeds what the engine can run; cut it to 90% at once;
//   - the engine's readings are stale: hold (the queue stops dispatching
//     meanwhile);
//   - otherwise, with r = Target / (90th percentile of the time requests
//     held their slots): above the target (r < 0.97) the limit is
//     multiplied by 1 + (r - 1)/2, at least 0.8; below it (r > 1.03) and
//     with requests waiting for a slot (demand beyond the limit), by the
//     same factor, at most 1.2 (1.5 while r > 1.5) and at least one more;
//     else it stays.
//
// A continuous-batching engine's time per request grows about linearly
// with its concurrency while its throughput flattens, so the limit settles
// where the time meets the target without the saw-tooth of AIMD, and
// requests are served as fast as the objective allows with as many in the
// engine as that permits. Target defaults to 90% of the latency
// objective: goodput is highest with the engine's time just inside it.
package limiter

import (
	"context"
	"log/slog"
	"math"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/daemon/queue"
)

// Config bounds and paces the limit.
type Config struct {
	Min, Max int
	// Initial is the starting limit (a limit kept from an earlier run, or
	// Min).
	Initial  int
	Target   time.Duration
	Interval time.Duration
}

// Signals are the engine's own readings.
type Signals struct {
	// Known is false when the engine serves no metrics (nothing to act on).
	Known bool
	// Stale is true when readings stopped arriving from a ready engine.
	Stale   bool
	Waiting float64
	KVUsage float64
}

// Saturated reports whether the engine cannot usefully take more work now:
// it queues internally with its KV cache full, or its readings are stale.
func (s Signals) Saturated() bool {
	return s.Known && (s.Stale || (s.Waiting > 0 && s.KVUsage >= 0.95))
}

// AIMD is the control law; Update is pure and tested on its own.
type AIMD struct {
	cfg   Config
	limit float64
}

// New returns the control law at its initial limit.
func New(cfg Config) *AIMD {
	if cfg.Min < 1 {
		cfg.Min = 1
	}
	if cfg.Max < cfg.Min {
		cfg.Max = cfg.Min
	}
	start := cfg.Initial
	if start == 0 {
		start = cfg.Min
	}
	return &AIMD{cfg: cfg, limit: float64(min(max(start, cfg.Min), cfg.Max))}
}

// Limit is the current limit.
func (a *AIMD) Limit() int { return int(a.limit) }

// MinSamples is how many completions a decision needs.
const MinSamples = 8

// Update folds one window into the limit and says why it moved.
func (a *AIMD) Update(w queue.Window, s Signals) (int, string) {
	p90, n := percentile(w.EngineTimes, 0.9)
	reason := "steady"
	switch {
	case s.Known && s.Stale:
		reason = "stale"
	case s.Known && ((s.Waiting >= 2 && s.Waiting >= a.limit/10) || (s.Waiting > 0 && s.KVUsage >= 0.95)):
		a.limit *= 0.9
		reason = "engine_queueing"
	case n == 0:
		if w.Blocked {
			// Nothing finished yet but requests wait: the engine is slow to
			// answer at all, which is no sign of room.
			reason = "no_samples"
		}
	default:
		r := float64(a.cfg.Target) / float64(max(p90, time.Millisecond))
		f := 1 + (r-1)/2
		switch {
		case r < 0.97:
			a.limit *= math.Max(f, 0.8)
			reason = "latency"
		case r > 1.03 && w.Blocked:
			// Far below the target, climb fast (a cold limit on a slow
			// card would otherwise take minutes); near it, gently.
			ceiling := 1.2
			if r > 1.5 {
				ceiling = 1.5
			}
			a.limit = math.Max(a.limit*math.Min(f, ceiling), a.limit+1)
			reason = "demand"
		}
	}
	a.limit = math.Min(math.Max(a.limit, float64(a.cfg.Min)), float64(a.cfg.Max))
	return int(a.limit), reason
}

func percentile(d []time.Duration, q float64) (time.Duration, int) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))], len(s)
}

// Queue is what the limiter drives (the gateway's queue).
type Queue interface {
	TakeWindow() queue.Window
	SetLimit(n int)
}

// Limiter runs the control law against a queue.
type Limiter struct {
	law     *AIMD
	every   time.Duration
	log     *slog.Logger
	gauge   prometheus.Gauge
	changes *prometheus.CounterVec
}

// NewLimiter returns a limiter; its series go to reg.
func NewLimiter(cfg Config, reg prometheus.Registerer, log *slog.Logger) *Limiter {
	l := &Limiter{law: New(cfg), every: cfg.Interval, log: log,
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "llmlab_adaptive_limit",
			Help: "The in-flight limit the adaptive concurrency control has set."}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmlab_adaptive_updates_total",
			Help: "Adaptive limit updates, by reason (demand, latency, engine_queueing, stale, no_samples, steady)."}, []string{"reason"})}
	if l.every <= 0 {
		l.every = time.Second
	}
	reg.MustRegister(l.gauge, l.changes)
	// Every reason is a series from the start, so dashboards and alerts
	// see zeros rather than gaps.
	for _, r := range []string{"demand", "latency", "engine_queueing", "stale", "no_samples", "steady"} {
		l.changes.WithLabelValues(r)
	}
	l.gauge.Set(float64(l.law.Limit()))
	return l
}

// Limit is the current limit.
func (l *Limiter) Limit() int { return l.law.Limit() }

// Seed starts from a limit kept from an earlier run (0: keep); call it
// before Run.
func (l *Limiter) Seed(n int) {
	if n > 0 {
		l.law.limit = math.Min(math.Max(float64(n), float64(l.law.cfg.Min)), float64(l.law.cfg.Max))
		l.gauge.Set(float64(l.law.Limit()))
	}
}

// Run updates q's limit every interval from its window and the engine's
// signals until ctx ends. active reports whether the engine is ready
// (windows of a stopped or starting engine say nothing about it).
func (l *Limiter) Run(ctx context.Context, q Queue, signals func() Signals, active func() bool) {
	q.SetLimit(l.law.Limit())
	t := time.NewTicker(l.every)
	defer t.Stop()
	var acc queue.Window
	ticks := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w := q.TakeWindow()
			if !active() {
				acc, ticks = queue.Window{}, 0
				continue
			}
			acc.EngineTimes = append(acc.EngineTimes, w.EngineTimes...)
			acc.Blocked = acc.Blocked || w.Blocked
			ticks++
			sig := signals()
			urgent := sig.Known && (sig.Stale || sig.Waiting > 0)
			enough := len(acc.EngineTimes) >= MinSamples || (len(acc.EngineTimes) >= 3 && ticks >= 2) || ticks >= 5
			if !enough && !urgent {
				continue
			}
			w, acc, ticks = acc, queue.Window{}, 0
			before := l.law.Limit()
			n, reason := l.law.Update(w, sig)
			l.changes.WithLabelValues(reason).Inc()
			if n != before {
				q.SetLimit(n)
				l.gauge.Set(float64(n))
				l.log.Debug("adaptive limit", "from", before, "to", n, "reason", reason)
			}
		}
	}
}
