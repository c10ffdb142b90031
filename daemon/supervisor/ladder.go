package supervisor

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The sleep ladder: an idle engine goes down rungs, each after its own
// time since the last request (Config.SleepAfter, DeepSleepAfter,
// IdleTimeout; 0 leaves a rung out):
//
//	ready --> sleeping (vLLM's level 1: the weights in host memory)
//	      --> deep_sleeping (level 2: the weights discarded)
//	      --> stopped
//
// The housekeeper moves the engine to the deepest rung whose time has
// passed, so a rung whose time has also passed for the next is skipped.
// The next request wakes it from whichever rung it is on; the gate stays
// closed meanwhile, so requests wait as in a cold start, and admission
// expects the rung's learned wake time (RemainingStart).
//
//  1. ready --> sleeping: when Config.HostHoldsWeights says the host
//     cannot hold the weights now, the engine sleeps at level 2 instead.
//  2. ready --> deep_sleeping: a sleep at level 2.
//  3. sleeping --> deep_sleeping: vLLM cannot deepen a sleep in place (its
//     executor ignores a sleep while asleep: vllm/v1/executor/abstract.py),
//     so the engine is woken (level 1), then put to sleep at level 2. Work
//     that arrives during the wake keeps it awake. A wake that fails
//     leaves the engine in a state llmlabd cannot know: it is stopped.
//  4. a sleep that fails keeps the engine ready; the sleep is tried again
//     after the rung's time once more, while the idle time still counts
//     toward the stop.

// Expected wake-up times, assumed until one is measured: level 1 copies
// the weights back from host memory (vLLM documents 0.1-0.4 s for a small
// model); level 2 reads them from disk, about a second for a 1 GB model at
// 1 GB/s, so three seconds leave room for a larger model or a slower disk.
const (
	expectedWake     = 500 * time.Millisecond
	expectedDeepWake = 3 * time.Second
)

// SleepLevel is vLLM's sleep level of the state: 1 for Sleeping, 2 for
// DeepSleeping, 0 for the others.
func (s State) SleepLevel() int {
	switch s {
	case Sleeping:
		return 1
	case DeepSleeping:
		return 2
	}
	return 0
}

// sleepState is the state of an engine asleep at level.
func sleepState(level int) State {
	if level == 2 {
		return DeepSleeping
	}
	return Sleeping
}

// depth orders the ladder's rungs: ready, sleeping, deep_sleeping,
// stopped.
func depth(s State) int {
	switch s {
	case Ready:
		return 0
	case Sleeping:
		return 1
	case DeepSleeping:
		return 2
	}
	return 3
}

// rung is the deepest rung whose time has passed after idle.
func (c Config) rung(idle time.Duration) State {
	switch {
	case c.IdleTimeout > 0 && idle >= c.IdleTimeout:
		return Stopped
	case c.DeepSleepAfter > 0 && idle >= c.DeepSleepAfter:
		return DeepSleeping
	case c.SleepAfter > 0 && idle >= c.SleepAfter:
		return Sleeping
	}
	return Ready
}

// rungTime is the idle time of a sleep rung.
func (c Config) rungTime(s State) time.Duration {
	if s == DeepSleeping {
		return c.DeepSleepAfter
	}
	return c.SleepAfter
}

// wakeTimeout bounds a wake-up: level 1 copies the weights back from host
// memory; level 2 reads them from disk, which takes no longer than a
// start does.
func (c Config) wakeTimeout(level int) time.Duration {
	if level == 2 {
		return max(c.StartTimeout, 30*time.Second)
	}
	return 30 * time.Second
}

// ExpectedWake is the learned wake-up time from sleep level 1 or 2.
func (s *Supervisor) ExpectedWake(level int) time.Duration {
	return time.Duration(s.learnedWake[min(max(level, 1), 2)].Load())
}

// MeasuredWake is the learned wake-up time from level 1 or 2, and whether
// one was measured (or kept from an earlier run) rather than assumed.
func (s *Supervisor) MeasuredWake(level int) (time.Duration, bool) {
	if level != 1 && level != 2 {
		return 0, false
	}
	return time.Duration(s.learnedWake[level].Load()), s.wakeMeasured[level].Load()
}

// SetLearnedWake restores a wake-up time kept from an earlier run.
func (s *Supervisor) SetLearnedWake(level int, d time.Duration) {
	if d > 0 && (level == 1 || level == 2) {
		s.learnedWake[level].Store(int64(d))
		s.wakeMeasured[level].Store(true)
	}
}

// wakeUp wakes the engine from level and learns how long it took: the
// first measured wake replaces the assumed one, later ones are averaged
// in. While it runs, RemainingStart counts the wake down.
func (s *Supervisor) wakeUp(ctx context.Context, level int) error {
	t0 := time.Now()
	s.wakingAt.Store(int64(t0.Sub(s.epoch)))
	defer s.wakingAt.Store(0)
	wctx, cancel := context.WithTimeout(ctx, s.cfg.wakeTimeout(level))
	defer cancel()
	if err := s.cfg.WakeUp(wctx, level); err != nil {
		return err
	}
	took := time.Since(t0)
	learned := took
	if s.wakeMeasured[level].Load() {
		learned = time.Duration(s.learnedWake[level].Load())/2 + took/2
	}
	s.learnedWake[level].Store(int64(learned))
	s.wakeMeasured[level].Store(true)
	s.metrics.wakeTime.WithLabelValues(fmt.Sprint(level)).Observe(took.Seconds())
	s.log.Info("engine woke up", "sleep_level", level, "wake_time", took)
	return nil
}

// sleep puts the ready engine to sleep at level, and says so.
func (s *Supervisor) sleep(ctx context.Context, level int, why string) error {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.cfg.Sleep(sctx, level); err != nil {
		return err
	}
	s.log.Info("engine idle; sleeping", "sleep_level", level, "reason", why)
	return nil
}

// errEngineUnknown is a descent that failed half-way: the engine may be
// neither asleep nor ready, and is to be stopped.
var errEngineUnknown = errors.New("engine state unknown")

// descend moves an idle engine that is ready or asleep (from) down to the
// sleep rung target, with the gate closed, and returns the state it is in
// then: target, Sleeping's level 2 when the host cannot hold the weights,
// or Ready where the engine stays awake (a sleep that failed, with the
// error; work that arrived during a wake). An error wrapping
// errEngineUnknown asks for the engine to be stopped.
func (s *Supervisor) descend(ctx context.Context, from, target State) (State, error) {
	level, why := target.SleepLevel(), fmt.Sprintf("idle for %s", s.cfg.rungTime(target))
	if level == 1 && s.cfg.HostHoldsWeights != nil {
		if err := s.cfg.HostHoldsWeights(ctx); err != nil {
			// Level 1 would copy the weights into host memory that
			// cannot hold them: level 2 frees the GPU as asked, and
			// the host's memory too.
			level, why = 2, fmt.Sprintf("idle for %s; not level 1: %v", s.cfg.SleepAfter, err)
			s.log.Warn("the host cannot hold the engine's weights; sleeping at level 2 instead of 1", "reason", err)
		}
	}
	if from.SleepLevel() >= level {
		return from, nil
	}
	if from == Sleeping {
		// vLLM ignores a sleep while asleep: wake, then sleep deeper.
		if err := s.wakeUp(ctx, 1); err != nil {
			return "", fmt.Errorf("waking the engine from level 1 to sleep at level 2: %w (%w)", err, errEngineUnknown)
		}
		select {
		case <-s.wake:
			s.log.Info("work arrived while the engine was woken to sleep deeper; it stays awake")
			return Ready, nil
		default:
		}
		if s.gate.Busy() > 0 {
			return Ready, nil
		}
	}
	if err := s.sleep(ctx, level, why); err != nil {
		return Ready, err
	}
	return sleepState(level), nil
}
