package queue

import (
	"math"
	"testing"
	"time"
)

// Before any answer is measured, a request predicted at the objective has
// even odds, and one predicted 1.22 times short of it the target's.
func TestLateChancePrior(t *testing.T) {
	var b lateBudget
	slo := 5 * time.Second
	if got := b.chance(slo, slo); math.Abs(got-0.5) > 1e-9 {
		t.Errorf("chance at the objective = %.3f, want 0.5", got)
	}
	if got := b.chance(time.Duration(float64(slo)/1.215), slo); math.Abs(got-LateTarget) > 0.005 {
		t.Errorf("chance 1.215 times short = %.3f, want about %.2f", got, LateTarget)
	}
	if got := b.chance(2*slo, slo); got < 0.99 {
		t.Errorf("chance at twice the objective = %.3f, want about 1", got)
	}
}

// Once measured, the chance is the share of recent answers predicted
// within nearFactor of this one that took longer than predicted by more
// than this one's room before the objective.
func TestLateChanceMeasured(t *testing.T) {
	var b lateBudget
	slo := 5 * time.Second
	// 100 answers predicted at 4 s: 90 took that, 10 half a second more.
	// 100 predicted at 1 s took 3 times that (a burst joined them).
	for i := range 100 {
		took := 4 * time.Second
		if i%10 == 0 {
			took += 500 * time.Millisecond
		}
		b.admitted(0)
		b.answered(0, took, 4*time.Second, slo)
		b.admitted(0)
		b.answered(0, 3*time.Second, time.Second, slo)
	}
	for _, c := range []struct {
		pred time.Duration
		want float64
	}{{4 * time.Second, 0}, {4400 * time.Millisecond, 0}, {4600 * time.Millisecond, 0.1}, {4900 * time.Millisecond, 0.1}} {
		if got := b.chance(c.pred, slo); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("chance of a request predicted %s = %.3f, want %.2f", c.pred, got, c.want)
		}
	}
	// The short ones' errors are their own: 3 times 1.2 s is not late,
	// 3 times 1.7 s is.
	if got := b.chance(1200*time.Millisecond, slo); got != 0 {
		t.Errorf("chance at 1.2 s = %.3f, want 0 (its neighbours took 3 times their 1 s)", got)
	}
	if got := b.chance(1700*time.Millisecond, slo); got == 1 {
		t.Errorf("chance at 1.7 s = %.3f, want the prior's (no neighbour within 1.25 times)", got)
	}
	// Predicted far from both groups: the prior.
	if got, want := b.chance(12*time.Second, slo), (&lateBudget{}).chance(12*time.Second, slo); got != want {
		t.Errorf("chance at 12 s = %.3f, want the prior's %.3f", got, want)
	}
}

// A request likely to be late is admitted while the late share expected
// among the recent answers and those running, it included, stays within
// LateTarget; one whose chance is within LateTarget always is.
func TestLateBudgetAffords(t *testing.T) {
	var b lateBudget
	slo := 5 * time.Second
	if !b.affords(LateTarget) {
		t.Fatal("a request whose chance is the target refused")
	}
	// A fresh budget counts budgetPrior answers in time: one request
	// certain to be late fits (1 / 26), a second beside it does not.
	if !b.affords(1) {
		t.Fatalf("a fresh budget refuses a first likely-late request (share %.3f)", b.share(1))
	}
	b.admitted(1)
	if b.affords(0.2) {
		t.Fatalf("a fresh budget affords a second (share %.3f)", b.share(0.2))
	}
	b.left(1)
	// 24 answered in time and none running: 0.9 / 26 = 3.5%.
	for range 24 {
		b.admitted(0)
		b.answered(0, time.Second, time.Second, slo)
	}
	if !b.affords(0.9) {
		t.Fatalf("after 24 answers in time, a request of chance 0.9 refused (share %.3f)", b.share(0.9))
	}
	b.admitted(0.9)
	if b.affords(0.5) {
		t.Fatalf("a second likely-late request afforded while the first runs (share %.3f)", b.share(0.5))
	}
	// The first leaves without an answer: its chance is given back.
	b.left(0.9)
	if !b.affords(0.9) {
		t.Fatal("a request that left still counts against the budget")
	}
	// Late answers count in full: 2 of 26 late is past the target.
	b.admitted(0.9)
	b.answered(0.9, 6*time.Second, 5*time.Second, slo)
	b.admitted(0.9)
	b.answered(0.9, 6*time.Second, 5*time.Second, slo)
	if b.affords(0.1) || b.lateShare() != 2.0/26 {
		t.Fatalf("late share %.3f, and a request of chance 0.1 afforded", b.lateShare())
	}
	if !b.affords(0.01) {
		t.Fatal("a request almost certain to make it refused because others were late")
	}
}

// Under a stream of requests with even odds, the budget admits about
// LateTarget / 0.5 of them and the late share settles at the target.
func TestLateBudgetSettles(t *testing.T) {
	var b lateBudget
	slo := 5 * time.Second
	admitted, late := 0, 0
	for i := range 5000 {
		// Four of five requests certainly in time, the fifth even odds.
		p := 0.0
		if i%5 == 0 {
			p = 0.5
		}
		if !b.affords(p) {
			continue
		}
		admitted++
		b.admitted(p)
		took := time.Second
		if p > 0 && admitted%2 == 0 {
			took, late = 6*time.Second, late+1
		}
		b.answered(p, took, time.Second, slo)
	}
	if share := float64(late) / float64(admitted); share > LateTarget*1.05 || share < LateTarget*0.7 {
		t.Errorf("late share %.4f of %d admitted, want about %.2f", share, admitted, LateTarget)
	}
}

// The calibration survives a restart.
func TestLateBudgetRestore(t *testing.T) {
	var b lateBudget
	for i := range 300 {
		b.admitted(0)
		b.answered(0, time.Duration(1+i%3)*time.Second, time.Second, time.Minute)
	}
	kept := b.calibration()
	if len(kept) != calibSamples || kept[len(kept)-1] != [2]float64{1, float64(1 + 299%3)} {
		t.Fatalf("calibration kept %d, last %v; want %d, the newest last", len(kept), kept[len(kept)-1], calibSamples)
	}
	var c lateBudget
	c.restore(kept)
	for _, pred := range []time.Duration{time.Second, 1500 * time.Millisecond, 2500 * time.Millisecond, 4 * time.Second} {
		if got, want := c.chance(pred, 3*time.Second), b.chance(pred, 3*time.Second); got != want {
			t.Errorf("restored chance at %s = %.3f, want %.3f", pred, got, want)
		}
	}
}
