// Package limiter finds the engine's in-flight limit at run time
// (queue.concurrency = "adaptive"), so that an operator need not tune
// max_inflight against vLLM's --max-num-seqs by hand.
//
// The control law is additive-increase, multiplicative-decrease on the
// engine's latency, bounded by the engine's own signals. Every Interval:
//
//   - the engine queues internally (vllm:num_requests_waiting at least 2
//     and a tenth of the limit, or any waiting with the KV cache at 95%):
//     the limit exceeds what the engine can run; decrease to 90% of it;
//   - the engine's readings are stale: hold (the queue stops dispatching
//     meanwhile);
//   - the 90th percentile of the time requests held their slots in the
//     window is above Target: decrease to 85%;
//   - requests waited for a slot (demand beyond the limit) and that
//     percentile is below 90% of Target: increase, by 10% while below half
//     of Target, by max(1, 3%) above;
//   - otherwise keep it.
//
// Target defaults to 70% of the latency objective, leaving the rest for
// the queue. Because a continuous-batching engine's throughput flattens
// while its per-request latency keeps growing with concurrency, the limit
// settles just past the knee where more concurrency stops paying.
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
	case n >= 3 && p90 > a.cfg.Target:
		a.limit *= 0.85
		reason = "latency"
	case w.Blocked && (n == 0 || p90 < a.cfg.Target*9/10):
		if n > 0 && p90 < a.cfg.Target/2 {
			a.limit *= 1.1
		} else {
			a.limit += max(1, a.limit*0.03)
		}
		reason = "demand"
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
			Help: "Adaptive limit updates, by reason (demand, latency, engine_queueing, stale, steady)."}, []string{"reason"})}
	if l.every <= 0 {
		l.every = time.Second
	}
	reg.MustRegister(l.gauge, l.changes)
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w := q.TakeWindow()
			if !active() {
				continue
			}
			before := l.law.Limit()
			n, reason := l.law.Update(w, signals())
			l.changes.WithLabelValues(reason).Inc()
			if n != before {
				q.SetLimit(n)
				l.gauge.Set(float64(n))
				l.log.Debug("adaptive limit", "from", before, "to", n, "reason", reason)
			}
		}
	}
}
