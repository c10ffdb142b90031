package status

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

type fakeUnits map[string]Unit

func (f fakeUnits) Unit(_ context.Context, name string) (Unit, error) {
	u, ok := f[name]
	if !ok {
		return Unit{}, errors.New("no such unit")
	}
	return u, nil
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

const exitedTextfile = `# HELP llmlab_up 1 while llmlabd runs; 0 once it has exited (on idle, or stopped).
# TYPE llmlab_up gauge
llmlab_up 0
# TYPE llmlab_engine_state gauge
llmlab_engine_state{state="ready"} 0
llmlab_engine_state{state="stopped"} 1
# TYPE llmlab_requests_total counter
llmlab_requests_total{code="200",outcome="ok",route="/v1/completions"} 40
llmlab_requests_total{code="503",outcome="slo",route="/v1/completions"} 2
`

// With llmlabd gone, systemd's view decides: a listening socket is scaled
// to zero (exit 0), a failed service is failed (exit 1), an inactive socket
// is not running (exit 3); the textfile says how the last run ended.
func TestStateFromSystemd(t *testing.T) {
	exited := time.Date(2026, 11, 30, 14, 0, 0, 0, time.UTC)
	listening := Unit{ActiveState: "active", SubState: "listening", Since: exited.Add(-time.Hour), Listen: []string{"127.0.0.1:8080"}}
	for _, tc := range []struct {
		name   string
		units  fakeUnits
		state  string
		code   int
		reason string
	}{
		{"scaled to zero", fakeUnits{SocketUnit: listening, ServiceUnit: {ActiveState: "inactive", SubState: "dead", Result: "success", Since: exited}}, ScaledZero, 0, ""},
		{"service failed", fakeUnits{SocketUnit: listening, ServiceUnit: {ActiveState: "failed", SubState: "failed", Result: "exit-code", Since: exited}}, Failed, 1, "llmlab.service failed (result exit-code)"},
		{"socket stopped", fakeUnits{SocketUnit: {ActiveState: "inactive", SubState: "dead", Since: exited}, ServiceUnit: {ActiveState: "inactive", SubState: "dead"}}, NotRunning, 3, "systemctl start llmlab.socket"},
		{"socket failed", fakeUnits{SocketUnit: {ActiveState: "failed", SubState: "failed", Since: exited}}, NotRunning, 3, "llmlab.socket is failed"},
		{"running but silent", fakeUnits{SocketUnit: listening, ServiceUnit: {ActiveState: "active", SubState: "running", Since: exited}}, Failed, 1, "does not answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tf := filepath.Join(dir, "llmlab.prom")
			if err := os.WriteFile(tf, []byte(exitedTextfile), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := config.Default()
			cfg.Metrics.Listen, cfg.Gateway.Listen, cfg.Metrics.Textfile = closedAddr(t), closedAddr(t), tf
			r := Gather(context.Background(), Options{Config: cfg, Units: tc.units})
			if r.State != tc.state || r.ExitCode() != tc.code || !strings.Contains(r.Reason, tc.reason) {
				t.Fatalf("%s: state %s (exit %d), reason %q; want %s (exit %d) with %q", tc.name, r.State, r.ExitCode(), r.Reason, tc.state, tc.code, tc.reason)
			}
			if r.LastRun == nil || r.LastRun.Up || r.LastRun.Requests["ok"] != 40 || r.LastRun.EngineState != "stopped" {
				t.Fatalf("last run %+v: want exited, 40 answered, engine stopped", r.LastRun)
			}
			if tc.state == ScaledZero && !r.Since.Equal(exited) {
				t.Fatalf("scaled to zero since %s, want when the service stopped (%s)", r.Since, exited)
			}
			var out bytes.Buffer
			Render(&out, r, exited.Add(10*time.Minute))
			if tc.state == ScaledZero && !strings.Contains(out.String(), "scaled to zero since") || !strings.Contains(out.String(), "last run: 42 requests (40 answered)") {
				t.Fatalf("rendered:\n%s", out.String())
			}
		})
	}
}

// An engine on a sleep rung shows its level and the wake it expects.
func TestRenderSleepLevel(t *testing.T) {
	now := time.Now()
	var d server.Status
	d.Engine.State, d.Engine.SleepLevel = "deep_sleeping", 2
	d.Engine.ExpectedWakeSeconds = map[string]float64{"1": 0.3, "2": 1.265}
	d.Engine.Lifecycle = &supervisor.Info{State: "deep_sleeping", Since: now.Add(-time.Minute)}
	var b strings.Builder
	renderDaemon(&b, &d, nil, now)
	if want := "engine:   deep_sleeping (vLLM's sleep level 2, wakes in about 1.27s) since "; !strings.Contains(b.String(), want) {
		t.Fatalf("renderDaemon:\n%s\nwant a line with %q", b.String(), want)
	}
}
