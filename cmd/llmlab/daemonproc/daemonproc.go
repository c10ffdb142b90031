// Package daemonproc runs llmlabd as a child process for llmlab's
// measuring commands (demo, tune): on a free loopback port, with a
// configuration written to a folder, its output in a log file there.
package daemonproc

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Start writes config(listen) to dir/llmlab.toml, where listen is a free
// loopback address, starts bin with it, and returns the API's base URL
// once /healthz answers, and a function that stops the daemon.
func Start(ctx context.Context, bin, dir string, config func(listen string) string) (string, func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := l.Addr().String()
	l.Close()
	path := filepath.Join(dir, "llmlab.toml")
	if err := os.WriteFile(path, []byte(config(addr)), 0o644); err != nil {
		return "", nil, err
	}
	logPath := filepath.Join(dir, "llmlabd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return "", nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "--config", path)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return "", nil, fmt.Errorf("starting llmlabd: %w", err)
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		logf.Close()
	}
	url := "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			return url, stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			log, _ := os.ReadFile(logPath)
			return "", nil, fmt.Errorf("llmlabd did not start: %s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
