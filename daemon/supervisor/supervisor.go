// Package supervisor owns the engine's lifecycle: it starts the engine when
// work arrives, waits for it to answer its health check, stops it after an
// idle period (scale to zero), and retries failed starts with backoff.
//
// One goroutine (Run) owns the state: stopped, starting, ready, sleeping
// and deep_sleeping (vLLM's sleep levels 1 and 2), stopping, failed.
// Everything else talks to it through channels or reads published
// snapshots.
//
//  1. stopped --Wake--> starting: the backend starts the engine; the
//     health check is probed every ProbeInterval.
//  2. starting --healthy--> ready: the gate opens (queued requests flow);
//     the start's duration is learned for RemainingStart.
//  3. ready --idle with nothing queued or in flight--> down the sleep
//     ladder (ladder.go): sleeping after SleepAfter, deep_sleeping after
//     DeepSleepAfter, stopping --> stopped after IdleTimeout; the gate
//     closes first. Work wakes a sleeping engine (the gate opens once it
//     is awake; the wake time is learned per level for RemainingStart).
//  4. ready or asleep --the engine exits on its own (a crash)--> starting:
//     llmlabd, not systemd (the engine unit has no Restart=), restarts it at
//     once; requests in flight failed with the engine, those waiting keep
//     waiting within their deadlines. A second crash within crashWindow
//     goes to 5 instead.
//  5. starting --the engine exits, or the start takes longer than
//     StartTimeout-->, or a crash loop --> failed: the gate closes,
//     waiting requests are failed with 503; with work waiting, a new start
//     follows after a backoff (1 s, doubling to 30 s).
//
// Config keys: engine.command (the exec backend), engine.idle_timeout,
// engine.start_timeout, engine.expected_start_time, engine.sleep_after,
// engine.deep_sleep_after, engine.ready_path and engine.ready_match;
// SetConfig hands it new values on a reload.
// Metrics: llmlab_engine_state{state}, llmlab_engine_starts_total{result},
// llmlab_engine_start_seconds, llmlab_engine_wake_seconds{level},
// llmlab_engine_crashes_total.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// State is the engine's lifecycle state, as the supervisor reports it (in
// /status and llmlab_engine_state{state}, by its text).
type State string

// States of the engine.
const (
	Stopped  State = "stopped"
	Starting State = "starting"
	Ready    State = "ready"
	Stopping State = "stopping"
	Failed   State = "failed"
	// Sleeping is vLLM's sleep level 1: the process runs but has released
	// the GPU's memory, the weights kept in host memory; waking takes a
	// fraction of a second.
	Sleeping State = "sleeping"
	// DeepSleeping is vLLM's sleep level 2: the weights are discarded too;
	// waking reads them back from disk, a fraction of a start.
	DeepSleeping State = "deep_sleeping"
	// External is no state of the supervisor's: it is the state of an
	// engine llmlab does not manage (no engine.command or engine.unit),
	// which is taken to be always on.
	External State = "external"
)

// states are the states the supervisor reports.
var states = []State{Stopped, Starting, Ready, Stopping, Failed, Sleeping, DeepSleeping}

// Backend starts the engine.
type Backend interface {
	Start(ctx context.Context) (Process, error)
}

// Process is a started engine.
type Process interface {
	// Done is closed when the engine has exited.
	Done() <-chan struct{}
	// Stop asks the engine to exit and waits until it has.
	Stop(ctx context.Context) error
}

// exitReporter is a process that can say how it exited (the exec
// backend's).
type exitReporter interface {
	Exit() (status, lastOutput string)
}

// Gate is the queue's side: it holds requests while the engine is not
// ready and fails them when it cannot start.
type Gate interface {
	SetEngineReady(ready bool)
	FailWaiting(reason, message string, retryAfter time.Duration)
	// Busy is the number of requests queued or in flight.
	Busy() int
	// Inflight is the number of sequences in the engine.
	Inflight() int
}

// Config tunes the supervisor.
type Config struct {
	// Probe reports whether the engine answers its health check.
	Probe         func(ctx context.Context) bool
	ProbeInterval time.Duration
	// IdleTimeout stops an idle engine; 0 never does.
	IdleTimeout  time.Duration
	StartTimeout time.Duration
	// ExpectedStart is the start time assumed until one is measured.
	ExpectedStart time.Duration
	// SleepAfter and DeepSleepAfter put an idle engine to sleep at vLLM's
	// level 1 and 2 after this long, before IdleTimeout stops it (the
	// ladder, ladder.go); 0 leaves the rung out. Sleep puts the engine to
	// sleep at a level; WakeUp wakes it from one, ready to serve (from
	// level 2, with its weights reloaded).
	SleepAfter     time.Duration
	DeepSleepAfter time.Duration
	Sleep          func(ctx context.Context, level int) error
	WakeUp         func(ctx context.Context, level int) error
	// HostHoldsWeights, when set, is asked before each sleep at level 1,
	// which copies the weights into host memory: an error says why the
	// host cannot hold them now, and the engine sleeps at level 2 instead.
	HostHoldsWeights func(ctx context.Context) error
	// BeforeStart, when set, may refuse a start (the GPU's memory is
	// taken, say): the start fails as if the engine had, with the error's
	// message for the waiting requests, and is retried with backoff.
	BeforeStart func(ctx context.Context) error
	// OnReady, when set, runs once the engine answers its health check.
	OnReady func(ctx context.Context)
	// AfterStop, when set, runs after the engine has stopped and before it
	// is reported stopped: the GPU admission waits there until the engine's
	// memory is really released.
	AfterStop func(ctx context.Context)
}

// Supervisor runs one engine. Create it with New and run Run.
type Supervisor struct {
	cfg     Config
	backend Backend
	gate    Gate
	log     *slog.Logger

	wake     chan struct{}
	restart  chan Backend
	reconfig chan Config

	// Published by Run for other goroutines.
	state        atomic.Value // State
	startedAt    atomic.Int64 // the current start, in nanoseconds after epoch (monotonic)
	epoch        time.Time
	learnedStart atomic.Int64 // nanoseconds
	// learnedWake is the wake-up time from sleep level 1 and 2 (by
	// index), in nanoseconds, assumed until wakeMeasured; wakingAt is when
	// the wake-up under way began, like startedAt (0: none).
	learnedWake  [3]atomic.Int64
	wakeMeasured [3]atomic.Bool
	wakingAt     atomic.Int64
	// measured says learnedStart comes from a start (measured, or kept
	// from an earlier run), no longer from Config.ExpectedStart.
	measured atomic.Bool

	infoMu sync.Mutex
	info   Info

	metrics *metrics
}

// Info is what an operator asks about the engine's lifecycle (llmlab
// status): the state and since when, the last start and the last failure.
type Info struct {
	State State     `json:"state"`
	Since time.Time `json:"since"`
	// LastStart is when the last start that reached ready began, and
	// LastStartSeconds how long it took (zero: none yet in this run).
	LastStart        time.Time `json:"last_start,omitzero"`
	LastStartSeconds float64   `json:"last_start_seconds,omitempty"`
	// LastFailure says why the engine last failed to start or stopped
	// unexpectedly, and when (empty: no failure in this run).
	LastFailure   string    `json:"last_failure,omitempty"`
	LastFailureAt time.Time `json:"last_failure_at,omitzero"`
}

// Info returns a snapshot of the engine's lifecycle.
func (s *Supervisor) Info() Info {
	s.infoMu.Lock()
	defer s.infoMu.Unlock()
	return s.info
}

func (s *Supervisor) noteInfo(f func(*Info)) {
	s.infoMu.Lock()
	defer s.infoMu.Unlock()
	f(&s.info)
}

type metrics struct {
	state     *prometheus.GaugeVec
	starts    *prometheus.CounterVec
	startTime prometheus.Histogram
	wakeTime  *prometheus.HistogramVec
	crashes   prometheus.Counter
}

// crashWindow is how soon a second crash of a running engine counts as a
// crash loop rather than a crash to recover from at once.
const crashWindow = time.Minute

// Attach sets the gate; call it before Run (the gate is usually built
// with the supervisor as its engine).
func (s *Supervisor) Attach(g Gate) { s.gate = g }

// New returns a supervisor; reg may be nil; gate may be attached later.
func New(cfg Config, backend Backend, gate Gate, reg prometheus.Registerer, log *slog.Logger) *Supervisor {
	cfg = cfg.withDefaults()
	s := &Supervisor{cfg: cfg, backend: backend, gate: gate, log: log, wake: make(chan struct{}, 1), restart: make(chan Backend, 1),
		reconfig: make(chan Config, 1), epoch: time.Now()}
	s.state.Store(Stopped)
	s.learnedStart.Store(int64(cfg.ExpectedStart))
	s.learnedWake[1].Store(int64(expectedWake))
	s.learnedWake[2].Store(int64(expectedDeepWake))
	s.metrics = &metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "llmlab_engine_state",
			Help: "1 for the engine's current lifecycle state (stopped, starting, ready, sleeping: vLLM's sleep level 1, deep_sleeping: level 2, stopping, failed)."}, []string{"state"}),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmlab_engine_starts_total",
			Help: "Engine starts by result (ready, failed)."}, []string{"result"}),
		startTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "llmlab_engine_start_seconds",
			Help: "Time from starting the engine to its first healthy answer.", Buckets: []float64{0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300}}),
		wakeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "llmlab_engine_wake_seconds",
			Help: "Time to wake the engine from vLLM's sleep, by level (1: weights from host memory; 2: weights reloaded from disk).", Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60}}, []string{"level"}),
		crashes: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmlab_engine_crashes_total",
			Help: "Times the engine exited without being asked to (restarted at once when it was running, unless it crashed within the last minute too)."}),
	}
	// Both results exist from the start, at 0, so that the first start of
	// a run is an increase a query can see, not a new series.
	s.metrics.starts.WithLabelValues("ready")
	s.metrics.starts.WithLabelValues("failed")
	s.metrics.wakeTime.WithLabelValues("1")
	s.metrics.wakeTime.WithLabelValues("2")
	if reg != nil {
		reg.MustRegister(s.metrics.state, s.metrics.starts, s.metrics.startTime, s.metrics.wakeTime, s.metrics.crashes)
	}
	s.publish(Stopped)
	return s
}

// withDefaults fills in what cfg leaves unset.
func (c Config) withDefaults() Config {
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = 50 * time.Millisecond
	}
	return c
}

// SetConfig hands the supervisor new settings (a reload). The engine is
// not restarted: from Run's next turn, the ladder's idle times, the
// start timeout (of a start in progress too), the readiness probe, and,
// until a start has been measured, the expected start time are cfg's.
func (s *Supervisor) SetConfig(cfg Config) {
	select {
	case <-s.reconfig: // a newer one replaces a pending one
	default:
	}
	s.reconfig <- cfg.withDefaults()
}

// Wake notes that work arrived: a stopped engine starts.
func (s *Supervisor) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Restart switches to a new backend (new engine settings). A running
// engine (starting, ready or asleep) is drained and restarted once with
// it: the gate closes at once, so requests that arrive meanwhile wait as in
// a cold start; when nothing is left in the engine it stops and starts
// again. Settings handed over by SetConfig just before are the new
// engine's from its start.
func (s *Supervisor) Restart(b Backend) {
	select {
	case <-s.restart: // a newer one replaces a pending one
	default:
	}
	s.restart <- b
}

// State names the engine's lifecycle state.
func (s *Supervisor) State() State { return s.state.Load().(State) }

func (s *Supervisor) publish(state State) {
	s.noteInfo(func(i *Info) {
		if i.State != state {
			i.State, i.Since = state, time.Now()
		}
	})
	s.state.Store(state)
	for _, st := range states {
		v := 0.0
		if st == state {
			v = 1
		}
		s.metrics.state.WithLabelValues(string(st)).Set(v)
	}
}

// Run owns the engine's lifecycle until ctx ends; then it stops the engine.
func (s *Supervisor) Run(ctx context.Context) {
	var (
		proc        Process
		state       = Stopped
		lastWork    = time.Now()
		backoff     = time.Second
		retryAt     time.Time
		probe       *time.Ticker
		probeC      <-chan time.Time
		exited      <-chan struct{}
		pending     Backend   // a backend to restart with once drained
		lastCrash   time.Time // when a running engine last exited on its own
		sleepRetry  time.Time // no sleep before then: the last one failed
		housekeeper = time.NewTicker(250 * time.Millisecond)
	)
	defer housekeeper.Stop()
	set := func(st State) {
		if st != state {
			s.log.Info("engine state", "from", state, "to", st, "engine_state", st)
		}
		state = st
		s.publish(st)
	}
	configure := func(c Config) {
		if probe != nil && c.ProbeInterval != s.cfg.ProbeInterval {
			probe.Reset(c.ProbeInterval)
		}
		if !s.measured.Load() {
			s.learnedStart.Store(int64(c.ExpectedStart))
		}
		s.cfg = c
	}
	start := func() {
		// Settings handed over with new engine settings (SetConfig, then
		// Restart) are the new engine's from its start.
		select {
		case c := <-s.reconfig:
			configure(c)
		default:
		}
		now := time.Now()
		s.startedAt.Store(int64(now.Sub(s.epoch)))
		set(Starting)
		if s.cfg.BeforeStart != nil {
			if err := s.cfg.BeforeStart(ctx); err != nil {
				s.log.Error("engine start refused", "err", err)
				s.fail(set, &retryAt, &backoff, "the engine was not started: "+err.Error())
				return
			}
		}
		p, err := s.backend.Start(ctx)
		if err != nil {
			s.log.Error("engine start failed", "err", err)
			s.fail(set, &retryAt, &backoff, "the engine could not be started")
			s.noteInfo(func(i *Info) { i.LastFailure = "the engine could not be started: " + err.Error() })
			return
		}
		proc, exited = p, p.Done()
		probe = time.NewTicker(s.cfg.ProbeInterval)
		probeC = probe.C
	}
	stopProbe := func() {
		if probe != nil {
			probe.Stop()
			probe, probeC = nil, nil
		}
	}
	stop := func(ctx context.Context) {
		stopProbe()
		s.gate.SetEngineReady(false)
		if proc != nil {
			set(Stopping)
			if err := proc.Stop(ctx); err != nil {
				s.log.Warn("engine stop", "err", err)
			}
			proc, exited = nil, nil
			if s.cfg.AfterStop != nil {
				s.cfg.AfterStop(ctx)
			}
		}
		set(Stopped)
	}
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			stop(sctx)
			cancel()
			return
		case c := <-s.reconfig:
			configure(c)
		case b := <-s.restart:
			// A sleeping engine is restarted too: woken, it would serve
			// with its old settings.
			if state == Ready || state == Starting || state.SleepLevel() > 0 {
				s.log.Info("engine settings changed; draining the engine to restart it")
				pending = b
				s.gate.SetEngineReady(false)
				continue
			}
			s.backend = b
		case <-s.wake:
			lastWork = time.Now()
			switch {
			case state.SleepLevel() > 0 && pending == nil: // else the housekeeper restarts it
				if err := s.wakeUp(ctx, state.SleepLevel()); err != nil {
					s.log.Warn("engine did not wake up; restarting it", "sleep_level", state.SleepLevel(), "err", err)
					stop(ctx)
					start()
					continue
				}
				s.gate.SetEngineReady(true) // open before anyone reads Ready
				set(Ready)
			case state == Stopped || (state == Failed && !time.Now().Before(retryAt)):
				start()
			}
		case <-probeC:
			if s.cfg.Probe(ctx) {
				stopProbe()
				took := time.Since(s.started())
				s.learn(took)
				s.metrics.starts.WithLabelValues("ready").Inc()
				s.metrics.startTime.Observe(took.Seconds())
				s.log.Info("engine ready", "start_time", took)
				s.noteInfo(func(i *Info) {
					i.LastStart, i.LastStartSeconds = s.started(), took.Seconds()
				})
				if s.cfg.OnReady != nil {
					s.cfg.OnReady(ctx)
				}
				backoff = time.Second
				lastWork = time.Now()
				s.gate.SetEngineReady(true) // open before anyone reads Ready
				set(Ready)
			} else if s.cfg.StartTimeout > 0 && time.Since(s.started()) > s.cfg.StartTimeout {
				s.log.Error("engine did not become healthy in time", "start_timeout", s.cfg.StartTimeout)
				stop(ctx)
				s.fail(set, &retryAt, &backoff, "the engine did not become ready in time")
				s.noteInfo(func(i *Info) {
					i.LastFailure = fmt.Sprintf("the engine did not become ready within engine.start_timeout (%s)", s.cfg.StartTimeout)
				})
			}
		case <-exited:
			how := "the engine stopped unexpectedly"
			if e, ok := proc.(exitReporter); ok {
				status, last := e.Exit()
				// Its last words go to the log only: /status is served
				// on the API listener, and an engine's output is the
				// operator's to read.
				s.log.Error("engine exited", "state", state, "exit", status, "last_output", last)
				how += " (" + status + "; its last output is in llmlabd's log)"
			} else {
				s.log.Error("engine exited", "state", state)
			}
			stopProbe()
			proc, exited = nil, nil
			s.gate.SetEngineReady(false)
			s.metrics.crashes.Inc()
			if (state == Ready || state.SleepLevel() > 0) && time.Since(lastCrash) > crashWindow {
				// A running engine died: its requests in flight have
				// failed with it, but those waiting keep waiting, within
				// their own deadlines, for a restart now. A second crash
				// within crashWindow is a crash loop: it fails the waiting
				// requests and backs off like a failed start.
				lastCrash = time.Now()
				s.noteInfo(func(i *Info) {
					i.LastFailure, i.LastFailureAt = how+"; restarted at once", lastCrash
				})
				s.log.Warn("restarting the engine after its crash; waiting requests keep waiting")
				start()
				continue
			}
			lastCrash = time.Now()
			s.fail(set, &retryAt, &backoff, how)
		case now := <-housekeeper.C:
			busy := s.gate.Busy()
			if busy > 0 {
				lastWork = now
			}
			switch {
			case pending != nil && s.gate.Inflight() == 0:
				stop(ctx)
				s.backend, pending = pending, nil
				s.log.Info("restarting the engine with its new settings")
				start()
			case state == Failed && busy > 0 && !now.Before(retryAt):
				start()
			case (state == Ready || state.SleepLevel() > 0) && busy == 0:
				target := s.cfg.rung(now.Sub(lastWork))
				switch {
				case depth(target) <= depth(state):
				case target == Stopped:
					s.log.Info("engine idle; stopping", "idle_timeout", s.cfg.IdleTimeout)
					stop(ctx)
				case now.Before(sleepRetry):
				default:
					s.gate.SetEngineReady(false)
					next, err := s.descend(ctx, state, target)
					switch {
					case errors.Is(err, errEngineUnknown):
						s.log.Warn("engine did not wake up to sleep deeper; stopping it", "err", err)
						stop(ctx)
						continue
					case err != nil:
						// Ready: the sleep failed. Try again after the
						// rung's time once more; the stop still comes.
						s.log.Warn("engine did not go to sleep; keeping it ready", "sleep_level", target.SleepLevel(), "err", err)
						sleepRetry = now.Add(s.cfg.rungTime(target))
					case next == Ready:
						lastWork = time.Now() // work arrived during the wake
					}
					if next == Ready {
						s.gate.SetEngineReady(true) // open before anyone reads Ready
					}
					set(next)
				}
			}
		}
	}
}

// fail records a failed start or a crash and fails the waiting requests.
func (s *Supervisor) fail(set func(State), retryAt *time.Time, backoff *time.Duration, msg string) {
	s.metrics.starts.WithLabelValues("failed").Inc()
	s.noteInfo(func(i *Info) { i.LastFailure, i.LastFailureAt = msg, time.Now() })
	set(Failed)
	*retryAt = time.Now().Add(*backoff)
	s.gate.FailWaiting("engine_unavailable", msg+"; retrying", *backoff+time.Duration(s.learnedStart.Load()))
	*backoff = min(2**backoff, 30*time.Second)
}
