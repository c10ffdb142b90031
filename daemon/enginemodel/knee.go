package enginemodel

import "math"

// maxBins is the highest concurrency the knee search tells apart; beyond
// it requests share the last bin.
const maxBins = 512

// binDecay fades a concurrency's old observations as that concurrency is
// seen again: about its last 50 count.
const binDecay = 0.98

// bins keeps, per concurrency (rounded), the fading sums of the time to
// first token: where a request waits inside the engine (a slot engine past
// its slots, vLLM past max_num_seqs) that time rises by a share of a whole
// request's time per sequence added, where a continuous batch adds only a
// step's growth.
//
// A bin fades only as its own concurrency is seen again, not as others
// are: once the limit stops short of a knee, nothing runs past it, and
// evidence that faded with time alone would vanish, the knee with it, and
// the limit would climb back into the engine's queue to find it again
// (measured in front of Ollama: a limit swinging between 6 and 101 on 4
// slots). Evidence past the knee is replaced, not forgotten: the limit
// runs a little past the knee, so an engine that gained slots shows it.
type bins struct {
	w, y, yy [maxBins + 1]float64
}

func (b *bins) add(n, ttft float64) {
	i := min(max(int(math.Round(n)), 1), maxBins)
	b.w[i] = b.w[i]*binDecay + 1
	b.y[i] = b.y[i]*binDecay + ttft
	b.yy[i] = b.yy[i]*binDecay + ttft*ttft
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
		idx = append(idx, i)
		w, y, yy = append(w, b.w[i]), append(y, b.y[i]), append(yy, b.yy[i])
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
