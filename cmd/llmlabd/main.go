// Command llmlabd is llmlab's gateway daemon: an OpenAI-compatible front
// door with admission control in front of a vLLM engine.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/llmlab/llmlab/daemon/server"
)

func main() {
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
