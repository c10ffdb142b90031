// Package server owns llmlabd's process lifecycle: it loads the
// configuration, opens the listeners (socket-activated or its own), wires
// the gateway, serves the API and metrics, keeps systemd informed, reloads
// on request and drains on shutdown.
//
// Run is the entry point; the lifecycle is the daemon type's, in files
// named for its parts:
//
//  1. newDaemon (wiring.go) loads the configuration, opens the listeners
//     (listeners.go) and builds every part on one registry: the engine's
//     supervisor (engine.go), the gateway, what was learned in an earlier
//     run (learned.go). Nothing runs yet; a failure here fails the start.
//  2. serve (this file) starts the parts and the listeners, says READY=1,
//     and runs the main loop, whose goroutine alone owns the loop's state:
//     the watchdog, STATUS=, the textfile and the learned state's saving,
//     the exit on idle, and reload (reload.go) on SIGHUP.
//  3. shutdown (drain.go) drains when ctx is cancelled or llmlabd exits on
//     idle; stop then ends the parts.
//
// Shutdown (ctx cancelled, e.g. by SIGTERM):
//
//  1. STOPPING=1; the listeners close, so no new connection is accepted
//     (a socket-activated one stays open in systemd for the next start),
//     and keep-alive ends.
//  2. Queued requests are answered 503 (draining) at once. A request on a
//     connection accepted before step 1 is served if a slot is free, else
//     answered 503 too; none is left unanswered.
//  3. Requests in the engine finish within gateway.shutdown_grace; then the
//     remaining connections are closed.
//  4. Run returns nil, so the process exits 0.
package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/daemon/agent"
	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/enginemetrics"
	"github.com/llmlab/llmlab/daemon/gateway"
	"github.com/llmlab/llmlab/daemon/gpu"
	"github.com/llmlab/llmlab/daemon/sd"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

type Options struct {
	// ConfigPath is the configuration file; Explicit says the user named it
	// (a missing default file means "use defaults", a missing named one is
	// an error).
	ConfigPath string
	Explicit   bool
	// Listen and EngineURL override the file when not empty.
	Listen        string
	EngineURL     string
	MetricsListen string
	// Reload receives a value for each SIGHUP.
	Reload <-chan struct{}
	// Stderr receives plain-text logs.
	Stderr io.Writer
}

// LoadConfig reads the configuration and applies the flag overrides.
func LoadConfig(o Options) (*config.Config, *auth.Keys, error) {
	cfg, err := config.Load(o.ConfigPath, o.Explicit)
	if err != nil {
		return nil, nil, err
	}
	if o.Listen != "" {
		if _, _, err := net.SplitHostPort(o.Listen); err != nil {
			return nil, nil, fmt.Errorf("flag --listen %q: not a host:port address", o.Listen)
		}
		cfg.Gateway.Listen = o.Listen
	}
	if o.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(o.MetricsListen); err != nil {
			return nil, nil, fmt.Errorf("flag --metrics-listen %q: not a host:port address", o.MetricsListen)
		}
		cfg.Metrics.Listen = o.MetricsListen
	}
	if o.EngineURL != "" {
		u, err := config.EngineURL(o.EngineURL)
		if err != nil {
			return nil, nil, fmt.Errorf("flag --engine-url %q: %w", o.EngineURL, err)
		}
		cfg.Engine.URL = u
	}
	var keys *auth.Keys
	if cfg.Auth.KeysFile != "" {
		keys, err = auth.Load(cfg.Auth.KeysFile)
		if err != nil {
			return nil, nil, fmt.Errorf("config %s: key auth.keys_file = %q: %w", cfg.Path, cfg.Auth.KeysFile, err)
		}
	}
	return cfg, keys, nil
}

// Run serves until ctx is cancelled, then drains and returns nil. It
// returns an error when the daemon cannot start or a listener fails.
func Run(ctx context.Context, o Options) error {
	d, err := newDaemon(o)
	if err != nil {
		return err
	}
	return d.serve(ctx)
}

// daemon is one run of llmlabd, from newDaemon to the return of serve.
// Its parts are built once; a reload swaps the configuration in st and
// hands each part its share.
type daemon struct {
	o      Options
	log    *slog.Logger
	notify *sd.Notifier
	keys   *auth.Keys // as loaded at start (a reload hands the gateway its own)
	// st holds the running configuration and answers /status.
	st  *statusSource
	lns *listeners
	reg *prometheus.Registry

	engine  gateway.Engine         // the supervisor, or externalEngine
	sup     *supervisor.Supervisor // nil when the engine is managed elsewhere
	mon     *gpu.Monitor           // nil when gpu.enabled is false
	adm     *gpu.Admission         // nil when gpu.enabled is false
	host    hostMemory             // what the sleep ladder's level 1 is checked against
	gw      *gateway.Gateway
	scraper *enginemetrics.Scraper // nil when engine.metrics_interval is 0
	agent   *agent.Server          // nil without balancer.agent_listen
	learned *learned

	apiSrv, metricsSrv *http.Server
	conns              *connTracker

	// Set by start: listener failures, the end of accepting (see drain),
	// and the ends of the background work, the supervisor and NVML.
	errc                     chan error
	accepting                chan struct{}
	supDone                  chan struct{}
	stopBg, stopSup, stopGPU context.CancelFunc
	started                  time.Time
}

// serve starts the daemon and runs its main loop until ctx is cancelled
// (a drain: nil), a listener fails (its error) or it exits on idle.
func (d *daemon) serve(ctx context.Context) error {
	d.start()
	defer d.stop()
	d.notify.Ready(d.st.line())
	d.started = time.Now()

	var watchdog <-chan time.Time
	if iv := sd.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		watchdog = t.C
	}
	statusTick := time.NewTicker(500 * time.Millisecond)
	defer statusTick.Stop()
	saveTick := time.NewTicker(30 * time.Second)
	defer saveTick.Stop()

	for {
		select {
		case <-ctx.Done():
			d.notify.Stopping("draining")
			return d.shutdown()
		case err := <-d.errc:
			d.notify.Stopping("listener failed")
			_ = d.apiSrv.Close()
			_ = d.metricsSrv.Close()
			return err
		case <-d.o.Reload:
			d.notify.Reloading()
			d.reload()
			d.notify.Ready(d.st.line())
		case <-watchdog:
			d.notify.Watchdog()
		case now := <-statusTick.C:
			d.notify.Status(d.st.line())
			d.learned.writeTextfile(true)
			if idle := d.st.cfgNow().Gateway.ExitIdleTimeout; d.lns.activated && idleLongEnough(now, d.started, d.gw, d.engine, idle) {
				d.log.Info("exiting on idle; the socket stays with systemd", "exit_idle_timeout", idle)
				d.notify.Stopping("exiting on idle")
				return d.shutdown()
			}
		case <-saveTick.C:
			d.learned.save()
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
