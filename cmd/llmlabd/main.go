// Command llmlabd is llmlab's gateway daemon: an OpenAI-compatible front
// door with admission control in front of a vLLM engine.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/llmlab/llmlab/daemon/server"
)

// gcPercent and memoryLimit are the collector's defaults, unless GOGC
// and GOMEMLIMIT say otherwise. The daemon's live heap is a few MiB while
// it allocates a few KiB per request: collecting at five times the live
// heap rather than twice costs MiBs and saves about a sixth of its CPU per
// request at high rates (docs/benchmarks.md); the soft limit keeps that
// slack from growing past it when the live heap is large.
const (
	gcPercent   = 400
	memoryLimit = 512 << 20
)

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	fs := flag.NewFlagSet("llmlabd", flag.ExitOnError)
	var o server.Options
	o.RegisterFlags(fs)
	_ = fs.Parse(os.Args[1:])
	if fs.Lookup("version").Value.String() == "true" {
		fmt.Println("llmlabd", server.Version)
		return
	}
	fs.Visit(func(f *flag.Flag) { o.Explicit = o.Explicit || f.Name == "config" })

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()

	o.Reload, o.Stderr = reload, os.Stderr
	err := server.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmlabd:", err)
		os.Exit(1)
	}
}
