package main_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// statusReport is what llmlab status --json says, as a script reads it.
type statusReport struct {
	State  string `json:"state"`
	Reason string `json:"reason"`
	Daemon *struct {
		Recent struct {
			Requests int            `json:"requests"`
			OK       int            `json:"ok"`
			P95      float64        `json:"p95_seconds"`
			Outcomes map[string]int `json:"outcomes"`
		} `json:"recent"`
		Engine struct {
			State     string `json:"state"`
			Lifecycle *struct {
				LastStartSeconds float64 `json:"last_start_seconds"`
				LastFailure      string  `json:"last_failure"`
			} `json:"lifecycle"`
		} `json:"engine"`
		Config struct {
			Path string `json:"path"`
		} `json:"config"`
	} `json:"daemon"`
	LastRun *struct {
		Up       bool           `json:"up"`
		Requests map[string]int `json:"requests_by_outcome"`
	} `json:"last_run"`
}

// llmlabStatus runs llmlab status and returns its output and exit code.
func llmlabStatus(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(toolBinary, append([]string{"status", "--no-systemd"}, args...)...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("llmlab status: %v\n%s", err, out)
	return "", 0
}

func statusJSON(t *testing.T, cfgPath string) (statusReport, int) {
	t.Helper()
	out, code := llmlabStatus(t, "--config", cfgPath, "--json")
	var r statusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("llmlab status --json: %v\n%s", err, out)
	}
	return r, code
}

// llmlab status against a real llmlabd managing the simulator: serving
// with the engine stopped, then the last minute's answers, the cold start
// and the engine's state after some requests; once llmlabd has exited, not
// running (exit 3) from the textfile, without a single connection to the
// API address.
func TestStatusCommand(t *testing.T) {
	engineAddr, api, metrics := freeAddr(t), freeAddr(t), freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	dir := t.TempDir()
	textfile := filepath.Join(dir, "llmlab.prom")
	cfgPath := writeConfig(t, fmt.Sprintf(`[gateway]
listen = %q
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "300ms", "--host", %q, "--port", %q]
expected_start_time = "1s"
[queue]
max_inflight = 4
[metrics]
listen = %q
textfile = %q
[slo]
latency = "5s"
[log]
format = "text"
`, api, engineAddr, toolBinary, host, port, metrics, textfile))
	d := start(t, nil, nil, "--config", cfgPath)

	r, code := statusJSON(t, cfgPath)
	if code != 0 || r.State != "serving" || r.Daemon == nil || r.Daemon.Engine.State != "stopped" || r.Daemon.Config.Path != cfgPath {
		t.Fatalf("before any request: exit %d, %+v; want 0, serving, the engine stopped, the config named", code, r)
	}
	for range 5 {
		if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":3}`); resp.StatusCode != 200 {
			t.Fatalf("request: %d %s", resp.StatusCode, body)
		}
	}
	post(t, d.api+"/v1/completions", `{"prompt":`)
	r, code = statusJSON(t, cfgPath)
	rc := r.Daemon.Recent
	if code != 0 || rc.Requests != 6 || rc.OK != 5 || rc.Outcomes["invalid"] != 1 || rc.P95 <= 0 {
		t.Fatalf("after 5 answers and a malformed request: exit %d, recent %+v", code, rc)
	}
	lc := r.Daemon.Engine.Lifecycle
	if r.Daemon.Engine.State != "ready" || lc == nil || lc.LastStartSeconds < 0.3 {
		t.Fatalf("engine %q, lifecycle %+v; want ready after a cold start of at least 0.3 s", r.Daemon.Engine.State, lc)
	}
	text, _ := llmlabStatus(t, "--config", cfgPath)
	for _, want := range []string{"llmlab: serving since", "engine:   ready since", "last cold start", "req/s", "within the 5s objective", "invalid 1",
		"the model's limit"} {
		if !strings.Contains(text, want) {
			t.Fatalf("llmlab status says\n%s\nwithout %q", text, want)
		}
	}

	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-d.exited; err != nil {
		t.Fatalf("exit: %v", err)
	}
	d.exited <- nil
	// Something listens where the API was, as systemd's socket would: a
	// status must not connect to it.
	l, err := net.Listen("tcp", api)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	r, code = statusJSON(t, cfgPath)
	if code != 3 || r.State != "not_running" || r.LastRun == nil || r.LastRun.Up || r.LastRun.Requests["ok"] != 5 || !strings.Contains(r.Reason, "exited at") {
		t.Fatalf("after llmlabd exited: exit %d, %+v (last run %+v); want 3, not running, the textfile's 5 answers", code, r, r.LastRun)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("llmlab status connected %d times to the API address", n)
	}
}

// An engine that cannot start makes llmlab status report failed (exit 1)
// with the reason.
func TestStatusEngineFailed(t *testing.T) {
	metrics := freeAddr(t)
	cfgPath := writeConfig(t, fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = ["/bin/false"]
max_cold_start_wait = "2s"
[metrics]
listen = %q
textfile = ""
[log]
format = "text"
`, freeAddr(t), metrics))
	d := start(t, nil, nil, "--config", cfgPath)
	post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":3}`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, code := statusJSON(t, cfgPath)
		if r.State == "failed" {
			if code != 1 || !strings.Contains(r.Reason, "the engine stopped unexpectedly") {
				t.Fatalf("failed engine: exit %d, reason %q", code, r.Reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the engine never showed as failed: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
