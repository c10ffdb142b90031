package plot

import (
	"slices"
	"testing"
)

func TestTicks(t *testing.T) {
	for _, c := range []struct {
		max   float64
		n     int
		end   float64
		ticks []float64
	}{
		{7.3, 5, 8, []float64{0, 2, 4, 6, 8}},
		{1, 4, 1, []float64{0, 0.5, 1}}, // 0.25 is no round step: 0.5
		{0.9, 5, 1, []float64{0, 0.2, 0.4, 0.6, 0.8, 1}},
		{132, 5, 150, []float64{0, 50, 100, 150}},
		{7.5, 5, 8, []float64{0, 2, 4, 6, 8}},
		{0.03, 4, 0.03, []float64{0, 0.01, 0.02, 0.03}},
		{0, 4, 1, []float64{0, 0.5, 1}},
	} {
		end, ticks := Ticks(c.max, c.n)
		if end != c.end || !slices.Equal(ticks, c.ticks) {
			t.Errorf("Ticks(%v, %d) = %v, %v; want %v, %v", c.max, c.n, end, ticks, c.end, c.ticks)
		}
	}
}

func TestLabel(t *testing.T) {
	for _, c := range []struct {
		v, step float64
		want    string
	}{{0.6000000000000001, 0.2, "0.6"}, {150, 50, "150"}, {2000, 1000, "2000"}, {0.05, 0.01, "0.05"}} {
		if got := Label(c.v, c.step); got != c.want {
			t.Errorf("Label(%v, %v) = %q, want %q", c.v, c.step, got, c.want)
		}
	}
}
