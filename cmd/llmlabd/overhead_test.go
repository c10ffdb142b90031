package main_test

// Integration: the overhead benchmark (llmlab overhead) runs end to end.

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// `llmlab overhead` (make bench-overhead) runs end to end: every target
// answers both workloads without a failed request, and the report has a
// row per target and workload with a capacity, and the verdict lines.
func TestOverheadBenchmarkRuns(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Fatal("nginx is required (apt-get install nginx-light)")
	}
	out, err := exec.Command(toolBinary, "overhead", "--duration", "200ms", "--rounds", "1", "--concurrency", "4").CombinedOutput()
	if err != nil {
		t.Fatalf("llmlab overhead: %v\n%s", err, out)
	}
	report := string(out)
	for _, w := range []struct {
		name   string
		stream bool
	}{{"short, non-streamed (1 token)", false}, {"200-token stream", true}} {
		for _, target := range []string{"direct", "nginx", "go-reverseproxy", "llmlabd"} {
			row := regexp.MustCompile(`(?m)^\| ` + regexp.QuoteMeta(w.name) + ` \| ` + target + ` \| ([0-9]+) \|`).FindStringSubmatch(report)
			if row == nil || row[1] == "0" {
				t.Errorf("%s, %s: no row with a capacity in\n%s", w.name, target, report)
			}
		}
		if !w.stream && !regexp.MustCompile(`(?m)^\| `+regexp.QuoteMeta(w.name)+` \| nginx, answering itself \| \| \| \| [0-9]+us \|`).MatchString(report) {
			t.Errorf("%s: no unloaded round trip to nginx answering by itself in\n%s", w.name, report)
		}
		if !strings.Contains(report, "| "+w.name+" | direct, again |") {
			t.Errorf("%s: no second measurement of direct access in\n%s", w.name, report)
		}
		if !strings.Contains(report, "- "+w.name+": llmlabd capacity ") {
			t.Errorf("%s: no verdict line in\n%s", w.name, report)
		}
	}
}
