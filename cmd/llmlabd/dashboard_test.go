package main_test

import (
	"context"
	"flag"
	"fmt"
	"github.com/llmlab/llmlab/internal/lockedbuf"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/dashboard"
	"github.com/llmlab/llmlab/etc/monitoring"
	"github.com/llmlab/llmlab/internal/promtool"
)

var picture = flag.String("picture", "", "also draw the dashboard from the recorded run into this SVG file (docs/dashboard.svg)")

// The shipped Grafana dashboard against real scrapes: Debian's Prometheus
// scrapes a socket-activated llmlabd (in front of the simulator it manages,
// gtx1650 profile) and Debian's node_exporter reading llmlabd's textfile,
// every second, through a benchmark: a light load, an overload, an exit on
// idle, and a cold start. Then every panel's query (and the annotation's),
// its template variables substituted as Grafana would, runs on Prometheus's
// HTTP API over the run and must return series. The GPU device panels may
// be empty only on a machine without an NVIDIA driver, where
// llmlab_gpu_up must then say 0.
//
//	go test ./cmd/llmlabd -run TestDashboardAgainstPrometheus -args -picture ../../docs/dashboard.svg
//
// draws the picture in docs/dashboard.svg from the same data.
func TestDashboardAgainstPrometheus(t *testing.T) {
	promBin, err := promtool.Debian("prometheus", "prometheus")
	if err != nil {
		t.Fatal(err)
	}
	nodeBin, err := promtool.Debian("prometheus-node-exporter", "prometheus-node-exporter")
	if err != nil {
		t.Fatal(err)
	}
	engineAddr, metricsAddr, nodeAddr, promAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	collector := t.TempDir()
	cfgPath := writeConfig(t, fmt.Sprintf(`[gateway]
exit_idle_timeout = "2s"
state_dir = %q
[engine]
url = "http://%s"
models = ["Qwen/Qwen2.5-0.5B-Instruct"]
command = [%q, "sim", "--profile", "gtx1650", "--startup-delay", "2s", "--host", %q, "--port", %q]
idle_timeout = "3s"
[queue]
max_queued = 64
[metrics]
listen = %q
textfile = %q
[log]
format = "text"
`, t.TempDir(), engineAddr, toolBinary, host, port, metricsAddr, filepath.Join(collector, "llmlab.prom")))

	daemonize(t, nodeBin, "--web.listen-address="+nodeAddr, "--collector.disable-defaults",
		"--collector.textfile", "--collector.textfile.directory="+collector)
	promDir := t.TempDir()
	promCfg := filepath.Join(promDir, "prometheus.yml")
	os.WriteFile(promCfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
scrape_configs:
  - job_name: llmlab
    static_configs: [{targets: [%q]}]
  - job_name: node
    static_configs: [{targets: [%q]}]
`, metricsAddr, nodeAddr)), 0o644)
	daemonize(t, promBin, "--config.file="+promCfg, "--storage.tsdb.path="+filepath.Join(promDir, "data"),
		"--web.listen-address="+promAddr)
	promURL := "http://" + promAddr
	waitHTTP(t, promURL+"/-/ready")
	waitHTTP(t, "http://"+nodeAddr+"/metrics")

	start := time.Now()
	bench := func(addr string, args ...string) {
		t.Helper()
		argv := append([]string{"bench", "--target", "http://" + addr, "--target-engine-metrics", "http://" + engineAddr + "/metrics",
			"--results", "", "--progress", "off", "--drain-timeout", "20s"}, args...)
		// Exit status 3: a phase missed the SLO, as the overload must.
		out, err := exec.Command(toolBinary, argv...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); err != nil && !(ok && ee.ExitCode() == 3) {
			t.Fatalf("llmlab %s: %v\n%s", strings.Join(argv, " "), err, out)
		}
		t.Logf("llmlab %s\n%s", strings.Join(argv, " "), out)
	}
	// Run 1: light load, then three times the engine's capacity (the
	// gtx1650 profile holds 5.25 req/s at vLLM's defaults: refusals), then
	// idle until the engine stops and llmlabd exits. The queue's limits
	// are the shipped ones (the model chooses the in-flight limit).
	a := socketActivate(t, cfgPath)
	bench(a.addr, "--rates", "2,16", "--duration", "10s")
	waitExit(t, a)
	time.Sleep(5 * time.Second) // scaled to zero: only the textfile speaks
	// Run 2: the next request activates llmlabd again, through a cold start.
	a = socketActivate(t, cfgPath)
	bench(a.addr, "--rate", "3", "--duration", "8s")
	waitExit(t, a)
	time.Sleep(3 * time.Second) // the last scrapes
	end := time.Now()

	d, err := dashboard.Parse(monitoring.Dashboard)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := d.Queries(d.Vars(10*time.Second, nil))
	if err != nil {
		t.Fatal(err)
	}
	results := dashboard.Evaluate(context.Background(), promURL, qs, start, end, time.Second)
	_, driver := os.Stat("/dev/nvidiactl")
	hasGPU := driver == nil
	gpuUp := false
	for _, r := range results {
		if strings.Contains(r.Query.Expr, "llmlab_gpu_up") && len(r.Series) > 0 {
			gpuUp = true
			for _, p := range r.Series[0].Points {
				if (p.V == 1) != hasGPU {
					t.Errorf("llmlab_gpu_up = %v with an NVIDIA driver here: %v", p.V, hasGPU)
					break
				}
			}
		}
	}
	if !gpuUp {
		t.Error("no llmlab_gpu_up in the recording")
	}
	for _, r := range results {
		switch {
		case r.Err != nil:
			t.Errorf("panel %q: %v", r.Query.Panel.Title, r.Err)
		case len(r.Series) > 0:
		case !hasGPU && strings.Contains(r.Query.Expr, "llmlab_gpu_") && !strings.Contains(r.Query.Expr, "llmlab_gpu_up"):
			t.Logf("panel %q: no data without a GPU, as expected: %s", r.Query.Panel.Title, r.Query.Expr)
		default:
			t.Errorf("panel %q: no data over the run: %s", r.Query.Panel.Title, r.Query.Expr)
		}
	}
	// The command an operator runs draws the same panels.
	svg := filepath.Join(t.TempDir(), "dashboard.svg")
	cmd := exec.Command(toolBinary, "dashboard", "--prometheus", promURL, "--since", end.Sub(start).Round(time.Second).String(),
		"--end", end.Format(time.RFC3339), "--step", "1s", "--rate-interval", "10s", "--out", svg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("llmlab dashboard: %v\n%s", err, out)
	}
	if data, err := os.ReadFile(svg); err != nil || !strings.Contains(string(data), "Goodput and requests") || !strings.Contains(string(data), "<path d=\"M") {
		t.Fatalf("llmlab dashboard drew no panels: %v\n%.500s", err, data)
	}
	if *picture != "" {
		svg := dashboard.Render("llmlab dashboard: llmlab bench on the simulator (gtx1650 profile), drawn by llmlab dashboard", results, start, end)
		if err := os.WriteFile(*picture, []byte(svg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// daemonize runs a server for the rest of the test.
func daemonize(t *testing.T, bin string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	logs := &lockedbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", filepath.Base(bin), logs.String())
		}
	})
}

// waitHTTP waits for url to answer 200.
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer in 30 s: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitExit waits for a socket-activated llmlabd to exit on idle.
func waitExit(t *testing.T, a *activated) {
	t.Helper()
	select {
	case err := <-a.exited:
		if err != nil || !strings.Contains(a.logs.String(), "exiting on idle") {
			t.Fatalf("llmlabd exited (%v), not on idle:\n%s", err, a.logs.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("llmlabd did not exit on idle in 60 s:\n%s", a.logs.String())
	}
}
