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

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
)

func main() {
	fs := flag.NewFlagSet("llmlabd", flag.ExitOnError)
	cfgPath := fs.String("config", config.DefaultPath, "configuration file (TOML)")
	listen := fs.String("listen", "", "API address when not socket-activated (overrides gateway.listen)")
	engineURL := fs.String("engine-url", "", "engine base URL (overrides engine.url)")
	metricsListen := fs.String("metrics-listen", "", "metrics address (overrides metrics.listen)")
	_ = fs.Parse(os.Args[1:])
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })

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

	err := server.Run(ctx, server.Options{
		ConfigPath: *cfgPath, Explicit: explicit,
		Listen: *listen, EngineURL: *engineURL, MetricsListen: *metricsListen,
		Reload: reload, Stderr: os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmlabd:", err)
		os.Exit(1)
	}
}
