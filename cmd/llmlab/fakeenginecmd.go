package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

// fakeEngineCommand serves internal/fakeengine: the engine llmlab
// overhead measures against, and one an operator can try llmlabd on.
func fakeEngineCommand() command.Command {
	return command.Command{Name: "fake-engine", Summary: "serve an OpenAI-compatible engine that answers at once", Flags: fakeEngineFlags}
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
