package tune

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
)

// AdmissionCommand is llmlab tune-admission: the shipped llmlabd against
// fixed limits and a bare 429 proxy (RunAdmission).
func AdmissionCommand() command.Command {
	return command.Command{Name: "tune-admission", Summary: "the shipped llmlabd against fixed limits and a bare 429 proxy at 1x-3x an engine's sustainable rate, a step from idle, find-max through it (docs/benchmarks.md)",
		Flags: tuneAdmissionFlags}
}

func tuneAdmissionFlags(fs *flag.FlagSet) command.Run {
	o := AdmissionOptions{Out: os.Stdout, SLO: bench.SLO{MaxErrorRate: 0.001}}
	fs.StringVar(&o.Llmlabd, "llmlabd", "", "llmlabd binary (default: the one next to llmlab)")
	fs.StringVar(&o.Profile, "profile", "gtx1650-derived", "the simulated engine: "+sim.ProfileNames())
	fs.StringVar(&o.Engine, "engine", "", "an engine already serving at this URL instead of the simulator (e.g. Ollama)")
	fs.Float64Var(&o.GPUMemoryGiB, "gpu-memory-gib", 0, "the simulated card's memory in GiB (0: the profile's)")
	fs.IntVar(&o.MaxNumSeqs, "max-num-seqs", 0, "the simulated vLLM's --max-num-seqs (0: the profile's default)")
	fs.IntVar(&o.MaxNumBatchedTokens, "max-num-batched-tokens", 0, "the simulated vLLM's --max-num-batched-tokens (0: the profile's default)")
	fs.StringVar(&o.Model, "model", "", "the model's name (default: Qwen/Qwen2.5-0.5B-Instruct)")
	fixed := fs.String("fixed", "8,16,32,64", "llmlabd's fixed in-flight limits to compare")
	proxy := fs.String("proxy", "8,16,32", "the bare proxy's limits to compare (429 past N in flight)")
	loads := fs.String("loads", "1,2,3", "offered loads, as multiples of the engine's sustainable rate (\"\": none, only the capacity, the step and find-max)")
	fs.IntVar(&o.PromptTokens, "prompt-tokens", 200, "prompt tokens")
	fs.IntVar(&o.MaxTokens, "max-tokens", 200, "output tokens")
	fs.BoolVar(&o.Stream, "stream", true, "stream the answers")
	fs.DurationVar(&o.Warmup, "warmup", 10*time.Second, "warm-up of each phase, excluded")
	fs.DurationVar(&o.Duration, "duration", 40*time.Second, "measurement of each phase")
	fs.DurationVar(&o.SLO.Latency, "slo-p95", 5*time.Second, "the objective (llmlabd's slo.latency and the goodput bound)")
	fs.Float64Var(&o.Capacity, "capacity", 0, "the engine's sustainable rate, if known (0: measured first with find-max)")
	fs.BoolVar(&o.FindMax, "find-max", true, "measure the sustainable rate through the shipped llmlabd too")
	fs.StringVar(&o.Results, "results", "auto", "results folder (auto: results/admission-<UTC time>; \"\" writes none)")
	return func(ctx context.Context, _ []string) int {
		if o.Llmlabd == "" {
			o.Llmlabd = command.Sibling("llmlabd")
		}
		if o.Results == "auto" {
			o.Results = command.ResultsDir("admission")
		}
		var errs []error
		var err error
		if *fixed != "" {
			o.Fixed, err = list("fixed", *fixed, "positive integers", positiveInt)
			errs = append(errs, err)
		}
		if *proxy != "" {
			o.Proxy, err = list("proxy", *proxy, "positive integers", positiveInt)
			errs = append(errs, err)
		}
		if *loads != "" {
			o.Loads, err = list("loads", *loads, "positive numbers", func(f string) (float64, bool) {
				v, err := strconv.ParseFloat(f, 64)
				return v, err == nil && v > 0
			})
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			fmt.Fprintln(os.Stderr, "llmlab tune-admission:", err)
			return 2
		}
		if _, err := RunAdmission(ctx, o); err != nil {
			fmt.Fprintln(os.Stderr, "llmlab tune-admission:", err)
			return 1
		}
		return 0
	}
}
