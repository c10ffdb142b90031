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

// printUsage writes the usage text: every command of the table with its
// summary; the helpers stay out.
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
