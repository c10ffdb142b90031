// Package childproc owns how llmlab's measuring commands (demo, tune,
// tune-engine, tune-admission, overhead) run the processes they measure:
// llmlabd (through cmd/llmlab/daemonproc), the fake engine, nginx, the
// bare reverse proxy. Each runs with its output in a log file, is read
// back from that file (the address it bound, why it did not start), and
// is stopped with an interrupt, as an operator's Ctrl-C would.
package childproc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Proc is a running child.
type Proc struct {
	// Name names it in errors; Log is its output (stdout and stderr).
	Name, Log string
	cmd       *exec.Cmd
	logf      *os.File
	done      chan struct{} // closed when it has exited
	stop      sync.Once
}

// Start starts bin with args, its output in dir/name.log. The child is
// killed if ctx ends first.
func Start(ctx context.Context, dir, name, bin string, args ...string) (*Proc, error) {
	p := &Proc{Name: name, Log: filepath.Join(dir, name+".log")}
	var err error
	if p.logf, err = os.Create(p.Log); err != nil {
		return nil, err
	}
	p.cmd = exec.CommandContext(ctx, bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logf, p.logf
	if err := p.cmd.Start(); err != nil {
		p.logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p.done = make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	return p, nil
}

// PID is the child's process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the child.
func (p *Proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Running says whether the child has not exited.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop interrupts the child and waits for it to exit; past grace (0:
// none) it is killed. Later calls do nothing.
func (p *Proc) Stop(grace time.Duration) {
	p.stop.Do(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		if grace > 0 {
			select {
			case <-p.done:
			case <-time.After(grace):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		<-p.done
		p.logf.Close()
	})
}

// Output is what the child has written so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// WaitLine waits until the child writes a whole line that match accepts,
// and returns it: how a child that bound port 0 says which port it got.
// It fails, with the child's output, when the child exits first or
// timeout passes.
func (p *Proc) WaitLine(timeout time.Duration, match func(line string) bool) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		exited := !p.Running() // before reading, so that its last words are read
		out := p.Output()
		if i := strings.LastIndexByte(out, '\n'); i >= 0 {
			for line := range strings.Lines(out[:i+1]) {
				if line = strings.TrimRight(line, "\r\n"); match(line) {
					return line, nil
				}
			}
		}
		switch {
		case exited:
			return "", fmt.Errorf("%s exited: %s", p.Name, out)
		case time.Now().After(deadline):
			return "", fmt.Errorf("%s said nothing expected within %s: %s", p.Name, timeout, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
