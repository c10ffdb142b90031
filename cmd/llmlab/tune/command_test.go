package tune

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// The grid's flags: values separated by commas, each checked, and a bad
// one named with its flag and what the flag takes.
func TestGridFlags(t *testing.T) {
	seqs, err := list("max-num-seqs", "16, 64,256", "positive integers", positiveInt)
	if err != nil || !slices.Equal(seqs, []int{16, 64, 256}) {
		t.Fatalf("max-num-seqs: %v %v", seqs, err)
	}
	windows, err := list("batch-window", "0s,10ms", "durations", duration)
	if err != nil || !slices.Equal(windows, []time.Duration{0, 10 * time.Millisecond}) {
		t.Fatalf("batch-window: %v %v", windows, err)
	}
	_, e1 := list("max-num-seqs", "16,0", "positive integers", positiveInt)
	_, e2 := list("gpu-memory-utilization", "0.9,1.2", "fractions in (0, 1]", fraction)
	_, e3 := list("batch-window", "-5ms", "durations", duration)
	for i, want := range []string{`--max-num-seqs "16,0": want positive integers`,
		`--gpu-memory-utilization "0.9,1.2": want fractions in (0, 1]`, `--batch-window "-5ms": want durations`} {
		if err := []error{e1, e2, e3}[i]; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want one that says %s", err, want)
		}
	}
}
