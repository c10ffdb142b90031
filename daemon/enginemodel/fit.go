package enginemodel

import "math"

// fit is a least-squares fit of y = θ·x over observations that fade
// (each new one multiplies the weight of those before by decay), pulled
// toward a prior θ0 with strength ridge (ridge regression toward a
// prior). The prior holds the fit where observations say nothing (a
// concurrency never seen yet), and observations outweigh it as they
// accumulate: at most 1/(1-decay) of them count.
type fit struct {
	k     int
	a     [3][3]float64 // Σ w x xᵀ
	b     [3]float64    // Σ w x y
	n     float64       // Σ w: the observations' weight
	prior [3]float64
	ridge [3]float64
	decay float64
}

func newFit(k int, decay float64, prior, ridge []float64) fit {
	f := fit{k: k, decay: decay}
	copy(f.prior[:], prior)
	copy(f.ridge[:], ridge)
	return f
}

// add records y at x (len(x) == k).
func (f *fit) add(x []float64, y float64) {
	if math.IsNaN(y) || math.IsInf(y, 0) {
		return
	}
	for i := 0; i < f.k; i++ {
		f.b[i] = f.b[i]*f.decay + x[i]*y
		for j := 0; j < f.k; j++ {
			f.a[i][j] = f.a[i][j]*f.decay + x[i]*x[j]
		}
	}
	f.n = f.n*f.decay + 1
}

// solve returns θ minimising Σ w (y - θ·x)² + Σ ridge_i (θ_i - prior_i)².
func (f *fit) solve() [3]float64 {
	var m [3][4]float64
	for i := 0; i < f.k; i++ {
		for j := 0; j < f.k; j++ {
			m[i][j] = f.a[i][j]
		}
		m[i][i] += f.ridge[i]
		m[i][f.k] = f.b[i] + f.ridge[i]*f.prior[i]
	}
	// Gaussian elimination with partial pivoting; the ridge keeps the
	// system regular.
	for c := 0; c < f.k; c++ {
		p := c
		for r := c + 1; r < f.k; r++ {
			if math.Abs(m[r][c]) > math.Abs(m[p][c]) {
				p = r
			}
		}
		m[c], m[p] = m[p], m[c]
		if m[c][c] == 0 {
			return f.prior
		}
		for r := c + 1; r < f.k; r++ {
			q := m[r][c] / m[c][c]
			for j := c; j <= f.k; j++ {
				m[r][j] -= q * m[c][j]
			}
		}
	}
	var th [3]float64
	for i := f.k - 1; i >= 0; i-- {
		s := m[i][f.k]
		for j := i + 1; j < f.k; j++ {
			s -= m[i][j] * th[j]
		}
		th[i] = s / m[i][i]
	}
	return th
}
