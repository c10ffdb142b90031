package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Exec runs the engine as a child process in its own process group (for
// laptops and `make demo`; under systemd the engine is a unit instead).
type Exec struct {
	Argv []string
	// Grace is how long the engine has to exit after SIGTERM before the
	// whole group gets SIGKILL.
	Grace  time.Duration
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
	cmd.Stdout, cmd.Stderr = e.Output, e.Output
	if e.Env != nil {
		cmd.Env = append(os.Environ(), e.Env()...)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", e.Argv[0], err)
	}
	p := &execProcess{cmd: cmd, done: make(chan struct{}), grace: e.Grace}
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
	grace time.Duration
}

func (p *execProcess) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM to the process group, then SIGKILL after the grace
// period, and waits for the exit.
func (p *execProcess) Stop(ctx context.Context) error {
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(p.grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("the engine ignored SIGTERM for %s and was killed", p.grace)
}
