package queue

// LateTarget is the share of interactive answers admission aims to see
// finish past the objective: below the 5% a 95th-percentile objective
// allows, so that noise and the engine's own slow spells still fit.
const LateTarget = 0.04

// Bounds of the level admission predicts at: never below the median (a
// request more likely late than not is refused whatever the budget), never
// above the 95th percentile (higher quantiles of a few hundred answers are
// their few slowest, and one bad spell there made admission refuse nearly
// everything for minutes while the level came down again).
const (
	minLevel = 0.5
	maxLevel = 0.95
	// levelStep is how far one late answer moves the level.
	levelStep = 0.03
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

// newLateness starts at the median: a late answer costs the objective
// little (5% may be), a refusal much (0.1% may be), so admission starts by
// refusing only what is more likely late than not, and late answers raise
// the level from there.
func newLateness() lateness { return lateness{level: minLevel} }

// restore sets a level learned in an earlier run, within the bounds (0:
// none learned).
func (l *lateness) restore(level float64) {
	if level > 0 {
		l.level = min(max(level, minLevel), maxLevel)
	}
}

// answered moves the level by one interactive answer's outcome.
func (l *lateness) answered(late bool) {
	if late {
		l.level += levelStep * (1 - LateTarget)
	} else {
		l.level -= levelStep * LateTarget
	}
	l.level = min(max(l.level, minLevel), maxLevel)
}
