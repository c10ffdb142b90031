// Package monitoring holds the Prometheus alert rules (and their promtool
// unit tests) that the package ships under /usr/share/llmlab/monitoring.
package monitoring

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/llmlab/llmlab/internal/promtool"
)

// The rules pass promtool's check and its unit tests (each alert firing
// where it should and silent where it should not).
func TestAlertRules(t *testing.T) {
	p, err := promtool.Path()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "rules", "llmlab-alerts.yml"}, {"test", "rules", "llmlab-alerts.test.yml"}} {
		out, err := exec.Command(p, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Every llmlab series the rules read is in the catalogue (docs/metrics.md),
// which is tested against the live registry: a renamed series cannot leave
// an alert silently reading nothing.
func TestRulesReadCataloguedSeries(t *testing.T) {
	rules, err := os.ReadFile("llmlab-alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	var exprs strings.Builder
	for _, line := range strings.Split(string(rules), "\n") {
		if l := strings.TrimSpace(line); !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "summary:") && !strings.HasPrefix(l, "description:") {
			exprs.WriteString(l + "\n")
		}
	}
	seen := map[string]bool{}
	for _, name := range regexp.MustCompile(`\bllmlab_[a-z_]+`).FindAllString(exprs.String(), -1) {
		name = regexp.MustCompile(`_(bucket|count|sum)$`).ReplaceAllString(name, "")
		if seen[name] {
			continue
		}
		seen[name] = true
		if !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("the rules read %s, which docs/metrics.md does not list", name)
		}
	}
	if len(seen) < 6 {
		t.Fatalf("found only %d series in the rules: %v", len(seen), seen)
	}
}
