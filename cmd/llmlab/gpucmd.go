package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/gpu"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

// gpuCommand shows what llmlabd's NVML monitor reads, or runs a command
// as llmlabd would run its engine (gpuCmd).
func gpuCommand() command.Command {
	return command.Command{Name: "gpu", Args: "[-- COMMAND...]", Summary: "show what llmlabd reads from NVML; with a command, run it as the engine (admission, share, release wait)",
		Flags: gpuFlagSet}
}

type gpuFlags struct {
	watch, duration, runFor time.Duration
	budget                  string
	fraction                float64
	device                  int
	asJSON                  bool
}

func gpuFlagSet(fs *flag.FlagSet) command.Run {
	var f gpuFlags
	fs.DurationVar(&f.watch, "watch", 0, "read again at this interval (0: once)")
	fs.DurationVar(&f.duration, "for", 10*time.Second, "with --watch: for this long")
	fs.StringVar(&f.budget, "budget", "", `show the engine's share for this memory budget (as gpu.memory_budget, e.g. "4GiB")`)
	fs.Float64Var(&f.fraction, "fraction", 0.9, "the engine's share without a budget (as gpu.memory_fraction)")
	fs.IntVar(&f.device, "device", 0, "the engine's GPU (as gpu.device)")
	fs.DurationVar(&f.runFor, "run-for", 5*time.Second, "with a command after --: stop it after this long")
	fs.BoolVar(&f.asJSON, "json", false, "print readings as JSON lines")
	return func(ctx context.Context, args []string) int { return gpuCmd(ctx, f, args, os.Stdout) }
}

// gpuCmd prints what llmlabd's NVML monitor sees; with a command after --,
// it runs that command as the engine would be run (start admission, the
// engine's share in its environment, the release wait after the stop).
func gpuCmd(ctx context.Context, f gpuFlags, argv []string, out io.Writer) int {
	var budget uint64
	if f.budget != "" {
		b, err := config.ParseBytes(f.budget)
		if err != nil {
			fmt.Fprintf(os.Stderr, "llmlab gpu: --budget %q: %v\n", f.budget, err)
			return 2
		}
		budget = b
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	mon := gpu.New(nvml.New(), 100*time.Millisecond, log)
	mctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() { mon.Run(mctx); close(done) }()
	defer func() { stop(); <-done }()

	print := func(s gpu.Snapshot) {
		if f.asJSON {
			_ = json.NewEncoder(out).Encode(s)
			return
		}
		printSnapshot(out, s, budget, f.fraction)
	}
	if len(argv) == 0 {
		print(mon.Fresh(ctx))
		if f.watch <= 0 {
			return 0
		}
		t := time.NewTicker(f.watch)
		defer t.Stop()
		end := time.After(f.duration)
		for {
			select {
			case <-t.C:
				print(mon.Fresh(ctx))
			case <-end:
				return 0
			case <-ctx.Done():
				return 0
			}
		}
	}

	adm := &gpu.Admission{Monitor: mon, Device: f.device, Budget: budget, Fraction: f.fraction, ReleaseTimeout: time.Minute, Log: log}
	var released time.Duration
	var ok bool
	adm.OnRelease = func(took time.Duration, r bool) { released, ok = took, r }
	if err := adm.BeforeStart(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "llmlab gpu: start refused:", err)
		return 1
	}
	fmt.Fprintf(out, "start admitted; engine environment: %s\n", strings.Join(adm.Env(), " "))
	proc, err := (&supervisor.Exec{Argv: argv, Grace: func() time.Duration { return 10 * time.Second }, Output: os.Stderr, Env: adm.Env}).Start(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmlab gpu:", err)
		return 1
	}
	t0 := time.Now()
	tick := time.NewTicker(max(f.watch, 500*time.Millisecond))
	defer tick.Stop()
	end := time.After(f.runFor)
loop:
	for {
		select {
		case <-tick.C:
			fmt.Fprintf(out, "t=%.1fs ", time.Since(t0).Seconds())
			print(mon.Fresh(ctx))
			adm.NoteRunning(ctx)
		case <-end:
			break loop
		case <-proc.Done():
			break loop
		}
	}
	adm.NoteRunning(ctx)
	stopped := time.Now()
	_ = proc.Stop(ctx)
	exited := time.Now()
	adm.AfterStop(ctx)
	fmt.Fprintf(out, "stopped: the command exited %.0f ms after SIGTERM; its GPU memory released %.0f ms after its exit (released: %v)\n",
		exited.Sub(stopped).Seconds()*1000, released.Seconds()*1000, ok)
	print(mon.Fresh(ctx))
	if !ok {
		return 1
	}
	return 0
}

func printSnapshot(w io.Writer, s gpu.Snapshot, budget uint64, fraction float64) {
	if !s.Available {
		fmt.Fprintf(w, "%s\n", s.Reason)
		return
	}
	for _, d := range s.Devices {
		util := "n/a"
		if d.UtilOK {
			util = fmt.Sprintf("gpu %.0f%% mem %.0f%%", d.UtilGPU*100, d.UtilMemory*100)
		}
		fmt.Fprintf(w, "GPU %d %s (driver %s): memory total %s used %s free %s reserved %s; utilisation %s; %d compute processes",
			d.Index, d.Name, s.Driver, gpu.GiB(d.MemoryTotal), gpu.GiB(d.MemoryUsed), gpu.GiB(d.MemoryFree), gpu.GiB(d.MemoryReserved), util, len(d.Processes))
		for _, p := range d.Processes {
			fmt.Fprintf(w, " [pid %d %s]", p.PID, gpu.GiB(p.UsedMemory))
		}
		if share, err := gpu.Utilization(budget, d.MemoryTotal, fraction); err != nil {
			fmt.Fprintf(w, "; budget: %v", err)
		} else if budget > 0 {
			fmt.Fprintf(w, "; a %s budget is --gpu-memory-utilization %g here", gpu.GiB(budget), share)
		}
		fmt.Fprintln(w)
	}
}
