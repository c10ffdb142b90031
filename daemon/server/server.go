// Package server owns llmlabd's process lifecycle: it loads the
// configuration, opens the listeners (socket-activated or its own), wires
// the gateway, serves the API and metrics, keeps systemd informed, reloads
// on request and drains on shutdown.
//
// This file is longer than the house's files: Run is one lifecycle whose
// parts (wiring, learned state, reload, drain) share state through
// closures, and splitting the file before Run becomes a daemon type would
// only spread those closures over files; issue 24 makes that type and
// splits it.
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
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmlab/llmlab/daemon/agent"
	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/connlimit"
	"github.com/llmlab/llmlab/daemon/enginemetrics"
	"github.com/llmlab/llmlab/daemon/gateway"
	"github.com/llmlab/llmlab/daemon/gpu"
	"github.com/llmlab/llmlab/daemon/logging"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/daemon/ratelimit"
	"github.com/llmlab/llmlab/daemon/sd"
	"github.com/llmlab/llmlab/daemon/statefile"
	"github.com/llmlab/llmlab/daemon/supervisor"
	"github.com/llmlab/llmlab/daemon/textfile"
)

// Options are the daemon's command-line inputs.
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

// gatewayConfig extracts the gateway's part of cfg.
func gatewayConfig(cfg *config.Config) gateway.Config {
	return gateway.Config{
		EngineURL:       cfg.Engine.URL,
		ClientTimeout:   cfg.Gateway.ClientTimeout,
		ResponseTimeout: cfg.Engine.ResponseTimeout,
		Limits: gateway.Limits{
			MaxTokens: cfg.Limits.MaxTokens,
			MaxN:      cfg.Limits.MaxN,
			Models:    cfg.Engine.Models,
		},
		MaxBodyBytes: cfg.Limits.MaxBodyBytes,
		Queue: queue.Config{
			MaxInflight: cfg.Queue.MaxInflight,
			MaxQueued:   cfg.Queue.MaxQueued,
			MaxWait:     cfg.Queue.MaxWait,
			BatchWindow: cfg.Queue.BatchWindow,
			MaxBatch:    cfg.Queue.MaxBatch,

			MaxColdStartWait: cfg.Engine.MaxColdStartWait,
			SLO:              cfg.SLO.Latency,
			BatchMaxWait:     cfg.Queue.BatchMaxWait,
			BatchShare:       cfg.Queue.BatchShare,
		},
		Coalesce: cfg.Queue.Coalesce,
		RateLimit: ratelimit.Config{
			Rate:        cfg.Limits.Rate,
			Burst:       cfg.Limits.Burst,
			GlobalRate:  cfg.Limits.GlobalRate,
			GlobalBurst: cfg.Limits.GlobalBurst,
		},
		AccessLog: cfg.Log.AccessLog,
	}
}

// engineBackend returns how the engine is run, or nil when it is managed
// elsewhere.
func engineBackend(cfg *config.Config, log *slog.Logger, stderr io.Writer, env func() []string) supervisor.Backend {
	switch {
	case cfg.Engine.Unit != "":
		return &supervisor.Systemd{Unit: cfg.Engine.Unit, Log: log.With("component", "supervisor")}
	case len(cfg.Engine.Command) > 0:
		return &supervisor.Exec{Argv: cfg.Engine.Command, Grace: cfg.Engine.StopGrace, Output: stderr, Env: env}
	}
	return nil
}

// runtimeEnv is where the engine's runtime settings go: engine.runtime_env,
// else the service's runtime directory under systemd, else nowhere.
func runtimeEnv(cfg *config.Config) string {
	if cfg.Engine.RuntimeEnv != "" {
		return cfg.Engine.RuntimeEnv
	}
	if dir, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":"); dir != "" {
		return filepath.Join(dir, "engine.env")
	}
	return ""
}

// warnDeprecated logs the keys cfg's file sets that no longer do anything,
// and the values adjusted to fit another.
func warnDeprecated(log *slog.Logger, cfg *config.Config) {
	for _, d := range cfg.Deprecated {
		log.Warn("deprecated setting", "config", cfg.Path, "setting", d)
	}
	for _, n := range cfg.Notes {
		log.Info("setting adjusted", "config", cfg.Path, "setting", n)
	}
}

// engineKnobs is the engine's part of the environment that follows the
// configuration: LLMLAB_MAX_NEW_TOKENS (limits.max_tokens), sleep mode,
// and vLLM's knobs that engine.* sets (none for 0, the engine's default).
func engineKnobs(c *config.Config) []string {
	env := []string{fmt.Sprintf("LLMLAB_MAX_NEW_TOKENS=%d", c.Limits.MaxTokens)}
	if c.Engine.SleepAfter > 0 {
		env = append(env, "LLMLAB_ENABLE_SLEEP_MODE=1")
	}
	for _, k := range []struct {
		name string
		v    int
	}{{"LLMLAB_MAX_NUM_SEQS", c.Engine.MaxNumSeqs}, {"LLMLAB_MAX_NUM_BATCHED_TOKENS", c.Engine.MaxNumBatchedTokens}, {"LLMLAB_MAX_MODEL_LEN", c.Engine.MaxModelLen}} {
		if k.v > 0 {
			env = append(env, fmt.Sprintf("%s=%d", k.name, k.v))
		}
	}
	return env
}

// writeEngineEnv writes the engine's runtime settings for the engine unit
// (EnvironmentFile=-/run/llmlab/engine.env) before each start: the GPU
// share, and LLMLAB_MAX_NEW_TOKENS (limits.max_tokens), which llmlab-engine
// passes to vLLM as its server-wide output cap. Nothing when path is "".
func writeEngineEnv(path string, env []string) error {
	if path == "" {
		return nil
	}
	content := "# Written by llmlabd before each engine start; read by llmlab-vllm.service.\n" + strings.Join(env, "\n") + "\n"
	tmp := path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("writing the engine's environment: %w", err)
	}
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing the engine's environment: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing the engine's environment: %w", err)
	}
	return nil
}

// gpuAdmission builds the engine-start admission over mon's readings.
func gpuAdmission(cfg *config.Config, mon *gpu.Monitor, reg prometheus.Registerer, log *slog.Logger) *gpu.Admission {
	a := &gpu.Admission{Monitor: mon, Device: cfg.GPU.Device, Budget: cfg.GPU.MemoryBudget, Fraction: cfg.GPU.MemoryFraction,
		ReleaseTimeout: cfg.GPU.ReleaseTimeout, Log: log}
	a.Instrument(reg)
	return a
}

// supervisorConfig extracts the supervisor's part of cfg; the readiness
// probe is GET engine.ready_path (vLLM's /health answers once it serves)
// answering 2xx with engine.ready_match in its body when that is set.
func supervisorConfig(cfg *config.Config) supervisor.Config {
	health := cfg.Engine.URL.JoinPath(cfg.Engine.ReadyPath).String()
	match := []byte(cfg.Engine.ReadyMatch)
	client := &http.Client{Timeout: time.Second}
	post := func(path, query string) func(ctx context.Context) error {
		pu := cfg.Engine.URL.JoinPath(path)
		pu.RawQuery = query
		u := pu.String()
		return func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
			if err != nil {
				return err
			}
			resp, err := (&http.Client{}).Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("POST %s: %s", u, resp.Status)
			}
			return nil
		}
	}
	return supervisor.Config{
		SleepAfter: cfg.Engine.SleepAfter,
		// Level 1 keeps the weights in host memory; mode=wait lets any
		// request still in the engine finish (vLLM's default, abort,
		// would abort it: vllm/entrypoints/serve/dev/sleep/api_router.py).
		Sleep:  post("/sleep", "level=1&mode=wait"),
		WakeUp: post("/wake_up", ""),
		Probe: func(ctx context.Context) bool {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, health, nil)
			if err != nil {
				return false
			}
			resp, err := client.Do(req)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				return false
			}
			if len(match) == 0 {
				return true
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			return bytes.Contains(body, match)
		},
		ProbeInterval: 50 * time.Millisecond,
		IdleTimeout:   cfg.Engine.IdleTimeout,
		StartTimeout:  cfg.Engine.StartTimeout,
		ExpectedStart: cfg.Engine.ExpectedStartTime,
	}
}

// holdWhileSaturated holds dispatching while the ready engine reports
// itself saturated (its KV cache full with requests waiting inside it, or
// its readings stale).
func holdWhileSaturated(ctx context.Context, gw *gateway.Gateway, every time.Duration, signals func() enginemetrics.Signals, ready func() bool) {
	t := time.NewTicker(every)
	defer t.Stop()
	held := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h := ready() && signals().Saturated()
			if h != held {
				gw.SetHold(h)
				held = h
			}
		}
	}
}

// idleLongEnough reports whether a socket-activated daemon may exit:
// nothing queued or in flight, the engine stopped (or not ours), and no
// work for the timeout.
func idleLongEnough(now, started time.Time, gw *gateway.Gateway, engine gateway.Engine, timeout time.Duration) bool {
	if timeout <= 0 || gw.Busy() > 0 {
		return false
	}
	if s := engine.State(); s != supervisor.Stopped && s != "external" {
		return false
	}
	last := gw.LastWork()
	if last.Before(started) {
		last = started
	}
	return now.Sub(last) >= timeout
}

// restoreLearned loads what an earlier run learned and applies it.
func restoreLearned(log *slog.Logger, dir string, gw *gateway.Gateway, sup *supervisor.Supervisor) statefile.State {
	if dir == "" {
		return statefile.State{}
	}
	s, err := statefile.Load(dir)
	if err != nil {
		log.Warn("ignoring learned state", "err", err)
		return statefile.State{}
	}
	gw.RestoreLevel(s.AdmissionLevel)
	if s.EngineModel != nil {
		if err := gw.Model().Restore(*s.EngineModel); err != nil {
			log.Warn("ignoring the learned engine model", "dir", dir, "err", err)
		}
	}
	if sup != nil {
		sup.SetLearnedStart(time.Duration(s.EngineStartSeconds * float64(time.Second)))
	}
	if s.EngineModel != nil || s.EngineStartSeconds > 0 {
		ms := gw.Model().Status()
		log.Info("restored learned state", "dir", dir, "engine_model_observed", ms.Observed, "engine_start_seconds", s.EngineStartSeconds)
	}
	now := currentLearned(gw, sup)
	now.Counters = s.Counters
	return now
}

func currentLearned(gw *gateway.Gateway, sup *supervisor.Supervisor) statefile.State {
	var s statefile.State
	if m := gw.Model().State(); m.Observed > 0 {
		s.EngineModel = &m
		s.AdmissionLevel = gw.Level()
	}
	if sup != nil {
		s.EngineStartSeconds = sup.LearnedStart().Seconds()
	}
	return s
}

// observedRequests is how many requests the learned engine model has seen.
func observedRequests(s statefile.State) int {
	if s.EngineModel == nil {
		return 0
	}
	return s.EngineModel.Observed
}

// externalEngine is an engine managed outside llmlab: always on.
type externalEngine struct{}

func (externalEngine) Wake()         {}
func (externalEngine) State() string { return "external" }

// Run serves until ctx is cancelled, then drains and returns nil. It
// returns an error when the daemon cannot start or a listener fails.
func Run(ctx context.Context, o Options) error {
	notify := &sd.Notifier{}
	cfg, keys, err := LoadConfig(o)
	if err != nil {
		notify.Notify("STATUS=" + firstLine(err.Error()))
		return err
	}
	log, err := logging.New(cfg.Log.Format, cfg.Log.Level, o.Stderr)
	if err != nil {
		return err
	}
	warnDeprecated(log, cfg)

	apiLns, activated, err := apiListeners(cfg)
	if err != nil {
		return err
	}
	for _, l := range apiLns {
		if !config.IsLoopback(l.Addr().String()) && !keys.Enabled() {
			if !cfg.Gateway.AllowPublicWithoutKeys {
				closeAll(apiLns)
				return fmt.Errorf("the API listens on %s, beyond loopback, without API keys: set auth.keys_file, or gateway.allow_public_without_keys = true to accept the risk", l.Addr())
			}
			log.Warn("api listens beyond loopback without api keys", "addr", l.Addr().String())
		}
	}
	var metricsLn net.Listener
	if cfg.Metrics.Listen != "" {
		metricsLn, err = net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			closeAll(apiLns)
			return fmt.Errorf("metrics listener: %w", err)
		}
	}

	var agentLn net.Listener
	if cfg.Balancer.AgentListen != "" {
		// Like /metrics, never socket-activated: a check must not start
		// llmlabd, and must fail while it has exited (HAProxy then keeps
		// the last answer).
		agentLn, err = net.Listen("tcp", cfg.Balancer.AgentListen)
		if err != nil {
			closeAll(apiLns)
			if metricsLn != nil {
				metricsLn.Close()
			}
			return fmt.Errorf("balancer agent listener: %w", err)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var (
		engine gateway.Engine = externalEngine{}
		warmup queue.Warmup
		sup    *supervisor.Supervisor
	)
	// NVML runs until the supervisor has stopped the engine (it waits for
	// the memory's release then).
	var (
		mon *gpu.Monitor
		adm *gpu.Admission
	)
	gpuCtx, stopGPU := context.WithCancel(context.Background())
	defer stopGPU()
	if cfg.GPU.Enabled {
		mon = gpu.New(nvml.New(), cfg.GPU.PollInterval, log.With("component", "gpu"))
		reg.MustRegister(mon)
		go mon.Run(gpuCtx)
	}
	if mon != nil {
		adm = gpuAdmission(cfg, mon, reg, log.With("component", "gpu"))
	}
	// st holds the running configuration (a reload swaps it); its gateway
	// and engine are set once they exist, before anything serves.
	st := &statusSource{gpu: mon, cfg: cfg, loadedAt: time.Now(), started: time.Now(), activated: activated}
	engineEnv := func() []string {
		c := st.cfgNow()
		var env []string
		if adm != nil {
			env = adm.Env()
		}
		if len(env) == 0 && c.GPU.MemoryBudget == 0 {
			// No GPU readings to turn a budget into a share: the
			// configured fraction, as the engine would be told with them.
			env = append(env, fmt.Sprintf("LLMLAB_GPU_MEMORY_UTILIZATION=%g", c.GPU.MemoryFraction))
		}
		return append(env, engineKnobs(c)...)
	}
	if backend := engineBackend(cfg, log, o.Stderr, engineEnv); backend != nil {
		sc := supervisorConfig(cfg)
		envFile := runtimeEnv(cfg)
		sc.BeforeStart = func(ctx context.Context) error {
			if adm != nil {
				if err := adm.BeforeStart(ctx); err != nil {
					return err
				}
			}
			return writeEngineEnv(envFile, engineEnv())
		}
		if adm != nil {
			sc.OnReady, sc.AfterStop = adm.NoteRunning, adm.AfterStop
		}
		supLog := log.With("component", "supervisor")
		if cfg.Engine.Unit != "" {
			supLog = supLog.With("engine_unit", cfg.Engine.Unit) // ENGINE_UNIT in the journal
		}
		sup = supervisor.New(sc, backend, nil, reg, supLog)
		engine, warmup = sup, sup
	}
	gw := gateway.New(gatewayConfig(cfg), keys, engine, warmup, reg, log)
	st.gw, st.engine, st.sup = gw, engine, sup
	supDone := make(chan struct{})
	supCtx, stopSup := context.WithCancel(context.Background())
	defer stopSup()
	if sup != nil {
		gw.SetEngineReady(false)
		sup.Attach(gw)
		go func() {
			sup.Run(supCtx)
			close(supDone)
		}()
	} else {
		close(supDone)
	}
	// The engine's own metrics and the saturation hold.
	bgCtx, stopBg := context.WithCancel(context.Background())
	defer stopBg()
	engineReady := func() bool { s := engine.State(); return s == supervisor.Ready || s == "external" }
	if cfg.Engine.MetricsInterval > 0 {
		scraper := enginemetrics.NewScraper(cfg.Engine.URL.JoinPath("/metrics").String(), cfg.Engine.MetricsInterval, log.With("component", "enginemetrics"))
		reg.MustRegister(scraper)
		go scraper.Run(bgCtx, engineReady)
		signals := func() enginemetrics.Signals {
			r := scraper.Latest()
			switch {
			case r.At.IsZero():
				return enginemetrics.Signals{} // no readings: an engine without metrics
			case !engineReady():
				return enginemetrics.Signals{Known: true, Waiting: r.Waiting, KVUsage: r.KVUsage}
			}
			switch scraper.Freshness(r, time.Now()) {
			case enginemetrics.Stale:
				return enginemetrics.Signals{Known: true, Stale: true}
			case enginemetrics.Expired:
				// Readings stopped long ago: hold no longer (the
				// scraper logs it once).
				return enginemetrics.Signals{}
			}
			return enginemetrics.Signals{Known: true, Waiting: r.Waiting, KVUsage: r.KVUsage}
		}
		go holdWhileSaturated(bgCtx, gw, cfg.Engine.MetricsInterval, signals, engineReady)
	}

	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_engine_max_model_len",
		Help: "The engine's context length in tokens, from its /v1/models while it is ready (0: not known)."},
		func() float64 { return float64(gw.MaxModelLen()) }))
	go learnMaxModelLen(bgCtx, log.With("component", "engine"), cfg.Engine.URL.JoinPath("/v1/models").String(), 250*time.Millisecond,
		engineReady, gw, func() int { return st.cfgNow().Limits.MaxTokens })
	stateDir := cfg.Gateway.StateDir
	if stateDir == "" {
		stateDir = os.Getenv("STATE_DIRECTORY")
	}
	learned := restoreLearned(log, stateDir, gw, sup)
	if cfg.Queue.FromModel() {
		go limitFromModel(bgCtx, log.With("component", "limit"), gw, st.cfgNow, 250*time.Millisecond)
	}
	if agentLn != nil {
		ag := agent.New(func() agent.State {
			c, qs := st.cfgNow(), gw.QueueStats()
			return agent.Capacity(agent.Inputs{Engine: engine.State(), Limit: qs.Limit, Rate: qs.RateRPS,
				Tail: time.Duration(qs.AdmissionTailSeconds * float64(time.Second)), SLO: c.SLO.Latency,
				MaxWait: c.Queue.MaxWait, Balancers: c.Balancer.Balancers})
		}, reg, log.With("component", "agent"))
		// Answered until llmlabd returns: through a drain too.
		go func() {
			if err := ag.Serve(bgCtx, agentLn); err != nil {
				log.Error("balancer agent stopped", "err", err)
			}
		}()
	}
	var tf *textfile.Writer
	if cfg.Metrics.Textfile != "" {
		tf = textfile.New(cfg.Metrics.Textfile, reg, learned.Counters)
	}
	// A file that cannot be written (a full or read-only disk) is logged
	// once, and again once it can be written: not at every attempt.
	failing := map[string]bool{}
	noteWrite := func(what string, err error, attrs ...any) {
		switch {
		case err != nil && !failing[what]:
			failing[what] = true
			log.Warn("cannot write the "+what+"; llmlabd keeps serving and retries", append(attrs, "err", err)...)
		case err == nil && failing[what]:
			failing[what] = false
			log.Info("the "+what+" is written again", attrs...)
		}
	}
	saveLearned := func() {
		if stateDir == "" {
			return
		}
		now := currentLearned(gw, sup)
		if observedRequests(now) == observedRequests(learned) && now.EngineStartSeconds == learned.EngineStartSeconds {
			return
		}
		now.Counters = learned.Counters
		err := statefile.Save(stateDir, now)
		noteWrite("state file", err, "state_dir", stateDir)
		if err != nil {
			return
		}
		learned = now
	}
	// writeTextfile writes node_exporter's file; at exit (up false) it also
	// keeps the counters' totals for the next run.
	writeTextfile := func(up bool) {
		if tf == nil {
			return
		}
		noteWrite("textfile", tf.Write(up), "path", cfg.Metrics.Textfile)
		if !up && stateDir != "" {
			totals, err := tf.Totals()
			if err == nil {
				learned.Counters = totals
				now := currentLearned(gw, sup)
				now.Counters = totals
				noteWrite("state file", statefile.Save(stateDir, now), "state_dir", stateDir)
			}
		}
	}
	writeTextfile(true)
	defer writeTextfile(false)
	defer saveLearned()

	api := gw.Handler()
	apiMux := http.NewServeMux()
	apiMux.Handle("/", api)
	apiMux.HandleFunc("GET /healthz", serveHealthz)
	apiMux.HandleFunc("GET /status", st.serve)
	conns := newConnTracker()
	// gateway.client_timeout bounds the headers too (at start; the body's
	// bound follows reloads).
	apiSrv := &http.Server{Handler: apiMux, ReadHeaderTimeout: cfg.Gateway.ClientTimeout, IdleTimeout: 120 * time.Second,
		ConnState: conns.track, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}

	metricsMux := http.NewServeMux()
	metricsMux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	metricsMux.HandleFunc("GET /healthz", serveHealthz)
	metricsMux.HandleFunc("GET /status", st.serve)
	if cfg.Metrics.Pprof {
		metricsMux.HandleFunc("/debug/pprof/", pprof.Index)
		metricsMux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		metricsMux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		metricsMux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	metricsSrv := &http.Server{Handler: metricsMux, ReadHeaderTimeout: 10 * time.Second}

	// gateway.max_connections, read at every accept (a reload changes it).
	connMetrics := connlimit.NewMetrics(reg)
	for i, l := range apiLns {
		apiLns[i] = connlimit.New(l, func() int64 { return int64(st.cfgNow().Gateway.MaxConnections) }, connMetrics)
	}
	errc := make(chan error, len(apiLns)+1)
	// accepting is done when every API listener's Serve has returned: no
	// connection is then between its accept and its first ConnState.
	var serving sync.WaitGroup
	accepting := make(chan struct{})
	for _, l := range apiLns {
		serving.Go(func() { errc <- serve(apiSrv, l) })
	}
	go func() { serving.Wait(); close(accepting) }()
	if metricsLn != nil {
		go func() { errc <- serve(metricsSrv, metricsLn) }()
	}
	addrs := make([]string, len(apiLns))
	for i, l := range apiLns {
		addrs[i] = l.Addr().String()
	}
	metricsAddr := ""
	if metricsLn != nil {
		metricsAddr = metricsLn.Addr().String()
	}
	agentAddr := ""
	if agentLn != nil {
		agentAddr = agentLn.Addr().String()
	}
	log.Info("serving", "api", strings.Join(addrs, ","), "socket_activated", activated, "metrics", metricsAddr, "agent", agentAddr,
		"engine", cfg.Engine.URL.String(), "config", cfg.Path, "api_keys", keys.Len())
	notify.Ready(st.line())
	started := time.Now()

	var watchdog <-chan time.Time
	if d := sd.WatchdogInterval(); d > 0 {
		t := time.NewTicker(d)
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
			notify.Stopping("draining")
			err := drain(log, gw, apiSrv, metricsSrv, apiLns, accepting, conns, st.cfgNow().Gateway.ShutdownGrace)
			stopSup() // stop the engine once nothing uses it
			<-supDone
			saveLearned()
			return err
		case err := <-errc:
			notify.Stopping("listener failed")
			_ = apiSrv.Close()
			_ = metricsSrv.Close()
			return err
		case <-o.Reload:
			notify.Reloading()
			reload(log, o, st, gw, sup, adm, engineEnv)
			notify.Ready(st.line())
		case <-watchdog:
			notify.Watchdog()
		case now := <-statusTick.C:
			notify.Status(st.line())
			writeTextfile(true)
			if activated && idleLongEnough(now, started, gw, engine, st.cfgNow().Gateway.ExitIdleTimeout) {
				log.Info("exiting on idle; the socket stays with systemd", "exit_idle_timeout", st.cfgNow().Gateway.ExitIdleTimeout)
				notify.Stopping("exiting on idle")
				err := drain(log, gw, apiSrv, metricsSrv, apiLns, accepting, conns, st.cfgNow().Gateway.ShutdownGrace)
				stopSup()
				<-supDone
				saveLearned()
				return err
			}
		case <-saveTick.C:
			saveLearned()
		}
	}
}

// apiListeners returns the socket-activated "http" listeners, or one of
// the daemon's own on gateway.listen.
func apiListeners(cfg *config.Config) ([]net.Listener, bool, error) {
	lns, err := sd.Listeners("http")
	if err != nil {
		return nil, false, err
	}
	if len(lns) > 0 {
		return lns, true, nil
	}
	l, err := net.Listen("tcp", cfg.Gateway.Listen)
	if err != nil {
		return nil, false, fmt.Errorf("api listener: %w", err)
	}
	return []net.Listener{l}, false, nil
}

func serve(srv *http.Server, l net.Listener) error {
	err := srv.Serve(l)
	// drain closes the listeners itself (net.ErrClosed) before it shuts
	// the server down (http.ErrServerClosed).
	if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serving on %s: %w", l.Addr(), err)
	}
	return nil
}

// drainer is the gateway as a drain sees it.
type drainer interface {
	QueueStats() queue.Stats
	// Drain answers the queued requests 503 and refuses new ones.
	Drain()
	// CloseIdle closes the idle connections to the engine.
	CloseIdle()
}

// drain implements the shutdown sequence of the package doc.
//
// It does not start with http.Server.Shutdown: a server shutting down
// closes, unanswered, a connection whose request it reads after Shutdown
// began, and a client that connected a moment before (to llmlabd, or to
// systemd's socket while llmlabd held it) would get nothing back. So the
// listeners close first, keep-alive ends, and the requests on connections
// already accepted are served (or refused with 503 if they would queue)
// before Shutdown closes what is left idle. A connection accepted just
// before the listeners closed is tracked only once its Serve loop has
// called the ConnState hook, so the wait for busy connections begins when
// every Serve has returned (accepting closed): otherwise Shutdown could
// begin before that connection is seen, and close it unanswered.
func drain(log *slog.Logger, gw drainer, apiSrv, metricsSrv *http.Server, apiLns []net.Listener, accepting <-chan struct{}, conns *connTracker, grace time.Duration) error {
	s := gw.QueueStats()
	log.Info("draining", "queued", s.Queued, "inflight_sequences", s.Inflight, "grace", grace)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	apiSrv.SetKeepAlivesEnabled(false)
	for _, l := range apiLns {
		_ = l.Close()
	}
	gw.Drain()
	select {
	case <-accepting:
	case <-ctx.Done():
	}
	for conns.busy(time.Now()) > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := apiSrv.Shutdown(ctx); err != nil {
		log.Warn("grace period over; closing remaining connections", "grace", grace)
		_ = apiSrv.Close()
	}
	_ = metricsSrv.Close()
	gw.CloseIdle()
	log.Info("stopped")
	return nil
}

// connTracker follows the API's connections, so that a drain can wait
// for the requests on those already accepted.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]connState
}

type connState struct {
	state http.ConnState
	since time.Time
}

func newConnTracker() *connTracker { return &connTracker{conns: map[net.Conn]connState{}} }

// track is the server's ConnState hook.
func (t *connTracker) track(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s {
	case http.StateClosed, http.StateHijacked:
		delete(t.conns, c)
	default:
		t.conns[c] = connState{state: s, since: time.Now()}
	}
}

// newConnPatience is how long a drain waits for a new connection's first
// request, as net/http's Shutdown does.
const newConnPatience = 5 * time.Second

// busy counts the connections with a request in progress, or new ones
// whose first request may still come.
func (t *connTracker) busy(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.conns {
		if c.state == http.StateActive || c.state == http.StateNew && now.Sub(c.since) < newConnPatience {
			n++
		}
	}
	return n
}

// reload re-reads the configuration; a bad one is refused and the running
// one kept.
func reload(log *slog.Logger, o Options, st *statusSource, gw *gateway.Gateway, sup *supervisor.Supervisor, adm *gpu.Admission, engineEnv func() []string) {
	o.Explicit = true
	cfg, keys, err := LoadConfig(o)
	if err != nil {
		log.Error("reload refused; keeping the running configuration", "err", err)
		return
	}
	warnDeprecated(log, cfg)
	old := st.cfgNow()
	changes := config.Diff(old, cfg)
	// What each change needs is declared with its key (config.Need).
	engineChanged := false
	texts := make([]string, len(changes))
	for i, c := range changes {
		texts[i] = c.String()
		switch c.Needs {
		case config.NeedDaemonRestart:
			log.Warn("setting needs a restart to take effect", "change", texts[i])
		case config.NeedEngineRestart:
			engineChanged = true
		}
	}
	// The engine's environment is read from the running configuration at
	// its next start: swap it in before that start is asked for.
	st.setCfg(cfg)
	if adm != nil {
		adm.SetShare(cfg.GPU.MemoryBudget, cfg.GPU.MemoryFraction)
	}
	gw.Reload(gatewayConfig(cfg), keys)
	if engineChanged {
		switch b := engineBackend(cfg, log, o.Stderr, engineEnv); {
		case sup != nil && b != nil:
			sup.Restart(b) // drained, then restarted once; arrivals wait as in a cold start
		default:
			log.Warn("switching between a managed and an external engine needs a restart")
		}
	}
	log.Info("reloaded", "changes", strings.Join(texts, "; "), "api_keys", keys.Len())
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		_ = l.Close()
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func serveHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, "{\"status\":\"ok\"}\n")
}
