package sim

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Measurement is one timed engine step: tokens computed in it, the KV
// tokens its attention read and its prompt chunks' attention pairs,
// counted as the engine counts them (Engine schedules a step of the
// running sequences and charges StepTime): a decode step of B sequences
// at context L is B tokens, B x L KV tokens and no pairs; a prefill chunk
// of T tokens from an empty context is T tokens, T KV tokens and
// T(T+1)/2 pairs.
type Measurement struct {
	Kind     string // "decode" or "prefill"
	Batch    int    // decode: sequences
	Context  int    // decode: context length after the step
	Tokens   int
	KVTokens int
	Pairs    int
	Measured time.Duration
}

// Terms are the cost model's terms (Profile.StepTime).
type Terms struct {
	Fixed, PerToken, PerKVToken time.Duration
	// PerPair is a prompt chunk's attention per query-key pair, in
	// nanoseconds (a fraction of one on a large card).
	PerPair float64
}

// Step is the terms' time for m.
func (c Terms) Step(m Measurement) time.Duration {
	return c.Fixed + time.Duration(m.Tokens)*c.PerToken + time.Duration(m.KVTokens)*c.PerKVToken + time.Duration(float64(m.Pairs)*c.PerPair)
}

// Calibration is a measurement file written by docs/calibration/measure.py.
type Calibration struct {
	GPU          string `json:"gpu"`
	Torch        string `json:"torch"`
	Transformers string `json:"transformers"`
	Parameters   int64  `json:"parameters"`
	Decode       []struct {
		Batch   int     `json:"batch"`
		Context int     `json:"context"`
		MS      float64 `json:"ms"`
	} `json:"decode"`
	Prefill []struct {
		Tokens int     `json:"tokens"`
		MS     float64 `json:"ms"`
	} `json:"prefill"`
}

// ParseCalibration reads measure.py's JSON into measurements.
func ParseCalibration(data []byte) (Calibration, []Measurement, error) {
	var c Calibration
	if err := json.Unmarshal(data, &c); err != nil {
		return c, nil, err
	}
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	var out []Measurement
	for _, d := range c.Decode {
		out = append(out, Measurement{Kind: "decode", Batch: d.Batch, Context: d.Context, Tokens: d.Batch, KVTokens: d.Batch * d.Context, Measured: ms(d.MS)})
	}
	for _, p := range c.Prefill {
		out = append(out, Measurement{Kind: "prefill", Tokens: p.Tokens, KVTokens: p.Tokens, Pairs: prefillPairs(0, p.Tokens), Measured: ms(p.MS)})
	}
	if len(out) < 3 {
		return c, nil, fmt.Errorf("%d measurements: the fit needs at least 3", len(out))
	}
	return c, out, nil
}

// Fit finds the cost model's four terms (StepTime: fixed + tokens x per
// token + KV tokens x per KV token + prompt attention pairs x per pair)
// that minimise the squared relative error over the measurements (least
// squares weighted by 1/measured, solved by its normal equations). Where
// no measurement has pairs, the pair term is 0 and the other three are
// fitted alone.
func Fit(ms []Measurement) (Terms, error) {
	const k = 4
	n := 3
	for _, m := range ms {
		if m.Pairs > 0 {
			n = k
		}
	}
	var a [k][k]float64
	var b [k]float64
	for _, m := range ms {
		y := m.Measured.Seconds()
		if y <= 0 {
			return Terms{}, fmt.Errorf("a measurement of %s", m.Measured)
		}
		x := [k]float64{1 / y, float64(m.Tokens) / y, float64(m.KVTokens) / y, float64(m.Pairs) / y}
		for i := range n {
			for j := range n {
				a[i][j] += x[i] * x[j]
			}
			b[i] += x[i] // y/y
		}
	}
	// Gaussian elimination with partial pivoting.
	for c := range n {
		p := c
		for r := c + 1; r < n; r++ {
			if math.Abs(a[r][c]) > math.Abs(a[p][c]) {
				p = r
			}
		}
		a[c], a[p] = a[p], a[c]
		b[c], b[p] = b[p], b[c]
		if a[c][c] == 0 {
			return Terms{}, fmt.Errorf("the measurements do not determine the model (singular)")
		}
		for r := c + 1; r < n; r++ {
			f := a[r][c] / a[c][c]
			for kk := c; kk < n; kk++ {
				a[r][kk] -= f * a[c][kk]
			}
			b[r] -= f * b[c]
		}
	}
	var x [k]float64
	for r := n - 1; r >= 0; r-- {
		s := b[r]
		for kk := r + 1; kk < n; kk++ {
			s -= a[r][kk] * x[kk]
		}
		x[r] = s / a[r][r]
	}
	d := func(s float64) time.Duration { return time.Duration(math.Round(s * 1e9)) }
	return Terms{Fixed: d(x[0]), PerToken: d(x[1]), PerKVToken: d(x[2]), PerPair: math.Round(x[3]*1e12) / 1e3}, nil
}

// prefillPairs is the attention's query-key pairs of a prompt chunk of n
// tokens after computed tokens of context: each of its tokens attends to
// the context before the chunk and to the chunk's tokens up to itself.
// FlashAttention's prefill is bound by these multiplies, not by reading
// the KV cache once, as a decode step is: an 8192-token prompt took 21.4
// ms on an H100 where three terms without it predicted 15.3
// (docs/calibration.md).
func prefillPairs(computed, n int) int {
	return n*computed + n*(n+1)/2
}
