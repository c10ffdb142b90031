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
	"syscall"
	"time"
)

// Proc is a running llmlabd.
type Proc struct {
	// URL is the API's base URL; Listen its address.
	URL, Listen string
	// Config is the configuration file it was started with.
	Config string
	// Log is its output.
	Log  string
	cmd  *exec.Cmd
	logf *os.File
	done chan struct{} // closed when llmlabd has exited
}

// Start writes config(listen) to dir/llmlab.toml, where listen is a free
// loopback address, starts bin with it, and returns the API's base URL
// once /healthz answers, and a function that stops the daemon.
func Start(ctx context.Context, bin, dir string, config func(listen string) string) (string, func(), error) {
	p, err := Run(ctx, bin, dir, config)
	if err != nil {
		return "", nil, err
	}
	return p.URL, p.Stop, nil
}

// Run is Start, returning the process.
func Run(ctx context.Context, bin, dir string, config func(listen string) string) (*Proc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proc{Listen: l.Addr().String(), Config: filepath.Join(dir, "llmlab.toml"), Log: filepath.Join(dir, "llmlabd.log")}
	l.Close()
	if err := os.WriteFile(p.Config, []byte(config(p.Listen)), 0o644); err != nil {
		return nil, err
	}
	if p.logf, err = os.Create(p.Log); err != nil {
		return nil, err
	}
	p.cmd = exec.CommandContext(ctx, bin, "--config", p.Config)
	p.cmd.Stdout, p.cmd.Stderr = p.logf, p.logf
	if err := p.cmd.Start(); err != nil {
		p.logf.Close()
		return nil, fmt.Errorf("starting llmlabd: %w", err)
	}
	p.done = make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	p.URL = "http://" + p.Listen
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			p.Stop()
			log, _ := os.ReadFile(p.Log)
			return nil, fmt.Errorf("llmlabd did not start: %s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Reload rewrites the configuration file with config and sends SIGHUP, as
// systemctl reload llmlab does.
func (p *Proc) Reload(config string) error {
	if err := os.WriteFile(p.Config, []byte(config), 0o644); err != nil {
		return err
	}
	return p.cmd.Process.Signal(syscall.SIGHUP)
}

// Running says whether llmlabd has not exited.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop interrupts llmlabd and waits for it to exit.
func (p *Proc) Stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	<-p.done
	p.logf.Close()
}
