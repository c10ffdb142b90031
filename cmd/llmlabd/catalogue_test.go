package main_test

import (
	"flag"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/llmlab/llmlab/internal/metricsdoc"
	"github.com/llmlab/llmlab/internal/promtool"
)

var update = flag.Bool("update", false, "rewrite docs/metrics.md from the live registry")

// docs/metrics.md's table of llmlabd's series is the live registry's: a
// running llmlabd, in front of the simulator it manages, with the limit
// chosen from the engine model, after answered, refused, malformed and streamed requests,
// serves exactly the families the table lists (GPU device series aside:
// daemon/gpu checks those against NVML's mock), with the same types,
// labels and help. go test -run TestMetricsCatalogue -args -update
// rewrites the table.
func TestMetricsCatalogue(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	cfgPath := writeConfig(t, fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "0s", "--host", %q, "--port", %q]
[queue]
concurrency = "model"
max_inflight = 4
max_queued = 1
[limits]
rate = 1000.0
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[balancer]
agent_listen = "127.0.0.1:0"
[log]
format = "text"
`, engineAddr, toolBinary, host, port))
	d := start(t, nil, nil, "--config", cfgPath)
	for range 3 {
		if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":3}`); resp.StatusCode != 200 {
			t.Fatalf("request: %d %s", resp.StatusCode, body)
		}
	}
	post(t, d.api+"/v1/completions", `{"prompt":`)
	post(t, d.api+"/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":3,"stream":true}`)
	// The engine's gauges come with its first scrape.
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := fetch(t, d.metrics+"/metrics")
		if strings.Contains(m, "llmlab_engine_requests_running ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no engine reading in 10 s:\n%s", m)
		}
		time.Sleep(50 * time.Millisecond)
	}
	scrape := fetch(t, d.metrics+"/metrics")
	// Prometheus's own linter finds nothing to say about it.
	tool, err := promtool.Path()
	if err != nil {
		t.Fatal(err)
	}
	check := exec.Command(tool, "check", "metrics")
	check.Stdin = strings.NewReader(scrape)
	if out, err := check.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("promtool check metrics on a live /metrics: %v\n%s", err, out)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(scrape))
	if err != nil {
		t.Fatal(err)
	}
	var list []*dto.MetricFamily
	for _, f := range fams {
		list = append(list, f)
	}
	rows := metricsdoc.FromFamilies(list, "llmlab_")
	// Per-device GPU series (a gpu label) need a GPU: daemon/gpu checks
	// them against NVML's mock.
	rows = slices.DeleteFunc(rows, func(r metricsdoc.Row) bool { return slices.Contains(r.Labels, "gpu") })

	if err := metricsdoc.Check("../../docs/metrics.md", "llmlabd", metricsdoc.Render(rows), *update); err != nil {
		t.Fatal(err)
	}
}
