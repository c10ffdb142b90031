//go:build systemtest

package units

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// monitoringDebs copies Debian's prometheus and prometheus-node-exporter,
// with the dependencies the rootfs lacks (units/testdata/monitoring-debs.sh,
// cached), next to the packages under test, so that the container sees
// them at /mnt/dist/monitoring.
func monitoringDebs(t *testing.T, dist string) {
	t.Helper()
	rootfs, err := exec.Command("sh", "testdata/build-rootfs.sh").Output()
	if err != nil {
		t.Fatalf("building the rootfs: %v", err)
	}
	out, err := exec.Command("sh", "testdata/monitoring-debs.sh", strings.TrimSpace(string(rootfs))).Output()
	if err != nil {
		t.Fatalf("monitoring-debs.sh (needs apt and the Debian mirror): %v", err)
	}
	debs, _ := filepath.Glob(filepath.Join(strings.TrimSpace(string(out)), "*.deb"))
	dst := filepath.Join(dist, "monitoring")
	os.MkdirAll(dst, 0o755)
	for _, d := range debs {
		data, err := os.ReadFile(d)
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, filepath.Base(d)), data, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// promQuery asks Prometheus's HTTP API for an instant vector and returns
// each series' labels and value.
func promQuery(t *testing.T, prom, query string) []map[string]string {
	t.Helper()
	resp, err := http.Get(prom + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Status != "success" {
		t.Fatalf("Prometheus query %s: %v %s", query, err, body.Error)
	}
	var out []map[string]string
	for _, r := range body.Data.Result {
		r.Metric["value"], _ = r.Value[1].(string)
		out = append(out, r.Metric)
	}
	return out
}

// waitQuery waits for query to return exactly one series with value want.
func waitQuery(t *testing.T, c *container, prom, query, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		res := promQuery(t, prom, query)
		if len(res) == 1 && res[0]["value"] == want {
			return
		}
		if time.Now().After(deadline) {
			journal, _ := c.exec("journalctl", "--no-pager", "-n", "40", "-u", "prometheus")
			t.Fatalf("Prometheus: %s = %v after %s, want one series at %s\n%s", query, res, within, want, journal)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// Debian's prometheus and prometheus-node-exporter, installed with dpkg in
// the container next to the installed .deb, read llmlab as an operator
// would set them up: Prometheus scrapes llmlabd's metrics listener and
// node_exporter, whose textfile collector reads llmlab.prom, and loads the
// shipped alert rules. While llmlabd serves, its series are there; after
// the engine stopped and llmlabd exited on idle, the textfile's series are
// still there (llmlab_up 0, the request count), llmlabd's own target is
// down, and 30 s of scrapes (one a second) started neither llmlabd nor the
// engine. The shipped rules load, and every query of the shipped dashboard
// evaluates (llmlab dashboard --check, the installed binary).
// The packages' services would start on 9090 and 9100 of this machine's
// network, which the container shares: policy-rc.d holds them while dpkg
// installs, and they start only once told to listen on ports of the
// test's own.
func TestPrometheusAndNodeExporter(t *testing.T) {
	dist, _, _ := buildDebs(t)
	monitoringDebs(t, dist)
	c, _, _ := bootWithPackage(t)
	metricsPort, nodePort, promPort := freePort(t), freePort(t), freePort(t)
	api := useSimulatorWith(c, t, fmt.Sprintf("127.0.0.1:%d", metricsPort), "4s")

	c.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n")
	c.must("chmod", "755", "/usr/sbin/policy-rc.d")
	c.must("sh", "-c", "dpkg -i /mnt/dist/monitoring/*.deb")
	c.must("rm", "/usr/sbin/policy-rc.d")
	for _, u := range []string{"prometheus.service", "prometheus-node-exporter.service"} {
		if s := c.active(u); s == "active" {
			t.Fatalf("%s started on its default port while dpkg installed it", u)
		}
	}
	c.write("/etc/default/prometheus-node-exporter", fmt.Sprintf(
		"ARGS=\"--web.listen-address=127.0.0.1:%d --collector.disable-defaults --collector.textfile --collector.textfile.directory=/var/lib/prometheus/node-exporter\"\n", nodePort))
	c.write("/etc/default/prometheus", fmt.Sprintf("ARGS=\"--web.listen-address=127.0.0.1:%d\"\n", promPort))
	c.write("/etc/prometheus/prometheus.yml", fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - /usr/share/llmlab/monitoring/llmlab-alerts.yml
scrape_configs:
  - job_name: llmlab
    static_configs: [{targets: ["127.0.0.1:%d"]}]
  - job_name: node
    static_configs: [{targets: ["127.0.0.1:%d"]}]
`, metricsPort, nodePort))
	c.must("systemctl", "restart", "prometheus-node-exporter.service", "prometheus.service")
	c.waitActive("prometheus.service", "active", 20*time.Second)
	prom := fmt.Sprintf("http://127.0.0.1:%d", promPort)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(prom + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			journal, _ := c.exec("journalctl", "--no-pager", "-n", "40", "-u", "prometheus")
			t.Fatalf("Prometheus not ready in 30 s: %v\n%s", err, journal)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The shipped rules loaded in the real server.
	resp, err := http.Get(prom + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []any  `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	json.NewDecoder(resp.Body).Decode(&rules)
	resp.Body.Close()
	if len(rules.Data.Groups) < 2 {
		t.Fatalf("Prometheus loaded %d rule groups from the shipped llmlab-alerts.yml, want them all", len(rules.Data.Groups))
	}

	// Serving: llmlabd's own series and the textfile's.
	// Requests for 4 s after the cold start, so that several scrapes find
	// the engine ready.
	requests, first := 0, time.Time{}
	for first.IsZero() || time.Since(first) < 4*time.Second {
		if code, _, body := completion(t, api); code != 200 {
			t.Fatalf("request: %d %s", code, body)
		}
		if requests++; first.IsZero() {
			first = time.Now()
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitQuery(t, c, prom, `sum(llmlab_requests_total{job="llmlab",outcome="ok"})`, fmt.Sprint(requests), 15*time.Second)
	waitQuery(t, c, prom, `llmlab_up{job="node"}`, "1", 15*time.Second)
	waitQuery(t, c, prom, `max_over_time(llmlab_engine_state{job="llmlab",state="ready"}[1m])`, "1", 15*time.Second) // the engine stops 2 s after the last request

	// Scaled to zero: the engine stops, llmlabd exits; the textfile speaks.
	c.waitActive("llmlab-vllm.service", "inactive", 30*time.Second)
	c.waitActive("llmlab.service", "inactive", 30*time.Second)
	daemonStart := c.must("systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "--value", "llmlab.service")
	engineStart := c.must("systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "--value", "llmlab-vllm.service")
	waitQuery(t, c, prom, `up{job="llmlab"}`, "0", 15*time.Second)
	waitQuery(t, c, prom, `llmlab_up{job="node"}`, "0", 15*time.Second)
	waitQuery(t, c, prom, `sum(llmlab_requests_total{job="node",outcome="ok"})`, fmt.Sprint(requests), 15*time.Second)
	waitQuery(t, c, prom, `llmlab_engine_state{job="node",state="stopped"}`, "1", 15*time.Second)

	// Half a minute of scrapes, once a second, wakes nothing.
	time.Sleep(30 * time.Second)
	if n := promQuery(t, prom, `count_over_time(up{job="llmlab"}[30s])`); len(n) != 1 {
		t.Fatalf("scrapes of llmlabd in the last 30 s: %v", n)
	} else {
		t.Logf("Prometheus scraped llmlabd's listener %s times in the last 30 s, node_exporter as often", n[0]["value"])
	}
	for unit, before := range map[string]string{"llmlab.service": daemonStart, "llmlab-vllm.service": engineStart} {
		if s := c.active(unit); s != "inactive" {
			t.Fatalf("%s is %s after 30 s of scrapes", unit, s)
		}
		if after := c.must("systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", "--value", unit); after != before {
			t.Fatalf("%s was started during the scrapes (start time %s, then %s)", unit, before, after)
		}
	}
	if res := promQuery(t, prom, `max_over_time(llmlab_up{job="node"}[25s])`); len(res) != 1 || res[0]["value"] != "0" {
		t.Fatalf("llmlab_up over the last 25 s: %v, want 0 throughout", res)
	}

	// The shipped dashboard's queries all evaluate on this server.
	if out, err := c.exec("llmlab", "dashboard", "--check", "--prometheus", prom, "--since", "5m"); err != nil {
		t.Fatalf("llmlab dashboard --check: %v\n%s", err, out)
	}
}
