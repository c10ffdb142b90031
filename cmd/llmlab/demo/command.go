package demo

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
)

// Command is llmlab demo, what make demo runs (Run).
func Command() command.Command {
	return command.Command{Name: "demo", Summary: "the simulator, llmlabd in front of it, rising load, a results table", Flags: demoFlags}
}

func demoFlags(fs *flag.FlagSet) command.Run {
	o := Options{Out: os.Stdout, SLO: bench.SLO{MaxErrorRate: 0.001}}
	fs.StringVar(&o.Llmlabd, "llmlabd", "", "llmlabd binary (default: the one next to llmlab)")
	fs.StringVar(&o.Profile, "profile", "gtx1650", "simulator profile (the target card; its --capacity below)")
	fs.Float64Var(&o.Capacity, "capacity", 5.25, "the engine's sustainable rate in req/s (the unit of load; gtx1650 at vLLM's default knobs: docs/benchmarks.md)")
	loads := fs.String("loads", "0.5,1.5,3", "offered loads, as multiples of --capacity")
	fs.DurationVar(&o.Warmup, "warmup", 3*time.Second, "warm-up per load, excluded")
	fs.DurationVar(&o.Duration, "duration", 6*time.Second, "measurement per load")
	fs.DurationVar(&o.Timeout, "timeout", 10*time.Second, "per-request timeout (counted as a failure)")
	fs.DurationVar(&o.SLO.Latency, "slo-p95", 5*time.Second, "SLO latency")
	fs.IntVar(&o.MaxInflight, "max-inflight", 96, "llmlabd's queue.max_inflight")
	fs.DurationVar(&o.MaxWait, "max-wait", time.Second, "llmlabd's queue.max_wait")
	fs.DurationVar(&o.BatchWindow, "batch-window", 0, "llmlabd's queue.batch_window")
	fs.BoolVar(&o.Coalesce, "coalesce", false, "llmlabd's queue.coalesce (with --stream=false)")
	stream := fs.Bool("stream", true, "stream the answers")
	fs.StringVar(&o.Results, "results", "auto", "results folder (auto: results/demo-<UTC time>; \"\" writes none)")
	return func(ctx context.Context, _ []string) int { return demoCmd(ctx, o, *loads, *stream) }
}

func demoCmd(ctx context.Context, o Options, loads string, stream bool) int {
	if o.Llmlabd == "" {
		o.Llmlabd = command.Sibling("llmlabd")
	}
	if o.Results == "auto" {
		o.Results = command.ResultsDir("demo")
	}
	o.NoStream = !stream
	for _, f := range strings.Split(loads, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 {
			fmt.Fprintf(os.Stderr, "llmlab demo: --loads %q: want positive numbers separated by commas\n", loads)
			return 2
		}
		o.Loads = append(o.Loads, v)
	}
	if _, err := Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "llmlab demo:", err)
		return 1
	}
	return 0
}
