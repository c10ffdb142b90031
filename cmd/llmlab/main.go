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

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/dashboard"
	"github.com/llmlab/llmlab/cmd/llmlab/demo"
	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/overhead"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/cmd/llmlab/smoke"
	"github.com/llmlab/llmlab/cmd/llmlab/status"
	"github.com/llmlab/llmlab/cmd/llmlab/tune"
	"github.com/llmlab/llmlab/monitoring"
)

func commands() []command.Command {
	return []command.Command{
		{Name: "check-config", Args: "[--show] [PATH]", Summary: "validate a configuration file (default /etc/llmlab/llmlab.toml)",
			Flags: checkConfigFlags},
		status.Command(),
		smoke.Command(),
		dashboard.Command(monitoring.Dashboard),
		demo.Command(),
		bench.Command(),
		sim.Command(),
		{Name: "fake-engine", Summary: "serve an OpenAI-compatible engine that answers at once", Flags: fakeEngineFlags},
		overhead.Command(),
		tune.Command(),
		tune.EngineCommand(),
		tune.AdmissionCommand(),
		{Name: "gpu", Args: "[-- COMMAND...]", Summary: "show what llmlabd reads from NVML; with a command, run it as the engine (admission, share, release wait)", Flags: gpuFlagSet},
		{Name: "man", Args: "DIR", Summary: "write the manual pages llmlab.1 and llmlabd.8 into DIR",
			Flags: func(*flag.FlagSet) command.Run { return manCmd }},
		{Name: "completion", Args: "bash", Summary: "print the bash completion script",
			Flags: func(*flag.FlagSet) command.Run { return completionCmd }},
	}
}

// helpers are the commands only a benchmark runs, as the children it
// measures (llmlab overhead): callable, but left out of the usage text,
// the manual page and the completion, which list what an operator runs.
func helpers() []command.Command {
	return []command.Command{
		{Name: "reverse-proxy", Summary: "serve a bare httputil.ReverseProxy (the overhead benchmark's Go reference)", Flags: reverseProxyFlags},
	}
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, "usage: llmlab COMMAND [FLAGS]\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-22s%s\n", c.Name+" "+c.Args, c.Summary)
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
		if c.Name != name {
			continue
		}
		fs := flag.NewFlagSet("llmlab "+c.Name, flag.ExitOnError)
		run := c.Flags(fs)
		_ = fs.Parse(os.Args[2:])
		code := run(ctx, fs.Args())
		stop()
		os.Exit(code)
	}
	fmt.Fprintf(os.Stderr, "llmlab: unknown command %q\n", name)
	printUsage(os.Stderr)
	os.Exit(2)
}
