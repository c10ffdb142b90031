package server

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llmlab/llmlab/daemon/agent"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/enginemetrics"
	"github.com/llmlab/llmlab/daemon/gateway"
	"github.com/llmlab/llmlab/daemon/gpu"
	"github.com/llmlab/llmlab/daemon/logging"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/daemon/ratelimit"
	"github.com/llmlab/llmlab/daemon/sd"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

// newDaemon builds the daemon o describes: the configuration, the logger,
// the listeners (opened, so that an address in use fails the start), the
// registry and every part, wired together. Nothing runs until serve. A
// configuration that does not load is put in STATUS=.
func newDaemon(o Options) (*daemon, error) {
	d := &daemon{o: o, notify: &sd.Notifier{}}
	cfg, keys, err := LoadConfig(o)
	if err != nil {
		d.notify.Notify("STATUS=" + firstLine(err.Error()))
		return nil, err
	}
	d.keys = keys
	if d.log, err = logging.New(cfg.Log.Format, cfg.Log.Level, o.Stderr); err != nil {
		return nil, err
	}
	warnDeprecated(d.log, cfg)
	if d.lns, err = openListeners(cfg, keys, d.log); err != nil {
		return nil, err
	}
	d.wire(cfg)
	return d, nil
}

// wire builds the daemon's parts from cfg, on one registry.
func (d *daemon) wire(cfg *config.Config) {
	log := d.log
	d.reg = prometheus.NewRegistry()
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.GPU.Enabled {
		d.mon = gpu.New(nvml.New(), cfg.GPU.PollInterval, log.With("component", "gpu"))
		d.reg.MustRegister(d.mon)
		d.adm = gpuAdmission(cfg, d.mon, d.reg, log.With("component", "gpu"))
	}
	d.host = hostMemory{meminfo: "/proc/meminfo"}
	if d.adm != nil {
		d.host.engineGPU = d.adm.EngineMemory
	}
	// st holds the running configuration (a reload swaps it); its gateway
	// and engine are set once they exist, before anything serves.
	d.st = &statusSource{gpu: d.mon, cfg: cfg, loadedAt: time.Now(), started: time.Now(), activated: d.lns.activated}

	d.engine = externalEngine{}
	var warmup queue.Warmup
	if backend := d.engineBackend(cfg); backend != nil {
		sc := d.supervisorConfig(cfg)
		supLog := log.With("component", "supervisor")
		if cfg.Engine.Unit != "" {
			supLog = supLog.With("engine_unit", cfg.Engine.Unit) // ENGINE_UNIT in the journal
		}
		d.sup = supervisor.New(sc, backend, nil, d.reg, supLog)
		d.engine, warmup = d.sup, d.sup
	}
	d.gw = gateway.New(gatewayConfig(cfg), d.keys, d.engine, warmup, d.reg, log)
	d.st.gw, d.st.engine, d.st.sup = d.gw, d.engine, d.sup
	if d.sup != nil {
		d.gw.SetEngineReady(false)
		d.sup.Attach(d.gw)
	}

	// The engine's own metrics (for the saturation hold) and context length.
	if cfg.Engine.MetricsInterval > 0 {
		d.scraper = enginemetrics.NewScraper(cfg.Engine.URL.JoinPath("/metrics").String(), cfg.Engine.MetricsInterval, log.With("component", "enginemetrics"))
		d.reg.MustRegister(d.scraper)
	}
	d.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_engine_max_model_len",
		Help: "The engine's context length in tokens, from its /v1/models while it is ready (0: not known)."},
		func() float64 { return float64(d.gw.MaxModelLen()) }))

	stateDir := cfg.Gateway.StateDir
	if stateDir == "" {
		stateDir = os.Getenv("STATE_DIRECTORY")
	}
	d.learned = restoreLearned(log, stateDir, d.gw, d.sup)
	if d.lns.agent != nil {
		d.agent = agent.New(d.agentState, d.reg, log.With("component", "agent"))
	}
	d.learned.setTextfile(cfg.Metrics.Textfile, d.reg)
	d.buildServers(cfg.Gateway.ClientTimeout)
}

// start runs the parts newDaemon built and serves: NVML, the supervisor,
// the engine's metrics and the saturation hold, the engine's context
// length, the model's limit, the agent, the textfile, the listeners.
// Background work runs on contexts of its own, not serve's: it goes on
// through a drain, and stop ends it.
func (d *daemon) start() {
	cfg := d.st.cfgNow() // no reload has happened yet: newDaemon's
	var gpuCtx, supCtx, bgCtx context.Context
	// NVML runs until the supervisor has stopped the engine (it waits for
	// the memory's release then).
	gpuCtx, d.stopGPU = context.WithCancel(context.Background())
	supCtx, d.stopSup = context.WithCancel(context.Background())
	bgCtx, d.stopBg = context.WithCancel(context.Background())
	if d.mon != nil {
		go d.mon.Run(gpuCtx)
	}
	if d.adm != nil {
		go contentionFromGPU(bgCtx, d.log.With("component", "gpu"), d.adm, d.gw.Model(), func() bool { return d.st.cfgNow().GPU.Contention }, cfg.GPU.PollInterval)
	}
	d.supDone = make(chan struct{})
	if d.sup != nil {
		go func() {
			d.sup.Run(supCtx)
			close(d.supDone)
		}()
	} else {
		close(d.supDone)
	}
	if d.scraper != nil {
		go d.scraper.Run(bgCtx, d.engineReady)
		go holdWhileSaturated(bgCtx, d.gw, cfg.Engine.MetricsInterval, d.engineSignals, d.engineReady)
	}
	go learnMaxModelLen(bgCtx, d.log.With("component", "engine"), cfg.Engine.URL.JoinPath("/v1/models").String(), 250*time.Millisecond,
		d.engineReady, d.gw, func() int { return d.st.cfgNow().Limits.MaxTokens })
	if cfg.Queue.FromModel() {
		go limitFromModel(bgCtx, d.log.With("component", "limit"), d.gw, d.st.cfgNow, 250*time.Millisecond)
	}
	if d.agent != nil {
		// Answered until llmlabd returns: through a drain too.
		go func() {
			if err := d.agent.Serve(bgCtx, d.lns.agent); err != nil {
				d.log.Error("balancer agent stopped", "err", err)
			}
		}()
	}
	d.learned.writeTextfile(true)
	d.listen()
}

// stop ends what start began, once serving has ended: what was learned is
// saved, the textfile says llmlabd is down (and its counters' totals are
// kept), and the background work, the supervisor (which stops the engine)
// and NVML end.
func (d *daemon) stop() {
	d.learned.save()
	d.learned.writeTextfile(false)
	d.stopBg()
	d.stopSup()
	d.stopGPU()
}

// agentState is what the balancer agent advertises now.
func (d *daemon) agentState() agent.State {
	c, qs := d.st.cfgNow(), d.gw.QueueStats()
	return agent.Capacity(agent.Inputs{Engine: d.engine.State(), Limit: qs.Limit, Rate: qs.RateRPS,
		Tail: time.Duration(qs.AdmissionTailSeconds * float64(time.Second)), SLO: c.SLO.Latency,
		MaxWait: c.Queue.MaxWait, Balancers: c.Balancer.Balancers})
}

// gatewayConfig extracts the gateway's part of cfg.
func gatewayConfig(cfg *config.Config) gateway.Config {
	return gateway.Config{
		EngineURL:       cfg.Engine.URL,
		ClientTimeout:   cfg.Gateway.ClientTimeout,
		TrustedProxies:  cfg.Gateway.TrustedProxies,
		ResponseTimeout: cfg.Engine.ResponseTimeout,
		WaitUpdates:     cfg.Queue.WaitUpdates,
		EnginePriority:  cfg.Engine.EnginePriority(),
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

			DeadlineBeyondSLO: cfg.SLO.AllowLongerDeadlines,
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

// gpuAdmission builds the engine-start admission over mon's readings.
func gpuAdmission(cfg *config.Config, mon *gpu.Monitor, reg prometheus.Registerer, log *slog.Logger) *gpu.Admission {
	a := &gpu.Admission{Monitor: mon, Device: cfg.GPU.Device, Budget: cfg.GPU.MemoryBudget, Fraction: cfg.GPU.MemoryFraction,
		ReleaseTimeout: cfg.GPU.ReleaseTimeout, Log: log}
	a.Instrument(reg)
	return a
}
