package supervisor

import (
	"context"
	"errors"
	"fmt"
	"github.com/llmlab/llmlab/internal/lockedbuf"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeSleep is vLLM's sleep mode as the supervisor sees it: a sleep while
// asleep is ignored (vLLM's executor does so), and a wake-up takes its
// level's time. It records the calls.
type fakeSleep struct {
	mu        sync.Mutex
	level     int
	calls     []string
	wake      [3]time.Duration
	failSleep bool
	failWake  bool
}

func (f *fakeSleep) Sleep(_ context.Context, level int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("sleep %d", level))
	if f.failSleep {
		return errors.New("POST /sleep: 404 Not Found")
	}
	if f.level == 0 {
		f.level = level
	}
	return nil
}

func (f *fakeSleep) WakeUp(_ context.Context, level int) error {
	f.mu.Lock()
	f.calls = append(f.calls, fmt.Sprintf("wake %d", level))
	asleep, d, fail := f.level, f.wake[f.level], f.failWake
	f.mu.Unlock()
	if asleep != level {
		return fmt.Errorf("woken from level %d, asleep at level %d", level, asleep)
	}
	time.Sleep(d)
	if fail {
		return errors.New("POST /wake_up: 500")
	}
	f.mu.Lock()
	f.level = 0
	f.mu.Unlock()
	return nil
}

// state is the fake engine's level and the calls so far.
func (f *fakeSleep) state() (int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.level, slices.Clone(f.calls)
}

// ladder runs a supervisor with the ladder 10s (level 1), 1m (level 2),
// 10m (stop) unless mod changes it, woken once and ready; it returns the
// supervisor, its gate, the engine, vLLM's side and the log.
func ladder(t *testing.T, mod func(*Config)) (*Supervisor, *gate, *fakeEngine, *fakeSleep, *lockedbuf.Buffer) {
	eng := &fakeEngine{startDelay: 5 * time.Second}
	vllm := &fakeSleep{wake: [3]time.Duration{0, 200 * time.Millisecond, 1200 * time.Millisecond}}
	cfg := Config{Probe: eng.healthy, ProbeInterval: 50 * time.Millisecond, StartTimeout: time.Minute, ExpectedStart: 10 * time.Second,
		SleepAfter: 10 * time.Second, DeepSleepAfter: time.Minute, IdleTimeout: 10 * time.Minute, Sleep: vllm.Sleep, WakeUp: vllm.WakeUp}
	if mod != nil {
		mod(&cfg)
	}
	g := &gate{}
	var logs lockedbuf.Buffer
	s := New(cfg, eng, g, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); synctest.Wait() })
	go s.Run(ctx)
	s.Wake()
	for s.State() != Ready {
		time.Sleep(10 * time.Millisecond)
	}
	return s, g, eng, vllm, &logs
}

// The rungs in order: ready until sleep_after, then level 1, then at
// deep_sleep_after level 2 (woken first: vLLM cannot deepen a sleep in
// place), then stopped at idle_timeout; the gate is closed on every sleep
// rung and the state gauge follows.
func TestLadderRungsInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, g, eng, vllm, _ := ladder(t, nil)
		steps := []struct {
			after time.Duration // idle time, from the engine's readiness
			want  State
			level int
			calls []string
		}{
			{9 * time.Second, Ready, 0, nil},
			{11 * time.Second, Sleeping, 1, []string{"sleep 1"}},
			{59 * time.Second, Sleeping, 1, []string{"sleep 1"}},
			{62 * time.Second, DeepSleeping, 2, []string{"sleep 1", "wake 1", "sleep 2"}},
			{9 * time.Minute, DeepSleeping, 2, []string{"sleep 1", "wake 1", "sleep 2"}},
			{10*time.Minute + time.Second, Stopped, 2, []string{"sleep 1", "wake 1", "sleep 2"}},
		}
		t0 := time.Now()
		for _, st := range steps {
			time.Sleep(time.Until(t0.Add(st.after)))
			synctest.Wait()
			level, calls := vllm.state()
			if s.State() != st.want || level != st.level || !slices.Equal(calls, st.calls) {
				t.Fatalf("idle %s: %s, vLLM at level %d after %q; want %s, level %d after %q", st.after, s.State(), level, calls, st.want, st.level, st.calls)
			}
			if g.ready.Load() != (st.want == Ready) {
				t.Fatalf("idle %s (%s): gate open %v", st.after, st.want, g.ready.Load())
			}
			for _, x := range states {
				want := 0.0
				if x == st.want {
					want = 1
				}
				if got := testutil.ToFloat64(s.metrics.state.WithLabelValues(string(x))); got != want {
					t.Fatalf("idle %s: llmlab_engine_state{state=%q} = %g, want %g", st.after, x, got, want)
				}
			}
		}
		if eng.stopCount() != 1 || eng.startCount() != 1 {
			t.Fatalf("%d stops, %d starts; want one of each", eng.stopCount(), eng.startCount())
		}
	})
}

// A request wakes the engine from whichever rung it is on: from level 1
// and level 2 by waking it at that level (admission expecting the level's
// wake time, learned once measured, counted down while it runs), from the
// stop by a start.
func TestLadderWakeFromEachRung(t *testing.T) {
	for _, tc := range []struct {
		idle      time.Duration
		rung      State
		expect    time.Duration // RemainingStart on the rung, before any wake
		took      time.Duration // the wake (or start)
		wakeCall  string
		learnedAs time.Duration
	}{
		{11 * time.Second, Sleeping, expectedWake, 200 * time.Millisecond, "wake 1", 200 * time.Millisecond},
		{62 * time.Second, DeepSleeping, expectedDeepWake, 1200 * time.Millisecond, "wake 2", 1200 * time.Millisecond},
		{11 * time.Minute, Stopped, 10 * time.Second, 5 * time.Second, "", 0},
	} {
		t.Run(string(tc.rung), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s, g, eng, vllm, _ := ladder(t, nil)
				time.Sleep(tc.idle)
				synctest.Wait()
				if s.State() != tc.rung {
					t.Fatalf("after %s idle: %s, want %s", tc.idle, s.State(), tc.rung)
				}
				expect := tc.expect
				if tc.rung == Stopped {
					expect = s.LearnedStart() // learned from the first start
				}
				if got := s.RemainingStart(); got != expect {
					t.Fatalf("RemainingStart on %s = %s, want %s", tc.rung, got, expect)
				}
				_, before := vllm.state()
				start := time.Now()
				s.Wake()
				if tc.rung == DeepSleeping {
					time.Sleep(600 * time.Millisecond)
					if got := s.RemainingStart(); got != expectedDeepWake-600*time.Millisecond {
						t.Fatalf("600ms into the level-2 wake, RemainingStart = %s, want %s", got, expectedDeepWake-600*time.Millisecond)
					}
				}
				for s.State() != Ready {
					time.Sleep(time.Millisecond)
				}
				took := time.Since(start)
				if tc.rung == Stopped {
					if eng.startCount() != 2 || took < tc.took {
						t.Fatalf("from stopped: %d starts, ready after %s; want a second start of %s", eng.startCount(), took, tc.took)
					}
					return
				}
				if took < tc.took || took > tc.took+time.Millisecond {
					t.Fatalf("woke from %s in %s, want %s", tc.rung, took, tc.took)
				}
				_, after := vllm.state()
				if got := after[len(before):]; !slices.Equal(got, []string{tc.wakeCall}) || !g.ready.Load() || eng.startCount() != 1 {
					t.Fatalf("woke from %s with %q (gate open %v, %d starts); want %q alone", tc.rung, got, g.ready.Load(), eng.startCount(), tc.wakeCall)
				}
				if got := s.ExpectedWake(tc.rung.SleepLevel()); got != tc.learnedAs {
					t.Fatalf("learned wake from %s: %s, want the measured %s", tc.rung, got, tc.learnedAs)
				}
				if n := testutil.CollectAndCount(s.metrics.wakeTime); n != 2 {
					t.Fatalf("llmlab_engine_wake_seconds has %d series, want one per level", n)
				}
			})
		})
	}
}

// When the host cannot hold the weights, the engine sleeps at level 2 at
// sleep_after instead of level 1, the log says why, and nothing more
// happens at deep_sleep_after; the wake is level 2's.
func TestLadderHostCannotHoldWeights(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var asked int
		s, _, _, vllm, logs := ladder(t, func(c *Config) {
			c.HostHoldsWeights = func(context.Context) error {
				asked++
				return errors.New("the host has 1.00 GiB available; the weights need 3.60 GiB")
			}
		})
		time.Sleep(11 * time.Second)
		synctest.Wait()
		level, calls := vllm.state()
		if s.State() != DeepSleeping || level != 2 || !slices.Equal(calls, []string{"sleep 2"}) || asked != 1 {
			t.Fatalf("at sleep_after with no room for the weights: %s, vLLM at level %d after %q, host asked %d times; want deep_sleeping after one sleep 2",
				s.State(), level, calls, asked)
		}
		if !strings.Contains(logs.String(), "sleeping at level 2 instead of 1") || !strings.Contains(logs.String(), "the weights need 3.60 GiB") {
			t.Fatalf("the log does not say why:\n%s", logs)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if _, calls := vllm.state(); len(calls) != 1 || s.State() != DeepSleeping {
			t.Fatalf("at deep_sleep_after, already at level 2: %s after %q; want nothing more", s.State(), calls)
		}
		s.Wake()
		for s.State() != Ready {
			time.Sleep(time.Millisecond)
		}
		if _, calls := vllm.state(); calls[len(calls)-1] != "wake 2" {
			t.Fatalf("woken with %q, want wake 2", calls)
		}
	})
}

// The deepest rung whose time has passed wins: with no level 1, or when a
// reload shortens the rungs past the idle time, the engine goes from ready
// straight to level 2 (one sleep, no wake), or straight to stopped.
func TestLadderSkipsPassedRungs(t *testing.T) {
	t.Run("no level 1", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s, _, _, vllm, _ := ladder(t, func(c *Config) { c.SleepAfter = 0 })
			time.Sleep(61 * time.Second)
			synctest.Wait()
			if _, calls := vllm.state(); s.State() != DeepSleeping || !slices.Equal(calls, []string{"sleep 2"}) {
				t.Fatalf("without level 1, idle 61s: %s after %q; want deep_sleeping after sleep 2", s.State(), calls)
			}
		})
	})
	t.Run("reload past two rungs", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s, _, _, vllm, _ := ladder(t, func(c *Config) { c.SleepAfter, c.DeepSleepAfter = 0, 0 })
			time.Sleep(70 * time.Second)
			cfg := s.cfg
			cfg.SleepAfter, cfg.DeepSleepAfter = 10*time.Second, time.Minute
			s.SetConfig(cfg)
			time.Sleep(time.Second)
			synctest.Wait()
			if _, calls := vllm.state(); s.State() != DeepSleeping || !slices.Equal(calls, []string{"sleep 2"}) {
				t.Fatalf("70s idle, then the rungs set to 10s and 1m: %s after %q; want deep_sleeping after sleep 2 alone", s.State(), calls)
			}
		})
	})
	t.Run("stop past the sleep rungs", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s, _, eng, vllm, _ := ladder(t, func(c *Config) { c.SleepAfter, c.DeepSleepAfter, c.IdleTimeout = 0, 0, time.Hour })
			time.Sleep(20 * time.Minute)
			cfg := s.cfg
			cfg.SleepAfter, cfg.DeepSleepAfter, cfg.IdleTimeout = 10*time.Second, time.Minute, 10*time.Minute
			s.SetConfig(cfg)
			time.Sleep(time.Second)
			synctest.Wait()
			if _, calls := vllm.state(); s.State() != Stopped || len(calls) != 0 || eng.stopCount() != 1 {
				t.Fatalf("20m idle, then a 10m ladder: %s after %q, %d stops; want stopped, never asleep", s.State(), calls, eng.stopCount())
			}
		})
	})
}

// Work that arrives while the engine is woken to sleep deeper keeps it
// awake: it is served at once, not after a level-2 sleep and wake.
func TestLadderWorkDuringDeepening(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, g, _, vllm, _ := ladder(t, nil)
		time.Sleep(60*time.Second + 100*time.Millisecond) // the deepening's wake (200ms) is under way
		g.busy.Store(1)
		s.Wake()
		time.Sleep(time.Second)
		synctest.Wait()
		if _, calls := vllm.state(); s.State() != Ready || !g.ready.Load() || !slices.Equal(calls, []string{"sleep 1", "wake 1"}) {
			t.Fatalf("work during the wake to sleep deeper: %s (gate open %v) after %q; want ready after wake 1", s.State(), g.ready.Load(), calls)
		}
	})
}

// Failures: a sleep that fails keeps the engine ready and is tried again
// after the rung's time, while the idle time still runs to the stop; a
// wake to sleep deeper that fails leaves the engine unknown, so it is
// stopped.
func TestLadderFailures(t *testing.T) {
	t.Run("sleep fails", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s, g, eng, vllm, _ := ladder(t, nil)
			vllm.mu.Lock()
			vllm.failSleep = true
			vllm.mu.Unlock()
			time.Sleep(11 * time.Second)
			synctest.Wait()
			if s.State() != Ready || !g.ready.Load() {
				t.Fatalf("a failed sleep: %s (gate open %v), want ready", s.State(), g.ready.Load())
			}
			time.Sleep(10 * time.Minute)
			synctest.Wait()
			_, calls := vllm.state()
			// Level 1 tried at 10s, 20s, ..., 50s; level 2 at 1m, 2m, ..., 9m.
			if s.State() != Stopped || eng.stopCount() != 1 || len(calls) != 14 {
				t.Fatalf("sleeps failing: after the idle timeout %s, %d stops, %d sleeps tried; want stopped, 14 tries (level 1 each 10s, then level 2 each minute)", s.State(), eng.stopCount(), len(calls))
			}
		})
	})
	t.Run("wake to sleep deeper fails", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s, g, eng, vllm, logs := ladder(t, nil)
			time.Sleep(11 * time.Second)
			synctest.Wait()
			vllm.mu.Lock()
			vllm.failWake = true
			vllm.mu.Unlock()
			time.Sleep(51 * time.Second)
			synctest.Wait()
			if s.State() != Stopped || g.ready.Load() || eng.stopCount() != 1 || !strings.Contains(logs.String(), "did not wake up to sleep deeper") {
				t.Fatalf("the wake to sleep deeper failed: %s, %d stops; want stopped\n%s", s.State(), eng.stopCount(), logs)
			}
		})
	})
}
