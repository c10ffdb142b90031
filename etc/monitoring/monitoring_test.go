package monitoring

import (
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/dashboard"
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
	listed := catalogue(t)
	var exprs strings.Builder
	for _, line := range strings.Split(string(rules), "\n") {
		if l := strings.TrimSpace(line); !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "summary:") && !strings.HasPrefix(l, "description:") {
			exprs.WriteString(l + "\n")
		}
	}
	seen := map[string]bool{}
	for _, name := range regexp.MustCompile(`\bllmlab_[a-z_]+`).FindAllString(exprs.String(), -1) {
		name, ok := listed(name)
		if seen[name] {
			continue
		}
		seen[name] = true
		if !ok {
			t.Errorf("the rules read %s, which docs/metrics.md does not list", name)
		}
	}
	if len(seen) < 6 {
		t.Fatalf("found only %d series in the rules: %v", len(seen), seen)
	}
}

// Every series the dashboard reads is in the catalogue (docs/metrics.md,
// tested against the live registry; llmlab_up is the textfile's), every
// query expands with the dashboard's own variables, and every panel and
// target queries the datasource variable, so that an import asks for one
// Prometheus and nothing else. cmd/llmlabd's TestDashboardAgainstPrometheus
// runs the queries on a real Prometheus.
func TestDashboardReadsCataloguedSeries(t *testing.T) {
	listed := catalogue(t)
	var raw struct {
		Panels []struct {
			Title      string `json:"title"`
			Type       string `json:"type"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Datasource struct {
					UID string `json:"uid"`
				} `json:"datasource"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(Dashboard, &raw); err != nil {
		t.Fatal(err)
	}
	for _, p := range raw.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %q with %d targets, want ${datasource} and at least one", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, tg := range p.Targets {
			if tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: a target queries %q", p.Title, tg.Datasource.UID)
			}
		}
	}
	d, err := dashboard.Parse(Dashboard)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := d.Queries(d.Vars(time.Minute, nil))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, q := range qs {
		for _, name := range dashboard.Metrics(q.Expr) {
			name, ok := listed(name)
			if seen[name] {
				continue
			}
			seen[name] = true
			if !ok {
				t.Errorf("panel %q reads %s, which docs/metrics.md does not list", q.Panel.Title, name)
			}
		}
	}
	// The list: goodput and rates, percentiles, TTFT, queue and in
	// flight, refusals, engine state and starts, GPU memory and
	// utilisation, the KV cache.
	for _, name := range []string{"llmlab_request_duration_seconds", "llmlab_requests_total", "llmlab_time_to_first_token_seconds",
		"llmlab_queue_depth", "llmlab_inflight_sequences", "llmlab_inflight_limit", "llmlab_engine_state", "llmlab_engine_starts_total",
		"llmlab_engine_start_seconds", "llmlab_gpu_memory_used_bytes", "llmlab_gpu_utilization_ratio", "llmlab_engine_kv_cache_usage_ratio", "llmlab_up"} {
		if !seen[name] {
			t.Errorf("no panel reads %s", name)
		}
	}
}

// catalogue reads docs/metrics.md and returns a check of a series name as
// a query writes it: its family (without a histogram's _bucket, _count or
// _sum) and whether the catalogue lists that family.
func catalogue(t *testing.T) func(name string) (string, bool) {
	t.Helper()
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	suffix := regexp.MustCompile(`_(bucket|count|sum)$`)
	return func(name string) (string, bool) {
		family := suffix.ReplaceAllString(name, "")
		return family, strings.Contains(string(doc), "`"+family+"`")
	}
}
