package queue

import (
	"math"
	"time"
)

// rateTau is the time constant over which old observations fade.
const rateTau = 20 * time.Second

// minBusy is how much time blocked on slots must be observed before the
// measured rate replaces the nominal one.
const minBusy = 500 * time.Millisecond

// rateEstimator learns the engine's completion rate (sequences per second)
// from completions that happen while requests are waiting for slots: only
// then does the completion rate measure capacity rather than demand. Both
// the completions and the blocked time decay exponentially, so the estimate
// follows an engine whose speed changes.
type rateEstimator struct {
	nominal    float64
	completed  float64 // decayed sequences completed while blocked
	busy       float64 // decayed seconds spent blocked
	last       time.Time
	wasBlocked bool
	// seen latches once enough has been observed: decay shrinks both sums
	// alike, so their ratio stays a valid estimate through idle periods.
	seen bool
}

// update advances the clock to now; blocked is the state from now on.
func (e *rateEstimator) update(now time.Time, blocked bool) {
	if !e.last.IsZero() {
		dt := now.Sub(e.last).Seconds()
		if dt > 0 {
			decay := math.Exp(-dt / rateTau.Seconds())
			e.completed *= decay
			e.busy *= decay
			if e.wasBlocked {
				// Time blocked in the interval, decayed as a whole
				// (the integral of the decay over the interval).
				e.busy += rateTau.Seconds() * (1 - decay)
			}
		}
	}
	e.last = now
	e.wasBlocked = blocked
}

// complete records n sequences finishing at now.
func (e *rateEstimator) complete(now time.Time, n int, blocked bool) {
	e.update(now, blocked)
	if blocked {
		e.completed += float64(n)
	}
	if e.busy >= minBusy.Seconds() && e.completed > 0 {
		e.seen = true
	}
}

func (e *rateEstimator) learned() bool {
	return e.seen && e.busy > 0 && e.completed > 0
}

// rate returns the learned completion rate, or the nominal one.
func (e *rateEstimator) rate() float64 {
	if e.learned() {
		return e.completed / e.busy
	}
	return e.nominal
}

// seed restores a rate learned earlier, weighted as minBusy of observation
// so that fresh measurements soon take over.
func (e *rateEstimator) seed(rate float64) {
	if rate <= 0 {
		return
	}
	e.busy = minBusy.Seconds()
	e.completed = rate * e.busy
	e.seen = true
}
