package demo

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
)

// The demo end to end, shortened: the real llmlabd in front of one
// simulator, both loads against both targets, the table and the files.
func TestDemo(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "llmlabd")
	if out, err := exec.Command("go", "build", "-o", bin, "../../llmlabd").CombinedOutput(); err != nil {
		t.Fatalf("building llmlabd: %v\n%s", err, out)
	}
	var out bytes.Buffer
	o := Options{
		Llmlabd: bin, Profile: "instant", Capacity: 20, Loads: []float64{0.5, 2},
		Warmup: 200 * time.Millisecond, Duration: time.Second, Timeout: 5 * time.Second,
		SLO: bench.SLO{Latency: 5 * time.Second, MaxErrorRate: 0.001}, MaxInflight: 16, MaxWait: time.Second,
		Results: filepath.Join(dir, "results"), Out: &out,
	}
	rows, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 2 loads x 2 targets", len(rows))
	}
	for _, r := range rows {
		if r.Summary.OK == 0 || r.Summary.Failed != 0 || !r.Lag.Checked {
			t.Errorf("%s at %.1fx: %+v (lag %+v)", r.Label, r.Load, r.Summary, r.Lag)
		}
	}
	for _, want := range []string{"load", "llmlab", "direct", "goodput"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	for _, f := range []string{"results.json", "results.csv", "latency-vs-load.svg", "latency-distribution.svg", "command.txt"} {
		if st, err := os.Stat(filepath.Join(o.Results, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
}
