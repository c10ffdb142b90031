package queue

// LateTarget is the share of interactive answers admission aims to see
// finish past the objective: below the 5% a 95th-percentile objective
// allows, so that noise and the engine's own slow spells still fit.
const LateTarget = 0.04

// Bounds of the level admission predicts at: never below the 75th
// percentile (a level that low would let a burst admit many late ones
// before the level rose again), never above the 99th.
const (
	minLevel = 0.75
	maxLevel = 0.99
	// levelStep is how far one late answer moves the level.
	levelStep = 0.02
)

// lateness chooses the level (a quantile of the engine model's measured
// spread) at which admission predicts a request's time: the objective is
// a 95th percentile, so 5% of the answers may be late, and refusing a
// request that would only have been one of them turns an answer that
// counts into an error. Each interactive answer moves the level: up by
// levelStep x (1 - LateTarget) when it was late (or refused late, at its
// queue deadline), down by levelStep x LateTarget when it was not. It
// settles where LateTarget of the answers are late (a stochastic
// approximation of that quantile): a quiet engine predicted at a lower
// level refuses less, an engine whose answers stray admits less.
type lateness struct {
	level float64
}

func newLateness() lateness { return lateness{level: 0.95} }

// answered moves the level by one interactive answer's outcome.
func (l *lateness) answered(late bool) {
	if late {
		l.level += levelStep * (1 - LateTarget)
	} else {
		l.level -= levelStep * LateTarget
	}
	l.level = min(max(l.level, minLevel), maxLevel)
}
