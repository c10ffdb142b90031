package enginemodel

import (
	"errors"
	"math"
)

// State is what the state file keeps of a model across restarts and exits
// on idle: the fits' sums, not their solutions, so that the observations
// kept go on fading and weighing against new ones as before.
type State struct {
	// Decode is the step time's fit against the tokens a step carries
	// (DecodeBasis "step_tokens"); a state without the basis kept a fit
	// against sequences in flight, which is not restored.
	Decode        FitState `json:"decode"`
	DecodeBasis   string   `json:"decode_basis,omitempty"`
	TTFT          FitState `json:"ttft"`
	OutputShare   float64  `json:"output_share"`
	TokensPerByte float64  `json:"tokens_per_byte"`
	TypicalPrompt float64  `json:"typical_prompt_tokens"`
	TypicalMax    float64  `json:"typical_max_tokens"`
	Spread        float64  `json:"spread_p95"`
	Observed      int      `json:"observed"`
	// Concurrency is the range of concurrencies seen.
	Concurrency [2]float64 `json:"concurrency_seen"`
	// Ratios are the latest finished requests' times over their
	// predictions, oldest first, from which the spread is read.
	Ratios []float64 `json:"ratios,omitempty"`
	// Bins are the times to first token by concurrency (Knee).
	Bins []BinState `json:"ttft_bins,omitempty"`
}

// BinState is one concurrency's faded sums of the time to first token.
type BinState struct {
	N     int     `json:"n"`
	W     float64 `json:"w"`
	Sum   float64 `json:"sum"`
	SumSq float64 `json:"sum_sq"`
}

// FitState is one fit's sums.
type FitState struct {
	A      [3][3]float64 `json:"a"`
	B      [3]float64    `json:"b"`
	Weight float64       `json:"weight"`
}

// decodeBasis names what the decode fit's second term counts.
const decodeBasis = "step_tokens"

// State returns what to keep.
func (m *Model) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := State{
		Decode:        FitState{A: m.decode.a, B: m.decode.b, Weight: m.decode.n},
		DecodeBasis:   decodeBasis,
		TTFT:          FitState{A: m.ttft.a, B: m.ttft.b, Weight: m.ttft.n},
		OutputShare:   m.outShare,
		TokensPerByte: m.tokensPerByte,
		TypicalPrompt: m.typPrompt,
		TypicalMax:    m.typMax,
		Spread:        m.spreadLocked(0.95),
		Observed:      m.observed,
		Concurrency:   [2]float64{m.nLo, m.nHi},
	}
	for i := 1; i <= maxBins; i++ {
		if m.knees.w[i] == 0 {
			continue
		}
		s.Bins = append(s.Bins, BinState{N: i, W: m.knees.w[i], Sum: m.knees.y[i], SumSq: m.knees.yy[i]})
	}
	k := min(m.nRatios, spreadSamples)
	for i := m.nRatios - k; i < m.nRatios; i++ {
		s.Ratios = append(s.Ratios, m.ratios[i%spreadSamples])
	}
	return s
}

// Restore replaces what the model learned with s (from an earlier run);
// the prior stays. A state that is not a model's (negative or non-finite
// values) is refused, and the model keeps what it had.
func (m *Model) Restore(s State) error {
	if s.Observed == 0 {
		return nil
	}
	vals := []float64{s.Decode.Weight, s.TTFT.Weight, s.OutputShare, s.TokensPerByte, s.TypicalPrompt, s.TypicalMax, s.Spread}
	for _, b := range s.Bins {
		if b.N < 1 || b.N > maxBins {
			return errors.New("the engine model's state has a concurrency bin out of range")
		}
		vals = append(vals, b.W, b.Sum, b.SumSq)
	}
	for _, v := range append(vals, s.Ratios...) {
		if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return errors.New("the engine model's state holds a negative or non-finite value")
		}
	}
	for _, f := range []FitState{s.Decode, s.TTFT} {
		for i := range 3 {
			for _, v := range append(f.A[i][:], f.B[i]) {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return errors.New("the engine model's state holds a non-finite value")
				}
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s.DecodeBasis == decodeBasis {
		m.decode.a, m.decode.b, m.decode.n = s.Decode.A, s.Decode.B, s.Decode.Weight
	}
	m.ttft.a, m.ttft.b, m.ttft.n = s.TTFT.A, s.TTFT.B, s.TTFT.Weight
	if s.OutputShare > 0 {
		m.outShare = min(s.OutputShare, 1)
	}
	if s.TokensPerByte > 0 {
		m.tokensPerByte = s.TokensPerByte
	}
	m.typPrompt, m.typMax = s.TypicalPrompt, s.TypicalMax
	if s.TypicalMax > 0 {
		m.typSeen = 1
	}
	m.observed = s.Observed
	m.nLo, m.nHi = s.Concurrency[0], s.Concurrency[1]
	m.nRatios = 0
	for _, r := range s.Ratios[max(len(s.Ratios)-spreadSamples, 0):] {
		m.ratios[m.nRatios] = r
		m.nRatios++
	}
	m.sortRatiosLocked()
	m.knees = bins{}
	for _, b := range s.Bins {
		m.knees.w[b.N], m.knees.y[b.N], m.knees.yy[b.N] = b.W, b.Sum, b.SumSq
	}
	m.solveLocked()
	return nil
}
