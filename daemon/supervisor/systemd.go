package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// Systemd runs the engine as a systemd unit through the D-Bus API: start
// and stop jobs whose results come from the JobRemoved signal, and the
// unit's ActiveState followed through PropertiesChanged signals (not by
// polling). Each start opens a fresh connection, so a bus connection that
// dropped is re-established by the next start.
type Systemd struct {
	Unit string
	// Connect opens the bus connection (default: the system bus, which
	// honours DBUS_SYSTEM_BUS_ADDRESS).
	Connect func(ctx context.Context) (*sddbus.Conn, error)
	Log     *slog.Logger
}

func (s *Systemd) connect(ctx context.Context) (*sddbus.Conn, error) {
	if s.Connect != nil {
		return s.Connect(ctx)
	}
	return sddbus.NewSystemConnectionContext(ctx)
}

// Start starts the unit and waits for its start job to finish.
func (s *Systemd) Start(ctx context.Context) (Process, error) {
	conn, err := s.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("connecting to systemd: %w", err)
	}
	updates := make(chan *sddbus.PropertiesUpdate, 256)
	errs := make(chan error, 16)
	conn.SetPropertiesSubscriber(updates, errs)
	if err := conn.Subscribe(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("subscribing to systemd signals: %w", err)
	}
	p := &unitProcess{s: s, conn: conn, done: make(chan struct{})}
	result, err := p.job(ctx, conn.StartUnitContext)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("starting %s: %w", s.Unit, err)
	}
	if result != "done" {
		conn.Close()
		return nil, fmt.Errorf("starting %s: the start job ended %q (see journalctl -u %s)", s.Unit, result, s.Unit)
	}
	go p.watch(updates, errs)
	return p, nil
}

type unitProcess struct {
	s        *Systemd
	conn     *sddbus.Conn
	done     chan struct{}
	once     sync.Once
	closing  sync.Once
	stopping atomic.Bool
}

func (p *unitProcess) Done() <-chan struct{} { return p.done }

func (p *unitProcess) exited() { p.once.Do(func() { close(p.done) }) }

func (p *unitProcess) close() { p.closing.Do(p.conn.Close) }

// job runs a start or stop job and returns its result from JobRemoved.
func (p *unitProcess) job(ctx context.Context, call func(context.Context, string, string, chan<- string) (int, error)) (string, error) {
	ch := make(chan string, 1)
	if _, err := call(ctx, p.s.Unit, "replace", ch); err != nil {
		return "", err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// watch closes Done when the unit leaves the active states.
func (p *unitProcess) watch(updates <-chan *sddbus.PropertiesUpdate, errs <-chan error) {
	for {
		select {
		case u := <-updates:
			if u.UnitName != p.s.Unit {
				continue
			}
			v, ok := u.Changed["ActiveState"]
			if !ok {
				continue
			}
			if state, _ := v.Value().(string); (state == "inactive" || state == "failed") && !p.stillActive() {
				if p.s.Log != nil {
					p.s.Log.Warn("engine unit left the active state", "unit", p.s.Unit, "active_state", state, "result", p.result())
				}
				p.exited()
				if !p.stopping.Load() {
					// Died on its own; a stop in progress still needs the
					// connection for its job's result.
					p.close()
				}
				return
			}
		case err := <-errs:
			if p.s.Log != nil {
				p.s.Log.Warn("systemd signal", "unit", p.s.Unit, "err", err)
			}
		case <-p.done:
			return
		}
	}
}

// stillActive checks the unit's current ActiveState when a signal said it
// left: signals from before the start job finished (the unit was inactive
// while its job was queued) arrive late and must not count. When the
// state cannot be read, the signal is believed.
func (p *unitProcess) stillActive() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	prop, err := p.conn.GetUnitPropertyContext(ctx, p.s.Unit, "ActiveState")
	if err != nil {
		return false
	}
	state, _ := prop.Value.Value().(string)
	return state == "active" || state == "activating" || state == "reloading"
}

// result is the service's Result property ("exit-code", "timeout", ...),
// or "" when it cannot be read.
func (p *unitProcess) result() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	prop, err := p.conn.GetServicePropertyContext(ctx, p.s.Unit, "Result")
	if err != nil {
		return ""
	}
	r, _ := prop.Value.Value().(string)
	return r
}

// Stop stops the unit and waits for the stop job.
func (p *unitProcess) Stop(ctx context.Context) error {
	p.stopping.Store(true)
	defer p.close()
	defer p.exited()
	conn := p.conn
	if !conn.Connected() {
		// The bus connection dropped: stop through a new one.
		c, err := p.s.connect(ctx)
		if err != nil {
			return fmt.Errorf("stopping %s: reconnecting to systemd: %w", p.s.Unit, err)
		}
		defer c.Close()
		conn = c
	}
	result, err := p.job(ctx, conn.StopUnitContext)
	if err != nil {
		return fmt.Errorf("stopping %s: %w", p.s.Unit, err)
	}
	if result != "done" {
		return fmt.Errorf("stopping %s: the stop job ended %q", p.s.Unit, result)
	}
	return nil
}
