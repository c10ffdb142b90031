// Package limiter finds the engine's in-flight limit at run time
// (queue.concurrency = "adaptive"), so that an operator need not tune
// max_inflight against the engine's own concurrency by hand.
//
// The objective is end to end: a request's wait in llmlab's queue plus its
// time in the engine. Admission (daemon/queue) refuses a request whose
// predicted wait plus the engine's tail time would not fit in it; this law
// sets how many requests the engine holds, and so the engine's time. It
// aims the engine's 90th-percentile time at Target (by default 80% of the
// objective: the rest is the queue's, which keeps the engine fed through
// bursts), and it never holds more than the engine turns into throughput.
//
// Windows of completions are gathered until at least MinSamples requests
// have finished (or five intervals have passed), then:
//
//   - the engine queues internally (vLLM's num_requests_waiting at least 2
//     and a tenth of the limit, or any waiting with the KV cache at 95%):
//     the limit exceeds what the engine can run; cut it to 90% at once;
//   - the engine's readings are stale: hold (the queue stops dispatching
//     meanwhile, for a bounded time);
//   - after a change, windows that began before its requests had left
//     the engine are skipped (settle), and so is the first window in
//     which demand exceeds capacity: a probe is based on, and judged by,
//     windows in which nothing but the limit changed;
//   - a change under test (a probe) is judged: its throughput elasticity,
//     e = ln(X2/X1) / ln(L2/L1) with X from Little's law (average in
//     flight / mean engine time) and L the average in flight, each over
//     the latest windows at its limit in which demand exceeded capacity
//     (judgeSamples completions or judgeWindows windows at least). A rise
//     with e below KneeElasticity brought (almost) no throughput, only
//     latency: the engine's knee is at the old limit. Seen once, the law
//     goes back and probes again; seen twice in a row (or where the last
//     knee was), it goes back and holds there. A cut with e below it cost
//     (almost) no throughput: keep it and probe lower again;
//   - with r = Target / (90th percentile of the time requests held their
//     slots): above the target (r < 0.97) the limit is multiplied by
//     1 + (r - 1)/2, at least 0.8; below it (r > 1.03) and with the limit
//     binding (requests waited for a slot), by the same factor, at most 1.2
//     (1.5 while r > 1.5) and at least one more, unless a knee found lately
//     is in the way; else it stays. With no target (no objective), a
//     binding limit is probed upward by 25% until the knee stops it;
//   - while held at a knee, the limit is probed 20% lower now and then, so
//     that a knee found too high (or an engine that became slower) is left.
//
// Two engine shapes meet this law. A continuous-batching engine (vLLM, the
// simulator) turns more concurrency into more throughput until its batch
// or KV cache is full, while each request's time grows: the latency target
// usually binds first. A fixed-slot engine (Ollama, llama.cpp) runs N
// requests at once and queues the rest inside itself: past N, throughput
// is flat and time per request grows with the limit, which the knee test
// sees within a probe, without any engine metric.
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
	Initial int
	// Target is the engine time per request (90th percentile) the limit
	// aims at; 0: none, the knee alone bounds the limit.
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

// Tuning of the knee test.
const (
	// KneeElasticity: a change of the limit whose throughput elasticity
	// is below this moved latency, not throughput.
	KneeElasticity = 0.25
	// kneeHold is how many updates a knee stands before it is probed again.
	kneeHold = 30
	// downProbeEvery is how many updates at a knee pass between probes 20%
	// below it.
	downProbeEvery = 10
	// minProbeStep is the smallest relative change worth judging (smaller
	// ones drown in the noise of one window).
	minProbeStep = 0.1
	// A probe is based on, and judged by, at least judgeSamples
	// completions or judgeWindows windows at one limit: one window's
	// throughput is off by a few percent either way, as much as a probe
	// of 10-25% moves it on an engine whose elasticity is near the knee's.
	judgeSamples = 4 * MinSamples
	judgeWindows = 3
	// steadyWindows is how many of the latest windows at one limit a base
	// or a judgement reads at most.
	steadyWindows = 4
)

// probe is a change of the limit under test.
type probe struct {
	from float64 // the limit before
	l, x float64 // average in flight and throughput before
	down bool
}

// Law is the control law; Update is pure and tested on its own.
type Law struct {
	cfg   Config
	limit float64

	probe         *probe
	settleUntil   time.Time      // windows starting before this are skipped
	lastSaturated bool           // demand exceeded capacity in the last window
	steady        []queue.Window // the latest saturated windows at this limit, after it settled
	suspect       float64        // a limit a probe above found to be a knee once (0: none)
	knee          float64        // a limit past which throughput did not grow (0: none)
	kneeLeft      int            // updates before the knee may be probed again
	sinceDown     int            // updates held since the last probe below
	downEvery     int            // updates held between probes below
}

// New returns the control law at its initial limit.
func New(cfg Config) *Law {
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
	return &Law{cfg: cfg, limit: float64(min(max(start, cfg.Min), cfg.Max)), downEvery: downProbeEvery}
}

// Limit is the current limit.
func (a *Law) Limit() int { return int(a.limit) }

// Knee is the limit past which throughput was last seen not to grow (0:
// none known now).
func (a *Law) Knee() int {
	if a.kneeLeft <= 0 {
		return 0
	}
	return int(a.knee)
}

// MinSamples is how many completions a decision needs.
const MinSamples = 8

// throughput estimates w's completions per second by Little's law (the
// average in flight over the mean time in flight), which is steadier than
// counting one window's completions; 0 when w says too little.
func throughput(w queue.Window) float64 {
	if len(w.EngineTimes) == 0 || w.AvgInflight <= 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range w.EngineTimes {
		sum += d
	}
	mean := sum.Seconds() / float64(len(w.EngineTimes))
	if mean <= 0 {
		return 0
	}
	return w.AvgInflight / mean
}

// Update folds one window into the limit and says why it moved.
func (a *Law) Update(w queue.Window, s Signals) (int, string) {
	before := a.limit
	reason := a.update(w, s)
	a.limit = math.Min(math.Max(a.limit, float64(a.cfg.Min)), float64(a.cfg.Max))
	if a.limit != before {
		a.steady = nil
	}
	if a.kneeLeft > 0 {
		a.kneeLeft--
	}
	return int(a.limit), reason
}

func (a *Law) update(w queue.Window, s Signals) string {
	p90, n := percentile(w.EngineTimes, 0.9)
	ours := w.MaxInflight > 0 || n > 0
	sat := n > 0 && saturated(w, a.limit)
	wasSaturated := a.lastSaturated
	a.lastSaturated = sat
	// The objective is a 95th percentile: judge the engine's time by its
	// own once a window holds enough requests to read one (an engine
	// whose slowest requests are much slower than most, Ollama's with
	// requests queued inside it, would otherwise pass at p90 and miss at
	// p95).
	tail := p90
	if n >= 20 {
		tail, _ = percentile(w.EngineTimes, 0.95)
	}
	switch {
	case s.Known && s.Stale:
		return "stale"
	case s.Known && ours && ((s.Waiting >= 2 && s.Waiting >= a.limit/10) || (s.Waiting > 0 && s.KVUsage >= 0.95)):
		// Only with work of ours in the engine: another client's queue
		// there is not ours to relieve, and cutting for it while idle
		// would leave the limit at its floor when our load comes.
		a.probe = nil
		a.limit *= 0.9
		return "engine_queueing"
	case n == 0:
		if w.Blocked {
			// Nothing finished yet but requests wait: the engine is slow to
			// answer at all, which is no sign of room.
			return "no_samples"
		}
		return "steady"
	case !w.End.IsZero() && w.End.Before(a.settleUntil), !w.Start.IsZero() && w.Start.Before(a.settleUntil):
		// Requests of this window started before the last change: they
		// say nothing about the new limit. A window that began before
		// the change had settled is skipped whole: its first completions
		// took the old limit's times while its average in flight is the
		// new limit's, so Little's law would read a throughput the
		// engine never gave.
		return "settle"
	}
	// The limit binds when requests waited for a slot and the engine held
	// about as many as it allows; throughput measures capacity (and a
	// probe can be judged by it) only when requests waited for a slot
	// nearly all the time: below that, it measures the demand.
	binding := w.Blocked && (w.AvgInflight == 0 || w.AvgInflight >= 0.85*math.Floor(a.limit))
	x := throughput(w)
	if !sat {
		x = 0
	}
	if x > 0 && !wasSaturated {
		// Demand has just risen past capacity: like a change of the
		// limit, this starts a transition. Requests that finish in this
		// window and the next ran beside fewer than the average in
		// flight now, so Little's law would overstate the throughput,
		// and a probe based on it would find a knee that is not there.
		a.settleUntil = w.End.Add(p90)
		a.steady = nil
		return "settle"
	}
	// The steady windows at this limit: a probe's base and judgement.
	if x > 0 {
		a.steady = append(a.steady, w)
		if len(a.steady) > steadyWindows {
			a.steady = a.steady[1:]
		}
	} else {
		a.steady = nil
	}
	var base queue.Window
	for _, sw := range a.steady {
		base = merge(base, sw)
	}
	enough := len(base.EngineTimes) >= judgeSamples || len(a.steady) >= judgeWindows
	xb := 0.0
	if x > 0 {
		xb = throughput(base)
	}
	r := 0.0
	if a.cfg.Target > 0 {
		r = float64(a.cfg.Target) / float64(max(tail, time.Millisecond))
	}

	if p := a.probe; p != nil {
		if x > 0 && !enough && (a.cfg.Target == 0 || r >= 0.97) {
			// Judge on enough: wait for more windows at this limit.
			return "settle"
		}
		a.probe = nil
		if xb > 0 && p.x > 0 && base.AvgInflight > 0 && math.Abs(math.Log(base.AvgInflight/p.l)) >= math.Log1p(minProbeStep)/2 {
			e := math.Log(xb/p.x) / math.Log(base.AvgInflight/p.l)
			switch {
			case !p.down && e < KneeElasticity && a.suspect != p.from && a.knee != p.from:
				// More in the engine, no more out of it, seen once (and
				// not the knee found last time): that can be noise. Go
				// back and probe again before calling it a knee.
				a.limit, a.suspect = p.from, p.from
				a.settleUntil = w.End.Add(p90)
				return "steady"
			case !p.down && e < KneeElasticity:
				// Seen twice: the knee is at the old limit.
				a.limit, a.knee, a.kneeLeft, a.sinceDown, a.suspect = p.from, p.from, kneeHold, 0, 0
				a.settleUntil = w.End.Add(p90)
				return "knee"
			case !p.down:
				a.suspect = 0
			case p.down && e < KneeElasticity:
				// Less in the engine, as much out of it: the knee is
				// lower; keep going down.
				a.knee, a.kneeLeft, a.downEvery = a.limit, kneeHold, downProbeEvery
				a.sinceDown = a.downEvery
			case p.down:
				// The cut cost throughput: back to where it was, and probe
				// below less often while that keeps being so.
				a.limit, a.sinceDown = p.from, 0
				a.downEvery = min(a.downEvery*2, 8*downProbeEvery)
				a.settleUntil = w.End.Add(p90)
				return "steady"
			}
		}
	}

	if a.cfg.Target > 0 {
		if r < 0.97 {
			a.limit *= math.Max(1+(r-1)/2, 0.8)
			return "latency"
		}
	}
	if !binding {
		return "steady"
	}
	atKnee := a.kneeLeft > 0 && a.limit >= a.knee
	if atKnee || (a.cfg.Target > 0 && r <= 1.03) {
		// Held at a knee or at the target: now and then, see whether less
		// does as well (a limit past the knee only adds latency).
		a.sinceDown++
		if a.sinceDown >= a.downEvery && xb > 0 && enough && a.limit > float64(a.cfg.Min) {
			a.sinceDown = 0
			a.startProbe(base, xb, math.Min(a.limit*0.8, a.limit-1), true)
			return "probe"
		}
		if atKnee {
			return "knee_hold"
		}
		return "steady"
	}
	next := a.limit * 1.25 // no target: probe for the knee
	if a.cfg.Target > 0 {
		// Far below the target, climb fast (a cold limit on a slow card
		// would otherwise take minutes); near it, gently.
		ceiling := 1.2
		if r > 1.5 {
			ceiling = 1.5
		}
		next = a.limit * math.Min(1+(r-1)/2, ceiling)
	}
	next = math.Max(next, a.limit+1)
	if a.kneeLeft > 0 && a.knee > a.limit {
		next = math.Min(next, a.knee)
	}
	next = math.Min(next, float64(a.cfg.Max))
	if xb > 0 && next >= a.limit*(1+minProbeStep) {
		if !enough {
			// Base the probe on enough: wait for more windows here.
			return "steady"
		}
		a.startProbe(base, xb, next, false)
	} else {
		a.limit = next
		a.settleUntil = w.End.Add(p90)
	}
	return "demand"
}

// saturated reports whether demand exceeded what the engine served
// through w: requests waited for a slot during at least 90% of it, or
// admission refused some for want of capacity while the engine held at
// least 85% of the limit on average.
func saturated(w queue.Window, limit float64) bool {
	d := w.End.Sub(w.Start)
	if d <= 0 {
		return false
	}
	return (w.Blocked && w.BlockedFor >= d*9/10) || (w.Refused > 0 && w.AvgInflight >= 0.85*math.Floor(limit))
}

// startProbe moves the limit to next and remembers what to judge it by.
func (a *Law) startProbe(w queue.Window, x, next float64, down bool) {
	a.probe = &probe{from: a.limit, l: w.AvgInflight, x: x, down: down}
	if a.probe.l <= 0 {
		a.probe.l = math.Floor(a.limit)
	}
	a.limit = next
	// Judge it on requests that started after the change: skip a window's
	// worth of the engine's tail time.
	p90, _ := percentile(w.EngineTimes, 0.9)
	a.settleUntil = w.End.Add(p90)
}

// merge joins consecutive windows a and b into one.
func merge(a, b queue.Window) queue.Window {
	if a.Start.IsZero() {
		return b
	}
	m := a
	m.EngineTimes = append(m.EngineTimes, b.EngineTimes...)
	m.Blocked = a.Blocked || b.Blocked
	m.MaxInflight = max(a.MaxInflight, b.MaxInflight)
	m.Completed = a.Completed + b.Completed
	m.BlockedFor = a.BlockedFor + b.BlockedFor
	m.Refused = a.Refused + b.Refused
	m.End = b.End
	da, db := a.End.Sub(a.Start).Seconds(), b.End.Sub(b.Start).Seconds()
	if da+db > 0 {
		m.AvgInflight = (a.AvgInflight*da + b.AvgInflight*db) / (da + db)
	}
	return m
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
	law     *Law
	every   time.Duration
	log     *slog.Logger
	gauge   prometheus.Gauge
	changes *prometheus.CounterVec
}

// reasons are the values of llmlab_adaptive_updates_total's reason label.
var reasons = []string{"demand", "latency", "knee", "probe", "knee_hold", "settle", "engine_queueing", "stale", "no_samples", "steady"}

// NewLimiter returns a limiter; its series go to reg.
func NewLimiter(cfg Config, reg prometheus.Registerer, log *slog.Logger) *Limiter {
	l := &Limiter{law: New(cfg), every: cfg.Interval, log: log,
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "llmlab_adaptive_limit",
			Help: "The in-flight limit the adaptive concurrency control has set."}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmlab_adaptive_updates_total",
			Help: "Adaptive limit updates, by reason (demand, latency, knee, probe, knee_hold, settle, engine_queueing, stale, no_samples, steady)."}, []string{"reason"})}
	if l.every <= 0 {
		l.every = time.Second
	}
	reg.MustRegister(l.gauge, l.changes)
	// Every reason is a series from the start, so dashboards and alerts
	// see zeros rather than gaps.
	for _, r := range reasons {
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
			acc = merge(acc, w)
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
