package supervisor

import "time"

// started is when the current start began, on the monotonic clock (a jump
// of the wall clock does not change how long a start took).
func (s *Supervisor) started() time.Time { return s.epoch.Add(time.Duration(s.startedAt.Load())) }

// RemainingStart is how much longer the engine is expected to take to be
// ready: 0 when ready, the learned start time when stopped, the learned
// wake time of its sleep level when asleep.
func (s *Supervisor) RemainingStart() time.Duration {
	learned := time.Duration(s.learnedStart.Load())
	st := s.State()
	switch st {
	case Ready:
		return 0
	case Starting:
		elapsed := time.Since(s.started())
		// Past the expectation, assume a little more rather than none.
		return max(learned-elapsed, learned/10)
	case Sleeping, DeepSleeping:
		// The rung's wake time; during a wake, what is left of it.
		wake := s.ExpectedWake(st.SleepLevel())
		if at := s.wakingAt.Load(); at != 0 {
			return max(wake-time.Since(s.epoch.Add(time.Duration(at))), wake/10)
		}
		return wake
	}
	return learned
}

// LearnedStart is the current estimate of the engine's start time.
func (s *Supervisor) LearnedStart() time.Duration { return time.Duration(s.learnedStart.Load()) }

// SetLearnedStart restores an estimate kept from an earlier run.
func (s *Supervisor) SetLearnedStart(d time.Duration) {
	if d > 0 {
		s.learnedStart.Store(int64(d))
		s.measured.Store(true)
	}
}

// learn folds a measured start time into the estimate.
func (s *Supervisor) learn(took time.Duration) {
	old := time.Duration(s.learnedStart.Load())
	s.measured.Store(true)
	if old == 0 {
		s.learnedStart.Store(int64(took))
		return
	}
	s.learnedStart.Store(int64(old/2 + took/2))
}
