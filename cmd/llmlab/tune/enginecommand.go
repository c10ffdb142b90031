package tune

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/gpu"
)

// EngineCommand is llmlab tune-engine: vLLM's knobs with llmlab's, each
// point through an llmlabd reload (RunEngine).
func EngineCommand() command.Command {
	return command.Command{Name: "tune-engine", Summary: "sweep vLLM's knobs (max_num_seqs, max_num_batched_tokens, max_model_len, gpu_memory_utilization) with llmlab's through llmlabd: find-max per point, the best, the frontier, --apply",
		Flags: tuneEngineFlags}
}

func tuneEngineFlags(fs *flag.FlagSet) command.Run {
	o := EngineOptions{Out: os.Stdout, Progress: os.Stderr, SLO: bench.SLO{MaxErrorRate: 0.001}}
	fs.StringVar(&o.Llmlabd, "llmlabd", "", "llmlabd binary (default: the one next to llmlab)")
	fs.StringVar(&o.Profile, "profile", "gtx1650", "the card's memory model for the KV-cache arithmetic, and, without --config, the simulated engine: "+sim.ProfileNames())
	fs.Float64Var(&o.GPUMemoryGiB, "gpu-memory-gib", 0, "the card's memory in GiB (0: the profile's)")
	simArgs := fs.String("sim-args", "", "more flags for the simulator, space-separated")
	fs.DurationVar(&o.StartupDelay, "startup-delay", 3*time.Second, "the simulator's start time")
	fs.StringVar(&o.Config, "config", "", "tune the engine that this llmlabd configuration manages (engine.command or engine.unit) instead of the simulator; llmlab.socket, llmlab.service and the engine must be stopped first (systemctl stop llmlab.socket llmlab.service llmlab-vllm.service), and the command refuses to start while systemd says one is active or the engine's or the API's address is in use")
	seqs := fs.String("max-num-seqs", "16,32,64,128,256", "vLLM's --max-num-seqs values")
	batched := fs.String("max-num-batched-tokens", "2048", "vLLM's --max-num-batched-tokens values")
	mlen := fs.String("max-model-len", "2048", "vLLM's --max-model-len values")
	util := fs.String("gpu-memory-utilization", "0.9", "vLLM's --gpu-memory-utilization values (llmlabd's gpu.memory_fraction)")
	inflight := fs.String("inflight", "seqs", `llmlabd's in-flight limit: "seqs" (= max_num_seqs), "model" (chosen from the engine model, up to max_num_seqs), or numbers`)
	windows := fs.String("batch-window", "0s", "llmlabd's queue.batch_window values")
	fs.DurationVar(&o.Warmup, "warmup", 10*time.Second, "warm-up of each find-max probe, excluded")
	fs.DurationVar(&o.Duration, "duration", 20*time.Second, "measurement of each find-max probe")
	fs.IntVar(&o.MinRequests, "min-requests", 0, "lengthen a probe at a low rate until it holds this many requests (0: --duration only)")
	fs.Float64Var(&o.StartRate, "start-rate", 1, "the first point's first probe rate (later points start near the previous point's result)")
	fs.Float64Var(&o.MaxRate, "max-rate", 2000, "never offer more than this")
	fs.Float64Var(&o.Precision, "precision", 0.1, "find-max stops when its bracket is this narrow (relative)")
	fs.DurationVar(&o.SLO.Latency, "slo-p95", 5*time.Second, "SLO latency (llmlabd's slo.latency, and the bound on p95)")
	fs.Float64Var(&o.SLO.MaxErrorRate, "max-error-rate", 0.001, "SLO error rate")
	fs.DurationVar(&o.MaxTime, "max-time", 2*time.Hour, "refuse a sweep estimated longer than this, and stop one that runs longer (resumable); 0: no bound")
	fs.StringVar(&o.Results, "results", "", "results folder; a sweep run again on it skips the points already measured (default: results/tune-engine-<profile or config name>)")
	fs.BoolVar(&o.Apply, "apply", false, "write the best point into llmlab.toml (--apply-config) and take the tuned flags out of --engine-env's LLMLAB_VLLM_ARGS, keeping backups")
	fs.StringVar(&o.ApplyConfig, "apply-config", "", "the llmlab.toml --apply writes (default: --config)")
	fs.StringVar(&o.EngineEnv, "engine-env", "/etc/llmlab/engine.env", "the engine's environment file --apply cleans (\"\": none)")
	fs.BoolVar(&o.Report, "report", false, "print the table, best point and frontier of every point in --results measured on this engine (several sweeps' grids together), and measure nothing")
	quiet := fs.Bool("quiet", false, "no progress bar")
	return func(ctx context.Context, _ []string) int {
		if o.Llmlabd == "" {
			o.Llmlabd = command.Sibling("llmlabd")
		}
		o.Tool, _ = os.Executable()
		if *quiet {
			o.Progress = nil
		}
		if o.ApplyConfig == "" {
			o.ApplyConfig = o.Config
		}
		if o.Results == "" {
			name := o.Profile
			if o.Config != "" {
				name = strings.TrimSuffix(filepath.Base(o.Config), ".toml")
			}
			o.Results = filepath.Join("results", "tune-engine-"+name)
		}
		o.SimArgs = strings.Fields(*simArgs)
		if o.Config != "" && o.GPUMemoryGiB == 0 {
			// The memory plan's card: this box's, as NVML reads it.
			if gib, err := cardMemoryGiB(ctx, o.Config); err != nil {
				fmt.Fprintf(os.Stderr, "llmlab tune-engine: cannot read the card's memory (%v); the memory plan assumes the %s profile's card (set --gpu-memory-gib)\n", err, o.Profile)
			} else {
				o.GPUMemoryGiB = gib
			}
		}
		g := &o.Grid
		var errs [5]error
		g.MaxNumSeqs, errs[0] = list("max-num-seqs", *seqs, "positive integers", positiveInt)
		g.MaxNumBatchedTokens, errs[1] = list("max-num-batched-tokens", *batched, "positive integers", positiveInt)
		g.MaxModelLen, errs[2] = list("max-model-len", *mlen, "positive integers", positiveInt)
		g.GPUMemoryUtilization, errs[3] = list("gpu-memory-utilization", *util, "fractions in (0, 1]", fraction)
		g.BatchWindow, errs[4] = list("batch-window", *windows, "durations such as 0s,10ms", duration)
		if err := errors.Join(errs[:]...); err != nil {
			fmt.Fprintln(os.Stderr, "llmlab tune-engine:", err)
			return 2
		}
		g.Inflight = strings.Split(strings.ReplaceAll(*inflight, " ", ""), ",")
		if o.Config != "" && !o.Report {
			// The sweep's llmlabd starts the operator's engine: nothing
			// else may run it meanwhile.
			if err := engineStopped(ctx, o.Config); err != nil {
				fmt.Fprintln(os.Stderr, "llmlab tune-engine:", err)
				return 1
			}
		}
		if _, err := RunEngine(ctx, o); err != nil {
			fmt.Fprintln(os.Stderr, "\nllmlab tune-engine:", err)
			return 1
		}
		return 0
	}
}

// cardMemoryGiB reads, through NVML, the memory of the GPU that the
// configuration's engine runs on (gpu.device).
func cardMemoryGiB(ctx context.Context, path string) (float64, error) {
	cfg, err := config.Load(path, true)
	if err != nil {
		return 0, err
	}
	mon := gpu.New(nvml.New(), time.Second, slog.New(slog.DiscardHandler))
	mctx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	done := make(chan struct{})
	go func() { mon.Run(mctx); close(done) }()
	defer func() { stop(); <-done }()
	s := mon.Fresh(mctx)
	d, ok := s.Device(cfg.GPU.Device)
	if !s.Available || !ok || d.MemoryTotal == 0 {
		return 0, fmt.Errorf("no GPU %d: %s", cfg.GPU.Device, s.Reason)
	}
	return float64(d.MemoryTotal) / (1 << 30), nil
}
