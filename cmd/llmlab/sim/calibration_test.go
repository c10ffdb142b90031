package sim

import (
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

var updateCalibration = flag.Bool("update-calibration", false, "rewrite docs/calibration/h200-fit.md from the measurements")

// The h200 profile's GPU terms are the three-term fit (no prompt attention
// term) of the measurements taken on an H200 with PyTorch's unfused
// kernels (docs/calibration/measure_unfused.py, h200-gpu-unfused.json),
// and the fit is within 15% of every measured step, as issue 17 asks; the
// table in docs/calibration/h200-fit.md is this test's output.
func TestH200ProfileFitsTheMeasurements(t *testing.T) {
	data, err := os.ReadFile("../../../docs/calibration/h200-gpu-unfused.json")
	if err != nil {
		t.Fatal(err)
	}
	cal, ms, err := ParseCalibration(data)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ms {
		ms[i].Pairs = 0 // fitted before the pair term
	}
	fit, err := Fit(ms)
	if err != nil {
		t.Fatal(err)
	}
	fixed, perToken, perKV := fit.Fixed, fit.PerToken, fit.PerKVToken
	p := Profiles["h200"]
	gpuFixed := p.StepFixed - p.HostPerStep
	if d := gpuFixed - fixed; d < -time.Microsecond || d > time.Microsecond {
		t.Errorf("h200's GPU fixed term %s (StepFixed %s less the host's %s), the fit says %s", gpuFixed, p.StepFixed, p.HostPerStep, fixed)
	}
	if d := p.PerToken - perToken; d < -time.Nanosecond || d > time.Nanosecond {
		t.Errorf("h200's per-token term %s, the fit says %s", p.PerToken, perToken)
	}
	if d := p.PerKVToken - perKV; d < -time.Nanosecond/10 || d > time.Nanosecond/10 {
		t.Errorf("h200's per-KV-token term %s, the fit says %s", p.PerKVToken, perKV)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<!-- written by: go test ./cmd/llmlab/sim -run TestH200ProfileFitsTheMeasurements -args -update-calibration -->\n")
	fmt.Fprintf(&b, "Measured on %s (PyTorch %s, transformers %s, %d parameters).\n\n", cal.GPU, cal.Torch, cal.Transformers, cal.Parameters)
	fmt.Fprintf(&b, "Fit: step = %s + %s/token + %s/KV token (GPU only).\n\n", fixed, perToken, perKV)
	fmt.Fprintf(&b, "| step | tokens | KV tokens | measured | model | error |\n|---|---|---|---|---|---|\n")
	worst := 0.0
	for _, m := range ms {
		model := fixed + time.Duration(m.Tokens)*perToken + time.Duration(m.KVTokens)*perKV
		e := (model.Seconds() - m.Measured.Seconds()) / m.Measured.Seconds()
		worst = max(worst, math.Abs(e))
		name := fmt.Sprintf("prefill %d", m.Tokens)
		if m.Kind == "decode" {
			name = fmt.Sprintf("decode B=%d L=%d", m.Batch, m.Context)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %.3f ms | %.3f ms | %+.1f%% |\n", name, m.Tokens, m.KVTokens,
			m.Measured.Seconds()*1e3, model.Seconds()*1e3, 100*e)
		if math.Abs(e) > 0.15 {
			t.Errorf("%s: the model says %s, measured %s (%+.1f%%): past 15%%", name, model, m.Measured, 100*e)
		}
	}
	fmt.Fprintf(&b, "\nLargest error: %.1f%% over %d steps.\n", 100*worst, len(ms))
	const table = "../../../docs/calibration/h200-fit.md"
	if *updateCalibration {
		if err := os.WriteFile(table, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := os.ReadFile(table); err != nil || string(got) != b.String() {
		t.Errorf("%s is not the fit's table (go test ./cmd/llmlab/sim -run TestH200ProfileFitsTheMeasurements -args -update-calibration): %v", table, err)
	}
}

// Fit recovers the terms of data made by the model itself.
func TestFitRecoversAModel(t *testing.T) {
	var ms []Measurement
	for _, b := range []int{1, 8, 64, 512} {
		for _, l := range []int{100, 1000} {
			ms = append(ms, Measurement{Tokens: b, KVTokens: b * l, Measured: 2*time.Millisecond + time.Duration(b)*3*time.Microsecond + time.Duration(b*l)*5*time.Nanosecond})
		}
	}
	fit, err := Fit(ms)
	if err != nil {
		t.Fatal(err)
	}
	if fit.Fixed != 2*time.Millisecond || fit.PerToken != 3*time.Microsecond || fit.PerKVToken != 5*time.Nanosecond || fit.PerPair != 0 {
		t.Fatalf("Fit = %+v; want 2ms, 3µs, 5ns and no pair term", fit)
	}
	// With prompt chunks, the pair term too.
	for _, n := range []int{64, 512, 4096} {
		m := Measurement{Tokens: n, KVTokens: n, Pairs: prefillPairs(0, n)}
		m.Measured = 2*time.Millisecond + time.Duration(n)*3*time.Microsecond + time.Duration(n)*5*time.Nanosecond + time.Duration(float64(m.Pairs)*0.25)
		ms = append(ms, m)
	}
	if fit, err = Fit(ms); err != nil || fit.Fixed != 2*time.Millisecond || fit.PerToken != 3*time.Microsecond || fit.PerKVToken != 5*time.Nanosecond || fit.PerPair != 0.25 {
		t.Fatalf("Fit with prompt chunks = %+v, %v; want 2ms, 3µs, 5ns, 0.25 ns a pair", fit, err)
	}
}

// llmlab sim --fit prints the fit of a measurement file and each step's
// error, marking those past 15%.
func TestPrintFit(t *testing.T) {
	var b strings.Builder
	if err := printFit(&b, "../../../docs/calibration/h100-gpu.json"); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"NVIDIA H100 80GB HBM3, 50 steps", "fit: step = ", "decode B=1 L=2048", "prefill 8192", "largest error "} {
		if !strings.Contains(out, want) {
			t.Errorf("llmlab sim --fit's output lacks %q:\n%s", want, out)
		}
	}
	if err := printFit(&b, "no-such.json"); err == nil {
		t.Error("a missing file: no error")
	}
}
