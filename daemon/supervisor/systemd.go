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
// polling). Each start opens a fresh connection; a connection that drops
// while the unit runs (dbus restarted, say) is re-established with backoff,
// and the unit's state is read again once it is, so that a unit that died
// meanwhile is not missed.
type Systemd struct {
	Unit string
	// Connect opens the bus connection (default: the system bus, which
	// honours DBUS_SYSTEM_BUS_ADDRESS).
	Connect func(ctx context.Context) (*sddbus.Conn, error)
	Log     *slog.Logger
	// CheckEvery is how often a running unit's bus connection is checked
	// (default 1s).
	CheckEvery time.Duration
}

func (s *Systemd) connect(ctx context.Context) (*sddbus.Conn, error) {
	if s.Connect != nil {
		return s.Connect(ctx)
	}
	return sddbus.NewSystemConnectionContext(ctx)
}

// Start starts the unit and waits for its start job to finish.
func (s *Systemd) Start(ctx context.Context) (Process, error) {
	conn, updates, errs, err := s.subscribe(ctx)
	if err != nil {
		return nil, err
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

// subscribe connects to the bus and subscribes to unit property changes.
func (s *Systemd) subscribe(ctx context.Context) (*sddbus.Conn, <-chan *sddbus.PropertiesUpdate, <-chan error, error) {
	conn, err := s.connect(ctx)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connecting to systemd: %w", err)
	}
	updates := make(chan *sddbus.PropertiesUpdate, 256)
	errs := make(chan error, 16)
	conn.SetPropertiesSubscriber(updates, errs)
	if err := conn.Subscribe(); err != nil {
		conn.Close()
		return nil, nil, nil, fmt.Errorf("subscribing to systemd signals: %w", err)
	}
	return conn, updates, errs, nil
}

type unitProcess struct {
	s        *Systemd
	mu       sync.Mutex // guards conn, replaced on a reconnect
	conn     *sddbus.Conn
	done     chan struct{}
	once     sync.Once
	closing  sync.Once
	stopping atomic.Bool
}

func (p *unitProcess) Done() <-chan struct{} { return p.done }

func (p *unitProcess) exited() { p.once.Do(func() { close(p.done) }) }

func (p *unitProcess) close() { p.closing.Do(func() { p.bus().Close() }) }

func (p *unitProcess) bus() *sddbus.Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conn
}

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

// watch closes Done when the unit leaves the active states, and
// re-establishes the bus connection when it drops.
func (p *unitProcess) watch(updates <-chan *sddbus.PropertiesUpdate, errs <-chan error) {
	every := p.s.CheckEvery
	if every <= 0 {
		every = time.Second
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if p.bus().Connected() || p.stopping.Load() {
				continue
			}
			u, e, ok := p.reconnect()
			if !ok {
				return
			}
			updates, errs = u, e
			if state, err := p.activeState(); err == nil && !active(state) {
				p.log("engine unit is no longer active (seen after reconnecting to systemd)", "active_state", state, "result", p.result())
				p.exited()
				p.close()
				return
			}
		case u := <-updates:
			if u.UnitName != p.s.Unit {
				continue
			}
			v, ok := u.Changed["ActiveState"]
			if !ok {
				continue
			}
			if state, _ := v.Value().(string); (state == "inactive" || state == "failed") && !p.stillActive() {
				p.log("engine unit left the active state", "active_state", state, "result", p.result())
				p.exited()
				if !p.stopping.Load() {
					// Died on its own; a stop in progress still needs the
					// connection for its job's result.
					p.close()
				}
				return
			}
		case err := <-errs:
			p.log("systemd signal", "err", err)
		case <-p.done:
			return
		}
	}
}

func (p *unitProcess) log(msg string, args ...any) {
	if p.s.Log != nil {
		// ENGINE_UNIT in the journal: UNIT is systemd's own field.
		p.s.Log.Warn(msg, append([]any{"engine_unit", p.s.Unit}, args...)...)
	}
}

// reconnect replaces a dropped bus connection, retrying with backoff
// until it succeeds or the unit is stopped through Stop (ok false).
func (p *unitProcess) reconnect() (<-chan *sddbus.PropertiesUpdate, <-chan error, bool) {
	p.log("the D-Bus connection to systemd dropped; reconnecting")
	wait := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, updates, errs, err := p.s.subscribe(ctx)
		cancel()
		if err == nil {
			p.mu.Lock()
			old := p.conn
			p.conn = conn
			p.mu.Unlock()
			old.Close()
			p.log("reconnected to systemd")
			return updates, errs, true
		}
		p.log("reconnecting to systemd", "err", err, "retry_in", wait)
		select {
		case <-time.After(wait):
		case <-p.done:
			return nil, nil, false
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// stillActive checks the unit's current ActiveState when a signal said it
// left: signals from before the start job finished (the unit was inactive
// while its job was queued) arrive late and must not count. When the
// state cannot be read, the signal is believed.
func (p *unitProcess) stillActive() bool {
	state, err := p.activeState()
	return err == nil && active(state)
}

func (p *unitProcess) activeState() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	prop, err := p.bus().GetUnitPropertyContext(ctx, p.s.Unit, "ActiveState")
	if err != nil {
		return "", err
	}
	state, _ := prop.Value.Value().(string)
	return state, nil
}

func active(state string) bool {
	return state == "active" || state == "activating" || state == "reloading"
}

// result is the service's Result property ("exit-code", "timeout", ...),
// or "" when it cannot be read.
func (p *unitProcess) result() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	prop, err := p.bus().GetServicePropertyContext(ctx, p.s.Unit, "Result")
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
	conn := p.bus()
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
