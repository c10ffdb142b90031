package queue

import (
	"math"
	"time"
)

// LateTarget is the share of interactive answers admission aims to see
// finish past the objective: below the 5% a 95th-percentile objective
// allows, so that noise and the engine's own slow spells still fit.
const LateTarget = 0.04

// TailLevel is the quantile of the engine model's spread at which the
// in-flight limit is chosen and a request's tail time is told: at the
// limit, a typical request is late no more often than LateTarget.
const TailLevel = 1 - LateTarget

// The late budget's sizes.
const (
	// budgetWindow is how many recent judged answers the share of late
	// ones is read from.
	budgetWindow = 200
	// budgetPrior is how many answers in time a fresh budget counts
	// before any came: one certainly late request in 26 is within
	// LateTarget. Without it a fresh llmlabd refused the third request
	// of a burst if its chance was a third (0.3 over three), at the
	// engine's own rate: one refusal in a 36-request find-max probe fails
	// the probe (gtx1650-derived, docs/benchmarks.md).
	budgetPrior = 25
	// calibSamples is how many recent answers' errors the chance of being
	// late is read from; minCalib how many it takes before they are used.
	calibSamples = 256
	minCalib     = 20
	// nearFactor: the answers whose errors stand for a request's are
	// those predicted within this factor of it.
	nearFactor = 1.25
	// priorSigma is the spread assumed before minCalib answers: the log of
	// actual over predicted time, normal with this deviation (1.2 times the
	// prediction 95 times in 100). A new model's predictions are at their
	// least certain then, and a request predicted at the objective has
	// about even odds.
	priorSigma = 0.111
)

// lateBudget decides whether admission can afford a request that may end
// past the objective. The objective is a 95th percentile: a share of the
// answers may be late, and a refusal is an error, of which far fewer may
// be. So a request is refused only when its chance of being late is more
// than LateTarget and admitting it would take the share of late answers
// expected among the recent and running ones past LateTarget:
//
//	chance:  the share of recent answers predicted about as long that
//	         took longer than admission predicted for them (wait plus
//	         engine time) by more than this request's prediction falls
//	         short of the objective;
//	budget:  (late answers of the last budgetWindow + the chances of the
//	         judged requests not yet answered + this one's chance)
//	         / (those answers, at least budgetPrior + those requests + 1)
//	         <= LateTarget.
//
// At the engine's own sustainable rate few requests are near the
// objective and the budget admits them: the engine alone answers them,
// late or not, within a 95th-percentile objective. Overloaded, the queue
// fills until new requests' chances rise and the budget admits only as
// many near the objective as the share allows. The chances are measured
// on the decisions themselves (the wait's error included), so an engine
// whose waits are hard to predict is judged with a wider spread.
type lateBudget struct {
	errs  [calibSamples]predError
	nErrs int

	outcomes [budgetWindow]bool
	nOut     int
	lates    int

	pending  float64
	nPending int
}

// predError is one judged answer's end-to-end time over what admission
// predicted for it, and that prediction.
type predError struct {
	pred  float64 // seconds
	ratio float64
}

// chance is the probability that a request predicted to take pred end to
// end ends past slo: the share of the recent answers predicted within
// nearFactor of it that took more than their prediction by more than pred
// falls short of slo, or the prior's before minCalib such answers.
//
// The errors are read from answers predicted about as long because they
// depend on the prediction: a request predicted short on a quiet engine
// may take twice that when a burst joins it and still be far inside the
// objective. Read from all answers, or from those within a factor of two,
// those doublings refused requests at the engine's own rate that would
// have been answered in time (on gtx1650-derived, 200/50: chances of
// 13-30% at 2.4-4 s of 5 s, with none of the recent answers late). And
// they are read as seconds over the prediction, not as a ratio to it:
// the ratios of neighbours predicted a quarter shorter, scaled up to a
// request near the objective, made it 11-51% likely to be late at 3x
// while none of the answers was late, and refused 6% of the goodput.
func (b *lateBudget) chance(pred, slo time.Duration) float64 {
	if pred <= 0 {
		return 0
	}
	p, room := pred.Seconds(), (slo - pred).Seconds()
	near, above := 0, 0
	for _, e := range b.errs[:min(b.nErrs, calibSamples)] {
		if e.pred >= p/nearFactor && e.pred <= p*nearFactor {
			near++
			if e.pred*(e.ratio-1) > room {
				above++
			}
		}
	}
	if near < minCalib {
		if slo <= 0 {
			return 1
		}
		return 0.5 * math.Erfc(math.Log(slo.Seconds()/p)/(priorSigma*math.Sqrt2))
	}
	return float64(above) / float64(near)
}

// share is the late share expected among the recent answers and the
// judged requests not yet answered, with one more of chance p.
func (b *lateBudget) share(p float64) float64 {
	return (float64(b.lates) + b.pending + p) / float64(max(min(b.nOut, budgetWindow), budgetPrior)+b.nPending+1)
}

// affords reports whether a request of chance p may be admitted.
func (b *lateBudget) affords(p float64) bool {
	return p <= LateTarget || b.share(p) <= LateTarget
}

// admitted counts a judged request of chance p as running (or queued).
func (b *lateBudget) admitted(p float64) {
	b.pending += p
	b.nPending++
}

// left takes back a judged request that ends without an answer judged
// against the objective (an error, or a client that left).
func (b *lateBudget) left(p float64) {
	b.pending = max(b.pending-p, 0)
	b.nPending = max(b.nPending-1, 0)
	if b.nPending == 0 {
		b.pending = 0
	}
}

// answered records a judged request of chance p that was answered, or
// refused at its queue deadline, in took against the pred admission
// predicted for it.
func (b *lateBudget) answered(p float64, took, pred, slo time.Duration) {
	b.left(p)
	late := took > slo
	i := b.nOut % budgetWindow
	if b.nOut >= budgetWindow && b.outcomes[i] {
		b.lates--
	}
	b.outcomes[i] = late
	if late {
		b.lates++
	}
	b.nOut++
	if pred > 0 {
		b.errs[b.nErrs%calibSamples] = predError{pred: pred.Seconds(), ratio: took.Seconds() / pred.Seconds()}
		b.nErrs++
	}
}

// calibration is the errors the chances are read from, oldest first, as
// pairs of prediction (seconds) and ratio.
func (b *lateBudget) calibration() [][2]float64 {
	n := min(b.nErrs, calibSamples)
	out := make([][2]float64, 0, n)
	for i := b.nErrs - n; i < b.nErrs; i++ {
		e := b.errs[i%calibSamples]
		out = append(out, [2]float64{e.pred, e.ratio})
	}
	return out
}

// restore takes errors kept from an earlier run (calibration's), the
// newest calibSamples of them.
func (b *lateBudget) restore(errs [][2]float64) {
	for _, e := range errs[max(len(errs)-calibSamples, 0):] {
		if e[0] > 0 && e[1] > 0 {
			b.errs[b.nErrs%calibSamples] = predError{pred: e[0], ratio: e[1]}
			b.nErrs++
		}
	}
}

// lateShare is the share of the recent answers that were late.
func (b *lateBudget) lateShare() float64 {
	if b.nOut == 0 {
		return 0
	}
	return float64(b.lates) / float64(min(b.nOut, budgetWindow))
}
