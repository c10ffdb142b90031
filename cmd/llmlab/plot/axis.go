package plot

import (
	"math"
	"strconv"
)

// Ticks divides an axis from 0 to at least hi into at most n steps of a
// round size (1, 2 or 5 x 10^k), and returns the axis' end (the last
// tick, at or past hi) and every tick from 0. A hi of 0 or less gives
// the axis 0 to 1.
func Ticks(hi float64, n int) (end float64, ticks []float64) {
	if !(hi > 0) || math.IsInf(hi, 0) {
		hi = 1
	}
	n = max(n, 1)
	step := niceStep(hi / float64(n)) // at least hi/n, so n steps reach hi
	k := int(math.Ceil(hi/step - 1e-9))
	for i := 0; i <= k; i++ {
		ticks = append(ticks, round(float64(i)*step, step))
	}
	return ticks[len(ticks)-1], ticks
}

// niceStep is the smallest round size (1, 2 or 5 x 10^k) at least x.
func niceStep(x float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if s := m * p; s >= x*(1-1e-12) {
			return s
		}
	}
	return 10 * p
}

// round removes the float error of i x step (0.30000000000000004).
func round(v, step float64) float64 {
	d := Decimals(step)
	p := math.Pow(10, float64(d))
	return math.Round(v*p) / p
}

// Decimals is how many decimals a tick of a step needs (0.25: 2, 5: 0).
func Decimals(step float64) int {
	d := 0
	for s := step; d < 12 && math.Abs(s-math.Round(s)) > 1e-9*math.Max(1, s); s *= 10 {
		d++
	}
	return d
}

// Label writes a tick's value with the decimals its step needs.
func Label(v, step float64) string {
	return strconv.FormatFloat(v, 'f', Decimals(step), 64)
}
