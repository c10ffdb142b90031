package sim

import (
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// Measurement is one timed engine step: tokens computed in it and the KV
// tokens its attention read, counted as the engine counts them (Engine
// schedules a step of the running sequences and charges StepTime): a
// decode step of B sequences at context L is B tokens and B x L KV
// tokens; a prefill chunk of T tokens from an empty context is T tokens
// and T KV tokens.
type Measurement struct {
	Kind     string // "decode" or "prefill"
	Batch    int    // decode: sequences
	Context  int    // decode: context length after the step
	Tokens   int
	KVTokens int
	Measured time.Duration
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
		out = append(out, Measurement{Kind: "prefill", Tokens: p.Tokens, KVTokens: p.Tokens, Measured: ms(p.MS)})
	}
	if len(out) < 3 {
		return c, nil, fmt.Errorf("%d measurements: the fit needs at least 3", len(out))
	}
	return c, out, nil
}

// Fit finds the cost model's three terms (StepTime: fixed + tokens x
// per token + KV tokens x per KV token) that minimise the squared
// relative error over the measurements (least squares weighted by
// 1/measured, solved by its normal equations).
func Fit(ms []Measurement) (fixed, perToken, perKV time.Duration, err error) {
	var a [3][3]float64
	var b [3]float64
	for _, m := range ms {
		y := m.Measured.Seconds()
		if y <= 0 {
			return 0, 0, 0, fmt.Errorf("a measurement of %s", m.Measured)
		}
		x := [3]float64{1 / y, float64(m.Tokens) / y, float64(m.KVTokens) / y}
		for i := range 3 {
			for j := range 3 {
				a[i][j] += x[i] * x[j]
			}
			b[i] += x[i] // y/y
		}
	}
	// Gaussian elimination with partial pivoting.
	for c := range 3 {
		p := c
		for r := c + 1; r < 3; r++ {
			if math.Abs(a[r][c]) > math.Abs(a[p][c]) {
				p = r
			}
		}
		a[c], a[p] = a[p], a[c]
		b[c], b[p] = b[p], b[c]
		if a[c][c] == 0 {
			return 0, 0, 0, fmt.Errorf("the measurements do not determine the model (singular)")
		}
		for r := c + 1; r < 3; r++ {
			f := a[r][c] / a[c][c]
			for k := c; k < 3; k++ {
				a[r][k] -= f * a[c][k]
			}
			b[r] -= f * b[c]
		}
	}
	var x [3]float64
	for r := 2; r >= 0; r-- {
		s := b[r]
		for k := r + 1; k < 3; k++ {
			s -= a[r][k] * x[k]
		}
		x[r] = s / a[r][r]
	}
	d := func(s float64) time.Duration { return time.Duration(math.Round(s * 1e9)) }
	return d(x[0]), d(x[1]), d(x[2]), nil
}
