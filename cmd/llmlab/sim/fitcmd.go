package sim

import (
	"fmt"
	"io"
	"math"
	"os"
)

// printFit fits the cost model to a measurement file written by
// docs/calibration/measure.py and prints the terms and each step's error
// (llmlab sim --fit).
func printFit(w io.Writer, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	cal, ms, err := ParseCalibration(data)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fit, err := Fit(ms)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(w, "%s: %s, %d steps\n", path, cal.GPU, len(ms))
	fmt.Fprintf(w, "fit: step = %s + %s/token + %s/KV token + %g ns/prompt attention pair\n", fit.Fixed, fit.PerToken, fit.PerKVToken, fit.PerPair)
	worst, past := 0.0, 0
	for _, m := range ms {
		e := (fit.Step(m).Seconds() - m.Measured.Seconds()) / m.Measured.Seconds()
		worst = max(worst, math.Abs(e))
		name := fmt.Sprintf("prefill %d", m.Tokens)
		if m.Kind == "decode" {
			name = fmt.Sprintf("decode B=%d L=%d", m.Batch, m.Context)
		}
		mark := ""
		if math.Abs(e) > 0.15 {
			mark, past = "  past 15%", past+1
		}
		fmt.Fprintf(w, "%-22s measured %8.3f ms  model %8.3f ms  %+6.1f%%%s\n", name, m.Measured.Seconds()*1e3, fit.Step(m).Seconds()*1e3, 100*e, mark)
	}
	fmt.Fprintf(w, "largest error %.1f%%; %d of %d steps past 15%%\n", 100*worst, past, len(ms))
	return nil
}
