package tune

import (
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/daemon/auth"
)

// The phases' keys file is one llmlabd loads, with each key's weight.
func TestFairKeysFile(t *testing.T) {
	phases := fairPhases(Options{Flood: 5, Light: 0.2})
	k, err := auth.Parse("keys", []byte(keysFile(phases)))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]float64{"light": 1, "flood": 1, "w1": 1, "w3": 3} {
		if got := k.Options(name).Weight; got != want {
			t.Errorf("weight of %s = %v, want %v", name, got, want)
		}
	}
	if k.Len() != 4 {
		t.Errorf("%d keys, want 4", k.Len())
	}
}

// The summary lines compare the light key beside the flood with it alone,
// and the weighted keys' tokens with their weights.
func TestPrintFairVerdicts(t *testing.T) {
	sum := func(goodput float64, p95 time.Duration, tokens int) bench.Summary {
		return bench.Summary{Goodput: goodput, OK: 10, Seconds: 30, Latency: bench.Percentiles{P95: p95}, Tokens: tokens}
	}
	rows := []Row{
		{Profile: "p", Setting: phaseAlone, Key: "light", Summary: sum(0.5, 2*time.Second, 6000)},
		{Profile: "p", Setting: phaseFlood, Key: "light", Summary: sum(0.5, 2100*time.Millisecond, 6000)},
		{Profile: "p", Setting: phaseWeights, Key: "w1", Summary: sum(1, 4*time.Second, 10000)},
		{Profile: "p", Setting: phaseWeights, Key: "w3", Summary: sum(3, 4*time.Second, 29000)},
	}
	var b strings.Builder
	printFair(&b, Options{Profiles: []string{"p"}, SLO: bench.SLO{Latency: 5 * time.Second}}, rows)
	for _, want := range []string{"1.00x its goodput alone", "1.05x its p95", "1:2.90"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("the report lacks %q:\n%s", want, b.String())
		}
	}
}
