package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"text/tabwriter"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/overhead"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

// checkConfig validates a file as llmlabd would load it, keys file
// included, and prints every problem; --show prints the configuration in
// effect, and which values the file set.
func checkConfigFlags(fs *flag.FlagSet) command.Run {
	show := fs.Bool("show", false, "print every key's value in effect and whether the file set it")
	return func(ctx context.Context, args []string) int { return checkConfig(ctx, *show, args) }
}

func checkConfig(_ context.Context, show bool, args []string) int {
	path, explicit := config.DefaultPath, false
	if len(args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: llmlab check-config [--show] [PATH]")
		return 2
	}
	if len(args) == 1 {
		path, explicit = args[0], true
	}
	cfg, _, err := server.LoadConfig(server.Options{ConfigPath: path, Explicit: explicit})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, d := range cfg.Deprecated {
		fmt.Fprintf(os.Stderr, "%s: deprecated: %s\n", path, d)
	}
	for _, n := range cfg.Notes {
		fmt.Fprintf(os.Stderr, "%s: note: %s\n", path, n)
	}
	if show {
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) && !explicit {
			data, err = nil, nil
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		settings, err := config.Show(path, data)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		printSettings(os.Stdout, settings)
		return 0
	}
	fmt.Printf("%s: ok\n", path)
	return 0
}

// printSettings writes settings as "key = value  # source", aligned.
func printSettings(w io.Writer, settings []config.Setting) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range settings {
		src := "# default"
		switch {
		case s.FromFile && s.Value == s.Default:
			src = "# file (the default)"
		case s.FromFile:
			src = "# file (default " + s.Default + ")"
		}
		if s.Derived != "" {
			src += "; in effect: " + s.Derived
		}
		fmt.Fprintf(tw, "%s = %s\t%s\n", s.Key, s.Value, src)
	}
	tw.Flush()
}

func fakeEngineFlags(fs *flag.FlagSet) command.Run {
	listen := fs.String("listen", "127.0.0.1:8000", "address to serve on")
	delay := fs.Duration("delay", 0, "time before the first token")
	tokenDelay := fs.Duration("token-delay", 0, "time between streamed tokens")
	return func(ctx context.Context, _ []string) int { return fakeEngine(ctx, *listen, *delay, *tokenDelay) }
}

func fakeEngine(ctx context.Context, listen string, delay, tokenDelay time.Duration) int {
	return serveUntilDone(ctx, "fake-engine", listen, &fakeengine.Engine{Delay: delay, TokenDelay: tokenDelay},
		"fake engine listening on")
}

// serveUntilDone serves h on listen until ctx ends, for the helper
// servers of the benchmarks; banner and the address go to stdout once it
// listens.
func serveUntilDone(ctx context.Context, cmd, listen string, h http.Handler, banner string) int {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "llmlab %s: %v\n", cmd, err)
		return 1
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	fmt.Println(banner, l.Addr())
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "llmlab %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func reverseProxyFlags(fs *flag.FlagSet) command.Run {
	listen := fs.String("listen", "127.0.0.1:8081", "address to serve on")
	engine := fs.String("engine-url", "http://127.0.0.1:8000", "the server to forward to")
	return func(ctx context.Context, _ []string) int {
		u, err := url.Parse(*engine)
		if err != nil || u.Host == "" {
			fmt.Fprintf(os.Stderr, "llmlab reverse-proxy: --engine-url %q is not an http URL\n", *engine)
			return 2
		}
		return serveUntilDone(ctx, "reverse-proxy", *listen, overhead.ReverseProxy(u), "reverse proxy to "+u.String()+" listening on")
	}
}
