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

var updateCalibration = flag.Bool("update-calibration", false, "rewrite docs/calibration/h100-fit.md from the measurements")

// knownMiss is a step the four terms are known to miss by more than 15%:
// one to eight sequences at 2048 tokens of context, which PyTorch's decode
// attention walks with one block per KV head where vLLM's FlashAttention
// splits the context among the SMs (docs/calibration.md). They must still
// be within 20%, and longer than modelled.
func knownMiss(m Measurement) bool {
	return m.Kind == "decode" && m.Batch <= 8 && m.Context == 2048
}

// The h100 profile's GPU terms are the four-term fit of the steps measured
// on an H100 with vLLM's kernel structure (docs/calibration/measure.py,
// h100-gpu.json), the fit is within 15% of every measured step but the
// known misses, and the derived profiles come from it; the table in
// docs/calibration/h100-fit.md is this test's output.
func TestH100ProfileFitsTheMeasurements(t *testing.T) {
	data, err := os.ReadFile("../../../docs/calibration/h100-gpu.json")
	if err != nil {
		t.Fatal(err)
	}
	cal, ms, err := ParseCalibration(data)
	if err != nil {
		t.Fatal(err)
	}
	fit, err := Fit(ms)
	if err != nil {
		t.Fatal(err)
	}
	p := Profiles["h100"]
	gpuFixed := p.StepFixed - p.HostPerStep
	if d := gpuFixed - fit.Fixed; d < -time.Microsecond || d > time.Microsecond {
		t.Errorf("h100's GPU fixed term %s (StepFixed %s less the host's %s), the fit says %s", gpuFixed, p.StepFixed, p.HostPerStep, fit.Fixed)
	}
	if p.PerToken != fit.PerToken || p.PerKVToken != fit.PerKVToken || p.PerPair != fit.PerPair {
		t.Errorf("h100's terms %s/token, %s/KV token, %g ns/pair; the fit says %s, %s, %g", p.PerToken, p.PerKVToken, p.PerPair,
			fit.PerToken, fit.PerKVToken, fit.PerPair)
	}
	for _, name := range []string{"gtx1650", "gtx1650-derived", "t4", "t4-derived", "h200"} {
		if d := Profiles[name]; !strings.Contains(d.Source, "derived from the measured h100 profile") {
			t.Errorf("profile %s is not derived from the h100 measurement: %s", name, d.Source)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<!-- written by: go test ./cmd/llmlab/sim -run TestH100ProfileFitsTheMeasurements -args -update-calibration -->\n")
	fmt.Fprintf(&b, "Measured on %s (PyTorch %s, transformers %s, %d parameters), vLLM's kernel structure (docs/calibration/measure.py).\n\n",
		cal.GPU, cal.Torch, cal.Transformers, cal.Parameters)
	fmt.Fprintf(&b, "Fit: step = %s + %s/token + %s/KV token + %g ns/prompt attention pair (GPU only).\n\n", fit.Fixed, fit.PerToken, fit.PerKVToken, fit.PerPair)
	fmt.Fprintf(&b, "| step | tokens | KV tokens | attention pairs | measured | model | error |\n|---|---|---|---|---|---|---|\n")
	worst, misses := 0.0, 0
	for _, m := range ms {
		model := fit.Step(m)
		e := (model.Seconds() - m.Measured.Seconds()) / m.Measured.Seconds()
		worst = max(worst, math.Abs(e))
		name := fmt.Sprintf("prefill %d", m.Tokens)
		if m.Kind == "decode" {
			name = fmt.Sprintf("decode B=%d L=%d", m.Batch, m.Context)
		}
		mark := ""
		switch {
		case math.Abs(e) <= 0.15:
		case knownMiss(m) && e < 0 && e >= -0.20:
			mark = " (split-KV)"
			misses++
		default:
			t.Errorf("%s: the model says %s, measured %s (%+.1f%%): past 15%%", name, model, m.Measured, 100*e)
		}
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %.3f ms | %.3f ms | %+.1f%%%s |\n", name, m.Tokens, m.KVTokens, m.Pairs,
			m.Measured.Seconds()*1e3, model.Seconds()*1e3, 100*e, mark)
	}
	fmt.Fprintf(&b, "\nLargest error: %.1f%% over %d steps; %d past 15%%, all of them one to eight sequences at 2048 tokens of context (split-KV, docs/calibration.md).\n",
		100*worst, len(ms), misses)
	const table = "../../../docs/calibration/h100-fit.md"
	if *updateCalibration {
		if err := os.WriteFile(table, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := os.ReadFile(table); err != nil || string(got) != b.String() {
		t.Errorf("%s is not the fit's table (go test ./cmd/llmlab/sim -run TestH100ProfileFitsTheMeasurements -args -update-calibration): %v", table, err)
	}
}

// Derive scales each term by its own datasheet ratio: the weight reads by
// the bandwidth, the latency-bound rest of the fixed term by the clock,
// the per-token and per-pair terms by the FLOPS, the KV reads by the
// bandwidth; the host stays.
func TestDeriveScalesEachTerm(t *testing.T) {
	from := Card{Bandwidth: 1e12, FLOPS: 100e12, Clock: 2e9}
	to := Card{Bandwidth: 0.5e12, FLOPS: 10e12, Clock: 1e9}
	m := Profile{Name: "m", Weights: 1e9, StepFixed: 3500 * time.Microsecond, HostPerStep: 500 * time.Microsecond,
		PerToken: time.Microsecond, PerKVToken: 4 * time.Nanosecond, PerPair: 0.5}
	// GPU fixed 3 ms: 1 ms of weight reads at 1 TB/s, 2 ms of latency.
	d := Derive(m, from, to, Profile{MaxNumSeqs: 7})
	if want := 2*time.Millisecond + 4*time.Millisecond + 500*time.Microsecond; d.StepFixed != want {
		t.Errorf("StepFixed = %s, want %s (2 ms of reads at half the bandwidth, 4 ms of latency at half the clock, the host's 0.5 ms)", d.StepFixed, want)
	}
	if d.PerToken != 10*time.Microsecond || d.PerKVToken != 8*time.Nanosecond || d.PerPair != 5 || d.HostPerStep != m.HostPerStep || d.MaxNumSeqs != 7 {
		t.Errorf("Derive = %+v", d)
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
