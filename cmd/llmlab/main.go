// Command llmlab is llmlab's toolbox: it checks configuration files,
// simulates a vLLM engine, runs benchmarks and the demo, measures the
// gateway's overhead, and writes its own and llmlabd's manual pages and
// shell completion.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// runFunc runs a command once its flags are parsed; args are the
// positional arguments left.
type runFunc func(ctx context.Context, args []string) int

// command is one of llmlab's subcommands. flags defines its flags on fs
// and returns what runs it, so that the manual page and the completion
// are generated from the same definitions.
type command struct {
	name, args, summary string
	flags               func(fs *flag.FlagSet) runFunc
}

func commands() []command {
	return []command{
		{"check-config", "[--show] [PATH]", "validate a configuration file (default /etc/llmlab/llmlab.toml)",
			checkConfigFlags},
		{"status", "", "the serving stack at a glance (never wakes a daemon scaled to zero); exit 0 serving or scaled to zero, 1 failed, 3 not running",
			statusFlags},
		{"smoke", "", "one streamed chat completion through the socket, each step timed (cold start included), the answer checked; exit 1 with the reason when it fails",
			smokeFlags},
		{"dashboard", "", "draw the shipped Grafana dashboard's panels from a Prometheus server into an SVG, without Grafana (--check: evaluate every query)",
			dashboardFlags},
		{"demo", "", "the simulator, llmlabd in front of it, rising load, a results table", demoFlags},
		{"bench", "", "send the fixed workload and report throughput, goodput and latency", benchFlagSet},
		{"sim", "", "simulate a vLLM engine on a GPU profile (vLLM's API and metrics)", simFlags},
		{"fake-engine", "", "serve an OpenAI-compatible engine that answers at once", fakeEngineFlags},
		{"overhead", "", "measure llmlabd's overhead against nginx, a bare Go reverse proxy and direct access", overheadFlags},
		{"tune", "", "sweep fixed in-flight limits against the model's (or compare priority classes) on the simulator", tuneFlags},
		{"tune-engine", "", "sweep vLLM's knobs (max_num_seqs, max_num_batched_tokens, max_model_len, gpu_memory_utilization) with llmlab's through llmlabd: find-max per point, the best, the frontier, --apply", tuneEngineFlags},
		{"tune-admission", "", "the shipped llmlabd against fixed limits and a bare 429 proxy at 1x-3x an engine's sustainable rate, a step from idle, find-max through it (docs/benchmarks.md)", tuneAdmissionFlags},
		{"gpu", "[-- COMMAND...]", "show what llmlabd reads from NVML; with a command, run it as the engine (admission, share, release wait)", gpuFlagSet},
		{"man", "DIR", "write the manual pages llmlab.1 and llmlabd.8 into DIR",
			func(*flag.FlagSet) runFunc { return manCmd }},
		{"completion", "bash", "print the bash completion script",
			func(*flag.FlagSet) runFunc { return completionCmd }},
	}
}

// helpers are the commands only a benchmark runs, as the children it
// measures (llmlab overhead): callable, but left out of the usage text,
// the manual page and the completion, which list what an operator runs.
func helpers() []command {
	return []command{
		{"reverse-proxy", "", "serve a bare httputil.ReverseProxy (the overhead benchmark's Go reference)", reverseProxyFlags},
	}
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, "usage: llmlab COMMAND [FLAGS]\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-22s%s\n", c.name+" "+c.args, c.summary)
	}
	fmt.Fprint(w, "\nllmlab COMMAND -h lists a command's flags.\n")
}

func main() {
	if len(os.Args) < 2 {
		printUsage(os.Stderr)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	name := os.Args[1]
	switch name {
	case "help", "-h", "-help", "--help":
		printUsage(os.Stdout)
		return
	}
	for _, c := range append(commands(), helpers()...) {
		if c.name != name {
			continue
		}
		fs := flag.NewFlagSet("llmlab "+c.name, flag.ExitOnError)
		run := c.flags(fs)
		_ = fs.Parse(os.Args[2:])
		code := run(ctx, fs.Args())
		stop()
		os.Exit(code)
	}
	fmt.Fprintf(os.Stderr, "llmlab: unknown command %q\n", name)
	printUsage(os.Stderr)
	os.Exit(2)
}
