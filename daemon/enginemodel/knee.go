package enginemodel

import "math"

// maxBins is the highest concurrency the knee search tells apart; beyond
// it requests share the last bin.
const maxBins = 512

// bins keeps, per concurrency (rounded), the fading sums of the time to
// first token: where a request waits inside the engine (a slot engine past
// its slots, vLLM past max_num_seqs) that time rises by a share of a whole
// request's time per sequence added, where a continuous batch adds only a
// step's growth.
type bins struct {
	w, y, yy [maxBins + 1]float64
	at       [maxBins + 1]int // the observation count at the bin's last update
	count    int
}

func (b *bins) add(n, ttft float64) {
	i := min(max(int(math.Round(n)), 1), maxBins)
	f := math.Pow(decay, float64(b.count-b.at[i]))
	b.w[i] = b.w[i]*f + 1
	b.y[i] = b.y[i]*f + ttft
	b.yy[i] = b.yy[i]*f + ttft*ttft
	b.at[i] = b.count
	b.count++
}

// knee fits TTFT(n) = c for n <= s and c + d(n - s) beyond, for every s
// seen, and returns the s that fits best with its c and d; ok is false
// when fewer than three concurrencies were seen.
func (b *bins) knee() (s int, c, d float64, ok bool) {
	var idx []int
	var w, y, yy []float64
	for i := 1; i <= maxBins; i++ {
		if b.w[i] == 0 {
			continue
		}
		f := math.Pow(decay, float64(b.count-1-b.at[i]))
		if b.w[i]*f < 0.5 {
			continue
		}
		idx = append(idx, i)
		w, y, yy = append(w, b.w[i]*f), append(y, b.y[i]*f), append(yy, b.yy[i]*f)
	}
	if len(idx) < 3 {
		return 0, 0, 0, false
	}
	best := math.Inf(1)
	for _, cand := range idx[:len(idx)-1] {
		// Least squares on [1, h] with h = (n - cand)+, from the bins' sums.
		var s0, sh, shh, sy, shy, syy float64
		for k, i := range idx {
			h := float64(max(i-cand, 0))
			s0 += w[k]
			sh += w[k] * h
			shh += w[k] * h * h
			sy += y[k]
			shy += h * y[k]
			syy += yy[k]
		}
		det := s0*shh - sh*sh
		if det <= 0 {
			continue
		}
		cc := (shh*sy - sh*shy) / det
		dd := (s0*shy - sh*sy) / det
		sse := syy - 2*cc*sy - 2*dd*shy + cc*cc*s0 + 2*cc*dd*sh + dd*dd*shh
		if sse < best-1e-12 {
			best, s, c, d = sse, cand, cc, dd
		}
	}
	return s, c, d, !math.IsInf(best, 1)
}
