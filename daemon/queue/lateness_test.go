package queue

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The level settles where LateTarget of the answers are late. Here an
// answer admitted at level q is late with probability (1 - q)/2 (half the
// answers have room to spare): the level settles at 0.92.
func TestLatenessSettlesAtTheTarget(t *testing.T) {
	l := newLateness()
	r := rand.New(rand.NewPCG(1, 2))
	late, n := 0, 0
	for i := range 20000 {
		miss := r.Float64() < (1-l.level)/2
		l.answered(miss)
		if i >= 10000 {
			n++
			if miss {
				late++
			}
		}
	}
	if got := float64(late) / float64(n); math.Abs(got-LateTarget) > 0.01 {
		t.Errorf("late share %.3f at level %.3f, want %.2f", got, l.level, LateTarget)
	}
	if math.Abs(l.level-(1-2*LateTarget)) > 0.03 {
		t.Errorf("level %.3f, want about %.2f", l.level, 1-2*LateTarget)
	}
}

func TestLatenessBounds(t *testing.T) {
	l := newLateness()
	for range 1000 {
		l.answered(false)
	}
	if l.level != minLevel {
		t.Errorf("level after 1000 answers in time = %v, want the floor %v", l.level, minLevel)
	}
	for range 1000 {
		l.answered(true)
	}
	if l.level != maxLevel {
		t.Errorf("level after 1000 late answers = %v, want the ceiling %v", l.level, maxLevel)
	}
}
