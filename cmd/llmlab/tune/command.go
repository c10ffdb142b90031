package tune

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
)

// Command is llmlab tune: fixed in-flight limits against the model's, the
// priority classes compared, or API keys' fair shares, on the simulator
// (Run).
func Command() command.Command {
	return command.Command{Name: "tune", Summary: "sweep fixed in-flight limits against the model's (or compare priority classes, or API keys' fair shares) on the simulator",
		Flags: tuneFlags}
}

func tuneFlags(fs *flag.FlagSet) command.Run {
	o := Options{Out: os.Stdout, SLO: bench.SLO{MaxErrorRate: 0.001}}
	fs.StringVar(&o.Llmlabd, "llmlabd", "", "llmlabd binary (default: the one next to llmlab)")
	profiles := fs.String("profiles", "gtx1650,t4", "simulator profiles, comma-separated")
	fixed := fs.String("fixed", "8,12,16,20,24,32,64,128,256", "the sweep's queue.max_inflight values")
	fs.IntVar(&o.MinInflight, "min-inflight", 4, "the model mode's queue.min_inflight")
	fs.IntVar(&o.MaxNumSeqs, "max-num-seqs", 256, "the simulated engine's --max-num-seqs (and the model mode's queue.max_inflight)")
	fs.Float64Var(&o.Load, "load", 1.5, "offered load, as a multiple of the engine's measured capacity")
	fs.DurationVar(&o.Warmup, "warmup", 20*time.Second, "warm-up per setting, excluded")
	fs.DurationVar(&o.Duration, "duration", 30*time.Second, "measurement per setting")
	fs.DurationVar(&o.SLO.Latency, "slo-p95", 5*time.Second, "SLO latency (llmlabd's slo.latency and the goodput bound)")
	fs.BoolVar(&o.Stream, "stream", false, "stream the answers")
	fs.DurationVar(&o.TargetLatency, "target-latency", 0, "the model mode's queue.target_latency (0: llmlabd's default, the SLO)")
	fs.BoolVar(&o.Priority, "priority", false, "compare priority classes on a half-batch load instead of sweeping")
	fs.Float64Var(&o.BatchShare, "batch-share", 0, "with --priority: llmlabd's queue.batch_share (0: its default)")
	fs.BoolVar(&o.EnginePriority, "engine-priority", false, "with --priority: compare the classes passed into an engine that schedules by priority (engine.scheduling_policy = \"priority\") with a first-come-first-served engine, instead of one class")
	fs.BoolVar(&o.NoSLOAdmission, "no-slo-admission", false, "run llmlabd with slo.latency = 0s: nothing judged against the SLO at admission (goodput still counts it)")
	fs.IntVar(&o.Inflight, "inflight", 0, "with --priority: fix queue.max_inflight at this (concurrency = \"fixed\"; 0: the model's limit)")
	fs.BoolVar(&o.Fair, "fair", false, "compare API keys' fair shares instead of sweeping: a key flooding beside a light one (and alone, and without keys), then two flooding keys of weights 1 and 3")
	fs.Float64Var(&o.Flood, "flood", 5, "with --fair: the flooding key's load, as a multiple of the capacity (the two weighted keys offer half of it each)")
	fs.Float64Var(&o.Light, "light", 0.2, "with --fair: the light key's load, as a multiple of the capacity")
	phases := fs.String("phases", strings.Join(FairPhaseNames, ","), "with --fair: the phases to run, of "+strings.Join(FairPhaseNames, ","))
	fs.IntVar(&o.Repeat, "repeat", 1, "with --fair: run each phase this many times, with new arrivals, and pool them")
	fs.Float64Var(&o.Capacity, "capacity", 0, "the engine's capacity in requests per second (0: measured, closed loop at --max-num-seqs)")
	fs.StringVar(&o.Results, "results", "auto", "results folder (auto: results/tune-<UTC time>; \"\" writes none)")
	return func(ctx context.Context, _ []string) int {
		if !o.Priority && (o.EnginePriority || o.Inflight != 0) {
			fmt.Fprintln(os.Stderr, "llmlab tune: --engine-priority and --inflight shape the priority run: add --priority")
			return 2
		}
		if o.Inflight < 0 {
			fmt.Fprintf(os.Stderr, "llmlab tune: --inflight %d: want a positive limit, or 0 for the model's\n", o.Inflight)
			return 2
		}
		if o.Llmlabd == "" {
			o.Llmlabd = command.Sibling("llmlabd")
		}
		if o.Results == "auto" {
			o.Results = command.ResultsDir("tune")
		}
		o.Profiles = strings.Split(*profiles, ",")
		for _, p := range strings.Split(*phases, ",") {
			if p = strings.TrimSpace(p); !slices.Contains(FairPhaseNames, p) {
				fmt.Fprintf(os.Stderr, "llmlab tune: --phases %q: want some of %s, separated by commas\n", *phases, strings.Join(FairPhaseNames, ","))
				return 2
			}
			o.FairPhases = append(o.FairPhases, p)
		}
		for _, f := range strings.Split(*fixed, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "llmlab tune: --fixed %q: want positive integers separated by commas\n", *fixed)
				return 2
			}
			o.Fixed = append(o.Fixed, n)
		}
		if _, err := Run(ctx, o); err != nil {
			fmt.Fprintln(os.Stderr, "llmlab tune:", err)
			return 1
		}
		return 0
	}
}

// list parses a flag's values separated by commas; parse rejects a value
// by returning false, and want says what the flag takes.
func list[T any](flag, s, want string, parse func(string) (T, bool)) ([]T, error) {
	var out []T
	for _, f := range strings.Split(s, ",") {
		v, ok := parse(strings.TrimSpace(f))
		if !ok {
			return nil, fmt.Errorf("--%s %q: want %s separated by commas", flag, s, want)
		}
		out = append(out, v)
	}
	return out, nil
}

func positiveInt(f string) (int, bool) {
	n, err := strconv.Atoi(f)
	return n, err == nil && n >= 1
}

func fraction(f string) (float64, bool) {
	v, err := strconv.ParseFloat(f, 64)
	return v, err == nil && v > 0 && v <= 1
}

func duration(f string) (time.Duration, bool) {
	d, err := time.ParseDuration(f)
	return d, err == nil && d >= 0
}
