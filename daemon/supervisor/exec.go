package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Exec runs the engine as a child process in its own process group (for
// laptops and `make demo`; under systemd the engine is a unit instead).
type Exec struct {
	Argv []string
	// Grace is how long the engine has to exit after SIGTERM before the
	// whole group gets SIGKILL, read at each stop (llmlabd's follows a
	// reload); nil: none.
	Grace  func() time.Duration
	Output io.Writer
	// Env, when set, adds to the engine's environment at each start.
	Env func() []string
}

// Start starts the command.
func (e *Exec) Start(context.Context) (Process, error) {
	if len(e.Argv) == 0 {
		return nil, errors.New("no engine command")
	}
	cmd := exec.Command(e.Argv[0], e.Argv[1:]...)
	// Its own process group, so a stop reaches the engine's children too;
	// and SIGTERM if llmlabd dies without stopping it, so no engine is left
	// holding the GPU behind a dead daemon.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	last := &lastLine{}
	out := io.Writer(last)
	if e.Output != nil {
		out = io.MultiWriter(e.Output, last)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if e.Env != nil {
		cmd.Env = append(os.Environ(), e.Env()...)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", e.Argv[0], err)
	}
	p := &execProcess{cmd: cmd, done: make(chan struct{}), grace: e.Grace, last: last}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

type execProcess struct {
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
	grace func() time.Duration
	last  *lastLine
}

func (p *execProcess) Done() <-chan struct{} { return p.done }

// Exit says how the engine exited and the last line it wrote (call it once
// Done is closed).
func (p *execProcess) Exit() (status, lastOutput string) {
	status = "exit status 0"
	if p.err != nil {
		status = p.err.Error()
	}
	return status, p.last.String()
}

// lastLine keeps the last non-empty line written to it (at most 500
// bytes): why an engine that exits said it did.
type lastLine struct {
	mu         sync.Mutex
	line, part []byte
}

func (l *lastLine) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range b {
		if c == '\n' {
			if len(bytes.TrimSpace(l.part)) > 0 {
				l.line = append(l.line[:0], l.part...)
			}
			l.part = l.part[:0]
			continue
		}
		if len(l.part) < 500 {
			l.part = append(l.part, c)
		}
	}
	return len(b), nil
}

func (l *lastLine) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(bytes.TrimSpace(l.part)) > 0 {
		return string(bytes.TrimSpace(l.part))
	}
	return string(bytes.TrimSpace(l.line))
}

// Stop sends SIGTERM to the process group, then SIGKILL after the grace
// period, and waits for the exit.
func (p *execProcess) Stop(ctx context.Context) error {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	var grace time.Duration
	if p.grace != nil {
		grace = p.grace()
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("the engine ignored SIGTERM for %s and was killed", grace)
}
