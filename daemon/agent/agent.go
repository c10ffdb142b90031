// Package agent answers HAProxy's agent check (the "agent-check" server
// option): on each TCP connection it writes one line saying what this
// host can take right now, and closes. HAProxy's documentation (2.6,
// configuration.txt, "agent-check") defines the words: "up" and "ready"
// set the operational and administrative state, and "maxconn:N" the most
// connections HAProxy sends the server at once. Words not sent are left
// as they are, and a failed connection to the agent is not an error:
// HAProxy keeps the last answer. So the agent never says "down", "drain"
// or "maint": after llmlabd exits on idle nothing would ever say
// otherwise, and the host, which systemd's socket would wake, would stay
// out of the farm. What varies is maxconn (docs/scaling.md).
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/daemon/supervisor"
)

// State is what the host can take.
type State struct {
	// MaxConn is the most requests at once it asks to be sent (at least 1).
	MaxConn int
}

// Line is the agent's answer for s, newline included.
func Line(s State) string {
	return fmt.Sprintf("up ready maxconn:%d\n", max(s.MaxConn, 1))
}

// writeTimeout bounds the write of one answer to a checker that does not
// read.
const writeTimeout = time.Second

// Server answers agent checks with the state current at each one.
type Server struct {
	state   func() State
	log     *slog.Logger
	checks  prometheus.Counter
	maxconn prometheus.Gauge
}

// New returns a Server that reads state at each check and registers its
// metrics with reg.
func New(state func() State, reg prometheus.Registerer, log *slog.Logger) *Server {
	s := &Server{state: state, log: log,
		checks: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmlab_balancer_agent_checks_total",
			Help: "HAProxy agent checks answered."}),
		maxconn: prometheus.NewGauge(prometheus.GaugeOpts{Name: "llmlab_balancer_agent_maxconn",
			Help: "The maxconn the agent check last advertised to the balancer (0: not asked yet)."}),
	}
	reg.MustRegister(s.checks, s.maxconn)
	return s
}

// Serve answers on ln until ctx ends, then closes ln and waits for the
// answers under way.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("agent listener %s: %w", ln.Addr(), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.answer(c)
		}()
	}
}

// answer writes the current state to c and closes it. HAProxy may first
// send its "agent-send" string; the answer does not depend on it, but it
// is read and dropped after the answer: closing a socket with unread data
// sends a reset, which may discard the answer before HAProxy reads it.
func (s *Server) answer(c net.Conn) {
	defer c.Close()
	st := s.state()
	_ = c.SetDeadline(time.Now().Add(writeTimeout))
	if _, err := c.Write([]byte(Line(st))); err != nil {
		s.log.Debug("agent check not answered", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	s.checks.Inc()
	s.maxconn.Set(float64(max(st.MaxConn, 1)))
	if tc, ok := c.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
		_, _ = io.Copy(io.Discard, io.LimitReader(c, 4096))
	}
}

// Inputs are what a host's capacity is computed from.
type Inputs struct {
	// Engine is the engine's state: ready, sleeping (vLLM's level 1,
	// woken in well under a second) or external (not managed) count as
	// warm; failed as failed; anything else (stopped, starting, stopping,
	// and deep_sleeping, level 2, whose wake reads the weights from disk:
	// seconds) as cold.
	Engine supervisor.State
	// Limit is the in-flight limit (chosen from the engine model, or
	// queue.max_inflight), in requests.
	Limit int
	// Rate is the engine's completion rate, requests per second.
	Rate float64
	// Tail is the engine time admission adds to a predicted wait; SLO
	// the latency objective (0: none, and MaxWait bounds the queue).
	Tail, SLO, MaxWait time.Duration
	// Balancers share the capacity: HAProxy adds up what each is told.
	Balancers int
}

// queueShare is the share of the queue admission would keep that the
// agent advertises (see Capacity).
const queueShare = 0.5

// Capacity is what the host can take at once:
//   - warm: the in-flight limit plus half of the queue admission would
//     keep, the requests that may wait for a slot and still be answered
//     within the objective, rate x (SLO - tail) (without an objective,
//     rate x max_wait); past that, HAProxy's "balance first" sends the
//     next request to the next host. With the whole queue, a host would
//     hold requests to the edge of the objective and refuse some of them
//     itself; with none, every burst would wait in HAProxy's queue, which
//     refuses only after its timeout (docs/scaling.md: a judgment, not a
//     measured optimum);
//   - cold: the in-flight limit, the requests that wait for the start
//     and then fill the engine; a cold host gets requests only when the
//     warm ones are full, and those requests wake it;
//   - failed: 1, so that one request at a time tries the engine again
//     (its refusal is retried on another host by HAProxy's retry-on 503).
//
// Each is divided among the balancers, and is at least 1: HAProxy reads
// maxconn:0 as no limit.
func Capacity(in Inputs) State {
	n := in.Limit
	switch in.Engine {
	case supervisor.Ready, supervisor.Sleeping, supervisor.External:
		room := in.MaxWait
		if in.SLO > 0 {
			room = max(in.SLO-in.Tail, 0)
		}
		n += int(queueShare * in.Rate * room.Seconds())
	case supervisor.Failed:
		n = 1
	}
	return State{MaxConn: max(n/max(in.Balancers, 1), 1)}
}
