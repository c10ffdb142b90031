// Command llmlab is llmlab's toolbox: it checks configuration files, runs
// a fake engine and measures the gateway's overhead (and, as the project
// grows, simulates an engine and runs benchmarks).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usage: llmlab COMMAND [FLAGS]

commands:
  check-config [PATH]   validate a configuration file (default /etc/llmlab/llmlab.toml)
  demo                  the simulator, llmlabd in front of it, rising load, a results table
  bench                 send the fixed workload and report throughput, goodput and latency
  sim                   simulate a vLLM engine on a GPU profile (vLLM's API and metrics)
  fake-engine           serve an OpenAI-compatible engine that answers at once
  overhead              measure llmlabd's overhead against nginx and direct access
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var code int
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "check-config":
		code = checkConfig(args)
	case "demo":
		code = demoCmd(ctx, args)
	case "sim":
		code = simCmd(ctx, args)
	case "fake-engine":
		code = fakeEngine(ctx, args)
	case "bench":
		code = benchCmd(ctx, args)
	case "overhead":
		code = overheadCmd(ctx, args)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "llmlab: unknown command %q\n%s", cmd, usage)
		code = 2
	}
	os.Exit(code)
}
