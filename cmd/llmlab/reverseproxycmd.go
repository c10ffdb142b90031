package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/overhead"
)

// reverseProxyCommand serves overhead.ReverseProxy, the overhead
// benchmark's Go reference; a helper (see helpers).
func reverseProxyCommand() command.Command {
	return command.Command{Name: "reverse-proxy", Summary: "serve a bare httputil.ReverseProxy (the overhead benchmark's Go reference)", Flags: reverseProxyFlags}
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
