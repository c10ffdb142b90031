package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/supervisor"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

// A reload applies at once what can be applied, and logs, without
// applying it, a change that needs llmlabd restarted; a file that does not
// load is refused and the running configuration kept.
func TestReload(t *testing.T) {
	engines := map[string]*fakeengine.Engine{"a": {}, "b": {}}
	urls := map[string]string{}
	for name, e := range engines {
		srv := httptest.NewServer(e)
		t.Cleanup(srv.Close)
		urls[name] = srv.URL
	}
	conf := func(engine string, maxInflight int, set ...string) string {
		return testConfig(append([]string{fmt.Sprintf("engine.url = %q", urls[engine]), `queue.concurrency = "fixed"`, fmt.Sprintf("queue.max_inflight = %d", maxInflight)}, set...)...)
	}
	for _, tc := range []struct {
		name string
		next string
		// inflight is the in-flight limit after the reload, in the
		// running configuration and in the queue.
		inflight int
		// engine is the engine's URL in the running configuration after
		// the reload; served the one that answers a request.
		engine, served string
		// logged are the log lines the reload must write; restart says
		// whether one says a restart is needed.
		logged  []string
		restart bool
	}{
		{name: "a limit applies at once", next: conf("a", 4), inflight: 4, engine: "a", served: "a",
			logged: []string{`msg=reloaded changes="queue.max_inflight: 8 -> 4"`}},
		{name: "engine.url needs a restart", next: conf("b", 8), inflight: 8, engine: "b", served: "a",
			logged: []string{`msg="setting needs a restart to take effect" change="engine.url: ` + urls["a"] + ` -> ` + urls["b"] + `"`,
				`msg=reloaded changes="engine.url: ` + urls["a"] + ` -> ` + urls["b"] + `"`},
			restart: true},
		{name: "both at once", next: conf("b", 4), inflight: 4, engine: "b", served: "a",
			logged:  []string{`change="engine.url: `, `msg=reloaded changes="engine.url: ` + urls["a"] + ` -> ` + urls["b"] + `; queue.max_inflight: 8 -> 4"`},
			restart: true},
		// The engine's part of limits.max_tokens needs an engine
		// restart; an engine managed elsewhere has none to do, and no
		// restart is asked for.
		{name: "an engine setting with an external engine", next: conf("a", 8, "limits.max_tokens = 100"), inflight: 8, engine: "a", served: "a",
			logged: []string{`msg=reloaded changes="limits.max_tokens: 1024 -> 100"`}},
		{name: "a bad file is refused", next: conf("b", 0), inflight: 8, engine: "a", served: "a",
			logged: []string{`msg="reload refused; keeping the running configuration"`, `queue.max_inflight = 0`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, logs, path := newTestDaemon(t, conf("a", 8))
			writeConfig(t, path, tc.next)
			d.reload()

			cfg := d.st.cfgNow()
			if cfg.Queue.MaxInflight != tc.inflight || d.gw.QueueStats().MaxInflight != tc.inflight {
				t.Errorf("after the reload: queue.max_inflight %d, the queue's %d; want %d", cfg.Queue.MaxInflight, d.gw.QueueStats().MaxInflight, tc.inflight)
			}
			if got := cfg.Engine.URL.String(); got != urls[tc.engine] {
				t.Errorf("after the reload: engine.url %s, want %s", got, urls[tc.engine])
			}
			for _, want := range tc.logged {
				if !strings.Contains(logs.String(), want) {
					t.Errorf("the log lacks %s:\n%s", want, logs)
				}
			}
			if got := len(logs.Lines("needs a restart")) > 0; got != tc.restart {
				t.Errorf("a restart logged as needed: %v, want %v:\n%s", got, tc.restart, logs)
			}

			// The gateway sends work to the engine it started with: a
			// reload does not move it.
			before := map[string]int{}
			for name, e := range engines {
				before[name] = e.Stats().Requests
			}
			api := httptest.NewServer(d.gw.Handler())
			defer api.Close()
			resp, err := http.Post(api.URL+"/v1/completions", "application/json",
				strings.NewReader(`{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":2}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("a completion after the reload: %s", resp.Status)
			}
			for name, e := range engines {
				want := before[name]
				if name == tc.served {
					want++
				}
				if got := e.Stats().Requests; got != want {
					t.Errorf("engine %s has %d requests, want %d (the request goes to engine %s)", name, got, want, tc.served)
				}
			}
			d.gw.CloseIdle()
		})
	}
}

// A reload hands the running supervisor its new settings without
// restarting the engine: a readiness probe that now answers makes the
// starting engine ready, the new idle timeout stops it, and the new stop
// grace bounds how long it may ignore SIGTERM.
func TestReloadSupervisor(t *testing.T) {
	srv := httptest.NewServer(&fakeengine.Engine{})
	t.Cleanup(srv.Close)
	conf := func(readyPath, idle, grace string) string {
		return testConfig(fmt.Sprintf("engine.url = %q", srv.URL),
			`engine.command = ["sh", "-c", "trap '' TERM; exec sleep 60"]`,
			fmt.Sprintf("engine.ready_path = %q", readyPath), fmt.Sprintf("engine.idle_timeout = %q", idle),
			fmt.Sprintf("engine.stop_grace = %q", grace))
	}
	d, logs, path := newTestDaemon(t, conf("/not-served", "1h", "20s"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.sup.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor := func(want supervisor.State, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for d.sup.State() != want {
			if time.Now().After(deadline) {
				t.Fatalf("the engine is %s after %s, want %s:\n%s", d.sup.State(), within, want, logs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	d.sup.Wake()
	time.Sleep(300 * time.Millisecond)
	if s := d.sup.State(); s != supervisor.Starting {
		t.Fatalf("with a ready_path the engine does not serve: %s, want starting", s)
	}
	writeConfig(t, path, conf("/health", "1s", "100ms"))
	d.reload()
	waitFor(supervisor.Ready, 2*time.Second)
	// Idle for 1 s, then stopped: SIGTERM is ignored, SIGKILL follows
	// the new 100 ms grace, not the old 20 s.
	waitFor(supervisor.Stopped, 3*time.Second)
	if len(logs.Lines("ignored SIGTERM for 100ms")) != 1 {
		t.Errorf("the stop does not say the engine was killed after the new 100ms grace:\n%s", logs)
	}
	if len(logs.Lines("needs a restart")) != 0 || len(logs.Lines("draining the engine")) != 0 {
		t.Errorf("the supervisor's settings asked for a restart:\n%s", logs)
	}
}

// A sleep rung's new time is the supervisor's at once; the engine is
// restarted only by a change that turns vLLM's sleep mode, which it is
// started with, on or off, and its environment then says so.
func TestReloadSleepMode(t *testing.T) {
	srv := httptest.NewServer(&fakeengine.Engine{})
	t.Cleanup(srv.Close)
	env := filepath.Join(t.TempDir(), "engine.env")
	conf := func(sleep, deep string) string {
		return testConfig(fmt.Sprintf("engine.url = %q", srv.URL), `engine.command = ["sh", "-c", "exec sleep 60"]`,
			fmt.Sprintf("engine.runtime_env = %q", env), `engine.idle_timeout = "1h"`,
			fmt.Sprintf("engine.sleep_after = %q", sleep), fmt.Sprintf("engine.deep_sleep_after = %q", deep))
	}
	d, logs, path := newTestDaemon(t, conf("0s", "0s"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.sup.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	ready := func() {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for d.sup.State() != supervisor.Ready {
			if time.Now().After(deadline) {
				t.Fatalf("the engine is %s, want ready:\n%s", d.sup.State(), logs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	d.sup.Wake()
	ready()
	for i, step := range []struct {
		sleep, deep string
		restarts    int
		sleepMode   bool
	}{
		{"0s", "50m", 1, true},  // on: a restart
		{"0s", "40m", 1, true},  // a new time: none
		{"10m", "40m", 1, true}, // level 1 added, still on: none
		{"0s", "0s", 2, false},  // off: a restart
		{"20m", "0s", 3, true},  // on again through level 1 alone
	} {
		writeConfig(t, path, conf(step.sleep, step.deep))
		d.reload()
		deadline := time.Now().Add(3 * time.Second)
		for len(logs.Lines("restarting the engine with its new settings")) < step.restarts && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		ready()
		if n := len(logs.Lines("restarting the engine with its new settings")); n != step.restarts {
			t.Fatalf("step %d (sleep_after %s, deep_sleep_after %s): %d restarts, want %d\n%s", i, step.sleep, step.deep, n, step.restarts, logs)
		}
		data, err := os.ReadFile(env)
		if err != nil || strings.Contains(string(data), "LLMLAB_ENABLE_SLEEP_MODE=1") != step.sleepMode {
			t.Fatalf("step %d: the engine's environment %q (%v), want sleep mode %v", i, data, err, step.sleepMode)
		}
	}
}

// metrics.pprof serves Go's profiler, or not, from the reload that sets it.
func TestReloadPprof(t *testing.T) {
	d, _, path := newTestDaemon(t, testConfig("metrics.pprof = false"))
	status := func() int {
		rec := httptest.NewRecorder()
		d.metricsSrv.Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/pprof/", nil))
		return rec.Code
	}
	if c := status(); c != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ with metrics.pprof = false: %d, want 404", c)
	}
	writeConfig(t, path, testConfig("metrics.pprof = true"))
	d.reload()
	if c := status(); c != http.StatusOK {
		t.Fatalf("/debug/pprof/ after a reload to metrics.pprof = true: %d, want 200", c)
	}
	writeConfig(t, path, testConfig("metrics.pprof = false"))
	d.reload()
	if c := status(); c != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ after a reload back to metrics.pprof = false: %d, want 404", c)
	}
}

// A reload that moves metrics.textfile writes the new file at once and
// removes the old one, so that node_exporter does not read two llmlabds.
func TestReloadTextfile(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.prom"), filepath.Join(dir, "b.prom")
	d, logs, path := newTestDaemon(t, testConfig(fmt.Sprintf("metrics.textfile = %q", a)))
	d.learned.writeTextfile(true)
	if _, err := os.Stat(a); err != nil {
		t.Fatalf("the textfile before the reload: %v", err)
	}
	writeConfig(t, path, testConfig(fmt.Sprintf("metrics.textfile = %q", b)))
	d.reload()
	if data, err := os.ReadFile(b); err != nil || !strings.Contains(string(data), "llmlab_up 1") {
		t.Fatalf("the textfile at its new path after the reload: %q, %v; want llmlab_up 1\n%s", data, err, logs)
	}
	if _, err := os.Stat(a); !os.IsNotExist(err) {
		t.Fatalf("the textfile at its old path after the reload: %v, want it removed", err)
	}
}

// The engine's environment goes where engine.runtime_env says at the
// engine's next start: the restart that its change asks for.
func TestReloadRuntimeEnv(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.env"), filepath.Join(dir, "b.env")
	conf := func(env string) string {
		return testConfig(`engine.command = ["true"]`, fmt.Sprintf("engine.runtime_env = %q", env))
	}
	d, logs, path := newTestDaemon(t, conf(a))
	writeConfig(t, path, conf(b))
	d.reload()
	if err := d.beforeEngineStart(context.Background()); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(b); err != nil || !strings.Contains(string(data), "LLMLAB_MAX_NEW_TOKENS=1024") {
		t.Fatalf("the engine's environment at the new engine.runtime_env: %q, %v\n%s", data, err, logs)
	}
	if _, err := os.Stat(a); !os.IsNotExist(err) {
		t.Fatalf("the engine's environment was written at the old engine.runtime_env too (%v)", err)
	}
}

// publicListener is a loopback listener that says it listens beyond
// loopback, as a socket-activated one on 0.0.0.0 does.
type publicListener struct{ net.Listener }

func (publicListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 8080} }

// A reload that would leave the API beyond loopback without API keys is
// refused, as the start is, unless gateway.allow_public_without_keys
// accepts the risk.
func TestReloadPublicWithoutKeys(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("alice sk-0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withKeys := testConfig(fmt.Sprintf("auth.keys_file = %q", keys))
	d, logs, path := newTestDaemon(t, withKeys)
	d.lns.api[0] = publicListener{d.lns.api[0]}

	writeConfig(t, path, testConfig("queue.max_queued = 7"))
	d.reload()
	if got := d.st.cfgNow(); got.Auth.KeysFile != keys || got.Queue.MaxQueued == 7 {
		t.Errorf("a reload that drops the keys of a public API was applied: auth.keys_file %q, queue.max_queued %d", got.Auth.KeysFile, got.Queue.MaxQueued)
	}
	if refused := logs.Lines("reload refused"); len(refused) != 1 || !strings.Contains(refused[0], "beyond loopback, without API keys") {
		t.Errorf("the refusal does not say why:\n%s", logs)
	}

	writeConfig(t, path, testConfig("queue.max_queued = 7", "gateway.allow_public_without_keys = true"))
	d.reload()
	if got := d.st.cfgNow(); got.Auth.KeysFile != "" || got.Queue.MaxQueued != 7 {
		t.Errorf("with allow_public_without_keys the reload was not applied: auth.keys_file %q, queue.max_queued %d", got.Auth.KeysFile, got.Queue.MaxQueued)
	}
	if len(logs.Lines("api listens beyond loopback without api keys")) != 1 {
		t.Errorf("the accepted risk is not logged:\n%s", logs)
	}

	writeConfig(t, path, testConfig("queue.max_queued = 7"))
	d.reload()
	if got := d.st.cfgNow(); !got.Gateway.AllowPublicWithoutKeys {
		t.Errorf("withdrawing allow_public_without_keys from a public API without keys was applied")
	}
	if n := len(logs.Lines("reload refused")); n != 2 {
		t.Errorf("withdrawing allow_public_without_keys: %d refusals logged, want 2:\n%s", n, logs)
	}
}
