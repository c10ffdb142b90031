package supervisor

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeEngine is a backend whose engine becomes healthy startDelay after a
// start, and a recording gate.
type fakeEngine struct {
	startDelay time.Duration
	failStart  bool

	mu      sync.Mutex
	starts  int
	stops   int
	current *fakeProc
}

type fakeProc struct {
	e       *fakeEngine
	started time.Time
	done    chan struct{}
	once    sync.Once
}

func (f *fakeEngine) Start(context.Context) (Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts++
	if f.failStart {
		return nil, io.ErrUnexpectedEOF
	}
	f.current = &fakeProc{e: f, started: time.Now(), done: make(chan struct{})}
	return f.current, nil
}

func (p *fakeProc) Done() <-chan struct{} { return p.done }

func (p *fakeProc) Stop(context.Context) error {
	p.e.mu.Lock()
	p.e.stops++
	p.e.mu.Unlock()
	p.once.Do(func() { close(p.done) })
	return nil
}

// stopCount reads stops under the lock, for a test that reads it while
// the supervisor may stop the engine.
func (f *fakeEngine) stopCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stops
}

// startCount reads starts under the lock, for a test that reads it while
// the supervisor may start the engine again.
func (f *fakeEngine) startCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts
}

// crash makes the running engine exit on its own.
func (f *fakeEngine) crash() {
	f.mu.Lock()
	p := f.current
	f.mu.Unlock()
	p.once.Do(func() { close(p.done) })
}

func (f *fakeEngine) healthy(context.Context) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current != nil && time.Since(f.current.started) >= f.startDelay
}

type gate struct {
	ready    atomic.Bool
	busy     atomic.Int32
	inflight atomic.Int32
	failed   atomic.Int32
	message  atomic.Value // the last FailWaiting message
}

func (g *gate) Inflight() int { return int(g.inflight.Load()) }

func (g *gate) SetEngineReady(r bool)                      { g.ready.Store(r) }
func (g *gate) FailWaiting(_, msg string, _ time.Duration) { g.failed.Add(1); g.message.Store(msg) }
func (g *gate) Busy() int                                  { return int(g.busy.Load()) }

func setup(t *testing.T, eng *fakeEngine, idle time.Duration) (*Supervisor, *gate, context.CancelFunc) {
	t.Helper()
	g := &gate{}
	s := New(Config{Probe: eng.healthy, ProbeInterval: 50 * time.Millisecond, IdleTimeout: idle,
		StartTimeout: time.Minute, ExpectedStart: 10 * time.Second}, eng, g, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	go s.Run(ctx)
	return s, g, cancel
}

func TestColdStartThenIdleStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eng := &fakeEngine{startDelay: 3 * time.Second}
		s, g, cancel := setup(t, eng, 30*time.Second)
		defer cancel()
		if s.State() != Stopped || s.RemainingStart() != 10*time.Second {
			t.Fatalf("fresh: %s, remaining %s; want stopped and the expected 10s", s.State(), s.RemainingStart())
		}
		start := time.Now()
		s.Wake()
		synctest.Wait()
		if s.State() != Starting || g.ready.Load() {
			t.Fatalf("after Wake: %s, gate open %v", s.State(), g.ready.Load())
		}
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		took := time.Since(start)
		synctest.Wait()
		// Ready within one probe interval of the engine's health.
		if took < 3*time.Second || took > 3*time.Second+60*time.Millisecond {
			t.Fatalf("ready after %s, want 3s plus at most one probe interval", took)
		}
		if !g.ready.Load() || s.RemainingStart() != 0 {
			t.Fatal("ready but the gate is closed or a start is still expected")
		}
		// The learned start time moves toward the measured 3 s.
		if got := time.Duration(s.learnedStart.Load()); got > 7*time.Second || got < 6*time.Second {
			t.Fatalf("learned start %s, want the average of 10s and 3s", got)
		}
		// Work keeps it up; idleness stops it.
		g.busy.Store(1)
		time.Sleep(time.Minute)
		if s.State() != Ready {
			t.Fatalf("busy engine stopped: %s", s.State())
		}
		g.busy.Store(0)
		// Not before the idle timeout (30 s, less the housekeeper's tick
		// since work was last seen), and soon after it.
		time.Sleep(28 * time.Second)
		synctest.Wait()
		if n := eng.stopCount(); s.State() != Ready || n != 0 {
			t.Fatalf("28s idle of a 30s timeout: %s, %d stops; want still ready", s.State(), n)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if s.State() != Stopped || g.ready.Load() || eng.stops != 1 {
			t.Fatalf("after the idle timeout: %s, gate open %v, %d stops", s.State(), g.ready.Load(), eng.stops)
		}
		// The next request starts it again.
		s.Wake()
		synctest.Wait()
		if s.State() != Starting || eng.starts != 2 {
			t.Fatalf("second wake: %s, %d starts", s.State(), eng.starts)
		}
	})
}

// A running engine that crashes is restarted at once, and the requests
// waiting are not failed: they wait for the restart. A second crash within
// a minute is a crash loop: the waiting requests are failed and the
// restart waits for the backoff.
func TestCrashRestartsThenCrashLoopFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eng := &fakeEngine{}
		s, g, cancel := setup(t, eng, 0)
		defer cancel()
		s.Wake()
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		g.busy.Store(2) // work waits when the engine dies
		eng.crash()
		synctest.Wait()
		if s.State() != Starting || g.ready.Load() || g.failed.Load() != 0 || eng.startCount() != 2 {
			t.Fatalf("after a crash: %s, gate open %v, %d fail calls, %d starts; want a restart at once, nothing failed",
				s.State(), g.ready.Load(), g.failed.Load(), eng.startCount())
		}
		if i := s.Info(); !strings.Contains(i.LastFailure, "stopped unexpectedly") {
			t.Fatalf("Info after the crash: %+v", i)
		}
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		// Thirty seconds later it crashes again: a loop.
		time.Sleep(30 * time.Second)
		eng.crash()
		synctest.Wait()
		if s.State() != Failed || g.ready.Load() || g.failed.Load() != 1 || eng.startCount() != 2 {
			t.Fatalf("after a second crash: %s, gate open %v, %d fail calls, %d starts; want failed, waiting requests failed",
				s.State(), g.ready.Load(), g.failed.Load(), eng.startCount())
		}
		// With work waiting, a restart follows after the backoff.
		time.Sleep(1500 * time.Millisecond)
		synctest.Wait()
		if eng.startCount() != 3 {
			t.Fatalf("%d starts after the backoff, want 3", eng.startCount())
		}
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		if got := testutil.ToFloat64(s.metrics.crashes); got != 2 {
			t.Fatalf("llmlab_engine_crashes_total = %v, want 2", got)
		}
	})
}

func TestFailedStartBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eng := &fakeEngine{failStart: true}
		s, g, cancel := setup(t, eng, 0)
		defer cancel()
		g.busy.Store(1)
		s.Wake()
		synctest.Wait()
		if s.State() != Failed {
			t.Fatalf("state %s, want failed", s.State())
		}
		// Retries at 1 s, then 2 s, then 4 s later: 3 starts in 3.5 s.
		time.Sleep(3500 * time.Millisecond)
		synctest.Wait()
		if eng.starts != 3 {
			t.Fatalf("%d starts in 3.5s, want 3 (backoff 1s, 2s)", eng.starts)
		}
	})
}

func TestShutdownStopsEngine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eng := &fakeEngine{}
		s, _, cancel := setup(t, eng, 0)
		var afterStop atomic.Int32
		s.cfg.AfterStop = func(context.Context) {
			if s.State() != Stopping {
				t.Errorf("AfterStop ran in state %s, want stopping (before stopped is reported)", s.State())
			}
			afterStop.Add(1)
		}
		s.Wake()
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		synctest.Wait()
		if eng.stops != 1 || s.State() != Stopped || afterStop.Load() != 1 {
			t.Fatalf("after shutdown: %d stops, state %s, %d AfterStop calls", eng.stops, s.State(), afterStop.Load())
		}
	})
}

// New engine settings: the engine drains (the gate closes at once, work in
// it finishes), stops, and starts once with the new backend.
func TestRestartWithNewSettings(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		old := &fakeEngine{}
		s, g, cancel := setup(t, old, 0)
		defer cancel()
		s.Wake()
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		g.inflight.Store(1)
		g.busy.Store(3)
		next := &fakeEngine{}
		s.Restart(next)
		synctest.Wait()
		if g.ready.Load() {
			t.Fatal("the gate stayed open after new settings arrived")
		}
		time.Sleep(2 * time.Second)
		if old.stops != 0 || next.starts != 0 {
			t.Fatalf("restarted while a request was in the engine (%d stops, %d starts)", old.stops, next.starts)
		}
		g.inflight.Store(0)
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if old.stops != 1 || next.starts != 1 {
			t.Fatalf("after draining: old engine stopped %d times, new one started %d times; want 1 and 1", old.stops, next.starts)
		}
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		if !g.ready.Load() {
			t.Fatal("gate closed after the restart")
		}
	})
}

// Sleep mode: an idle engine sleeps first, wakes on the next request in
// its (short) wake time, and is stopped only after the idle timeout.
func TestSleepMode(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eng := &fakeEngine{}
		g := &gate{}
		var sleeps, wakes atomic.Int32
		s := New(Config{Probe: eng.healthy, ProbeInterval: 50 * time.Millisecond, IdleTimeout: time.Minute, SleepAfter: 10 * time.Second,
			StartTimeout: time.Minute, ExpectedStart: 10 * time.Second,
			Sleep:  func(context.Context, int) error { sleeps.Add(1); return nil },
			WakeUp: func(context.Context, int) error { wakes.Add(1); time.Sleep(200 * time.Millisecond); return nil },
		}, eng, g, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go s.Run(ctx)
		s.Wake()
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if s.State() != Sleeping || g.ready.Load() || sleeps.Load() != 1 {
			t.Fatalf("after 11s idle: %s, gate open %v, %d sleeps", s.State(), g.ready.Load(), sleeps.Load())
		}
		if r := s.RemainingStart(); r != expectedWake {
			t.Fatalf("RemainingStart while sleeping = %s, want the expected wake %s", r, expectedWake)
		}
		start := time.Now()
		s.Wake()
		for s.State() != Ready {
			time.Sleep(time.Millisecond)
		}
		// The poll above runs every millisecond.
		if took := time.Since(start); took < 200*time.Millisecond || took > 201*time.Millisecond || eng.starts != 1 || !g.ready.Load() {
			t.Fatalf("woke in %s with %d starts (gate open %v); want the 200ms wake and no new start", took, eng.starts, g.ready.Load())
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if s.State() != Stopped || eng.stops != 1 {
			t.Fatalf("after the idle timeout: %s, %d stops", s.State(), eng.stops)
		}
	})
}

// A start that BeforeStart refuses (the GPU's memory is taken) fails like
// a failed start: the waiting requests get its message, the engine is not
// started, and the start is retried with backoff while work waits.
func TestBeforeStartRefuses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		eng := &fakeEngine{}
		s, g, cancel := setup(t, eng, 0)
		defer cancel()
		var refuse atomic.Bool
		refuse.Store(true)
		var ready atomic.Int32
		s.cfg.BeforeStart = func(context.Context) error {
			if refuse.Load() {
				return errors.New("GPU 0 has 1.00 GiB free")
			}
			return nil
		}
		s.cfg.OnReady = func(context.Context) { ready.Add(1) }
		g.busy.Store(1)
		s.Wake()
		synctest.Wait()
		msg, _ := g.message.Load().(string)
		if s.State() != Failed || eng.starts != 0 || !strings.Contains(msg, "GPU 0 has 1.00 GiB free") {
			t.Fatalf("refused start: state %s, %d starts, message %q", s.State(), eng.starts, msg)
		}
		refuse.Store(false)
		time.Sleep(2 * time.Second) // past the first backoff
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		if eng.starts != 1 || ready.Load() != 1 {
			t.Fatalf("after the refusal cleared: %d starts, OnReady %d times", eng.starts, ready.Load())
		}
	})
}

// New settings (a reload) apply to the running supervisor without a
// restart of the engine: the idle and sleep delays, the start timeout of a
// start in progress, the readiness probe, and the expected start time
// until a start has been measured.
func TestSetConfigApplies(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	base := func(eng *fakeEngine) Config {
		return Config{Probe: eng.healthy, ProbeInterval: 50 * time.Millisecond, IdleTimeout: time.Hour,
			StartTimeout: time.Hour, ExpectedStart: 10 * time.Second}
	}
	run := func(t *testing.T, eng *fakeEngine, cfg Config) (*Supervisor, *gate) {
		g := &gate{}
		s := New(cfg, eng, g, nil, quiet)
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(func() { cancel(); synctest.Wait() })
		go s.Run(ctx)
		return s, g
	}
	ready := func(s *Supervisor) {
		s.Wake()
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
	}

	t.Run("idle timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			eng := &fakeEngine{}
			cfg := base(eng)
			s, _ := run(t, eng, cfg)
			ready(s)
			cfg.IdleTimeout = 10 * time.Second
			s.SetConfig(cfg)
			time.Sleep(11 * time.Second)
			synctest.Wait()
			if s.State() != Stopped || eng.stopCount() != 1 {
				t.Fatalf("11s idle after idle_timeout went from 1h to 10s: %s, %d stops; want stopped", s.State(), eng.stopCount())
			}
		})
	})
	t.Run("sleep after", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			eng := &fakeEngine{}
			var sleeps atomic.Int32
			cfg := base(eng)
			cfg.Sleep = func(context.Context, int) error { sleeps.Add(1); return nil }
			s, _ := run(t, eng, cfg)
			ready(s)
			cfg.SleepAfter = 10 * time.Second
			s.SetConfig(cfg)
			time.Sleep(11 * time.Second)
			synctest.Wait()
			if s.State() != Sleeping || sleeps.Load() != 1 {
				t.Fatalf("11s idle after sleep_after went from 0s to 10s: %s, %d sleeps; want sleeping", s.State(), sleeps.Load())
			}
		})
	})
	t.Run("start timeout of a start in progress", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			eng := &fakeEngine{startDelay: 24 * time.Hour}
			cfg := base(eng)
			s, _ := run(t, eng, cfg)
			s.Wake()
			time.Sleep(5 * time.Second)
			cfg.StartTimeout = 10 * time.Second
			s.SetConfig(cfg)
			time.Sleep(4 * time.Second)
			synctest.Wait()
			if s.State() != Starting {
				t.Fatalf("9s into a start with a 10s start_timeout: %s, want starting", s.State())
			}
			time.Sleep(2 * time.Second)
			synctest.Wait()
			if s.State() != Failed || !strings.Contains(s.Info().LastFailure, "(10s)") {
				t.Fatalf("11s into a start after start_timeout went from 1h to 10s: %s (%q); want failed within 10s", s.State(), s.Info().LastFailure)
			}
		})
	})
	t.Run("readiness probe", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			eng := &fakeEngine{}
			cfg := base(eng)
			cfg.Probe = func(context.Context) bool { return false } // a ready_path the engine does not serve
			s, _ := run(t, eng, cfg)
			s.Wake()
			time.Sleep(time.Second)
			if s.State() != Starting {
				t.Fatalf("with a probe that never answers: %s, want starting", s.State())
			}
			cfg.Probe = eng.healthy
			s.SetConfig(cfg)
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
			if s.State() != Ready {
				t.Fatalf("after the probe was replaced by one that answers: %s, want ready", s.State())
			}
		})
	})
	t.Run("expected start time", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			eng := &fakeEngine{startDelay: 2 * time.Second}
			cfg := base(eng)
			s, _ := run(t, eng, cfg)
			cfg.ExpectedStart = 20 * time.Second
			s.SetConfig(cfg)
			synctest.Wait()
			if got := s.RemainingStart(); got != 20*time.Second {
				t.Fatalf("before any start, after expected_start_time went from 10s to 20s: RemainingStart %s, want 20s", got)
			}
			ready(s)
			measured := s.LearnedStart()
			cfg.ExpectedStart = 40 * time.Second
			s.SetConfig(cfg)
			synctest.Wait()
			if got := s.LearnedStart(); got != measured {
				t.Fatalf("after a measured start, expected_start_time moved the estimate from %s to %s; want it kept", measured, got)
			}
		})
	})
}

// New engine settings while the engine sleeps: it is restarted with them
// (woken, it would serve with the old ones), and a request that arrives
// meanwhile does not wake the old engine.
func TestRestartWhileSleeping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		old := &fakeEngine{}
		g := &gate{}
		var wakes atomic.Int32
		s := New(Config{Probe: old.healthy, ProbeInterval: 50 * time.Millisecond, IdleTimeout: time.Hour, SleepAfter: 10 * time.Second,
			StartTimeout: time.Minute, ExpectedStart: 10 * time.Second,
			Sleep:  func(context.Context, int) error { return nil },
			WakeUp: func(context.Context, int) error { wakes.Add(1); return nil },
		}, old, g, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go s.Run(ctx)
		s.Wake()
		for s.State() != Ready {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if s.State() != Sleeping {
			t.Fatalf("after 11s idle: %s, want sleeping", s.State())
		}
		next := &fakeEngine{}
		s.Restart(next)
		s.Wake()
		time.Sleep(300 * time.Millisecond)
		synctest.Wait()
		if old.stopCount() != 1 || next.startCount() != 1 || wakes.Load() != 0 {
			t.Fatalf("new settings while sleeping: old engine stopped %d times, new one started %d times, %d wake-ups; want 1, 1, 0",
				old.stopCount(), next.startCount(), wakes.Load())
		}
	})
}
