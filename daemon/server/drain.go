package server

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/llmlab/llmlab/daemon/gateway"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

// shutdown ends serving, on SIGTERM or an exit on idle: the drain of the
// package doc, then the engine stopped once nothing uses it, and what was
// learned saved.
func (d *daemon) shutdown() error {
	err := drain(d.log, d.gw, d.apiSrv, d.metricsSrv, d.lns.api, d.accepting, d.conns, d.st.cfgNow().Gateway.ShutdownGrace)
	d.stopSup() // stop the engine once nothing uses it
	<-d.supDone
	d.learned.save()
	return err
}

// idleLongEnough reports whether a socket-activated daemon may exit:
// nothing queued or in flight, the engine stopped (or not ours), and no
// work for the timeout.
func idleLongEnough(now, started time.Time, gw *gateway.Gateway, engine gateway.Engine, timeout time.Duration) bool {
	if timeout <= 0 || gw.Busy() > 0 {
		return false
	}
	if s := engine.State(); s != supervisor.Stopped && s != supervisor.External {
		return false
	}
	last := gw.LastWork()
	if last.Before(started) {
		last = started
	}
	return now.Sub(last) >= timeout
}

// drainer is the gateway as a drain sees it.
type drainer interface {
	QueueStats() queue.Stats
	// Drain answers the queued requests 503 and refuses new ones.
	Drain()
	// CloseIdle closes the idle connections to the engine.
	CloseIdle()
}

// drain implements the shutdown sequence of the package doc.
//
// It does not start with http.Server.Shutdown: a server shutting down
// closes, unanswered, a connection whose request it reads after Shutdown
// began, and a client that connected a moment before (to llmlabd, or to
// systemd's socket while llmlabd held it) would get nothing back. So the
// listeners close first, keep-alive ends, and the requests on connections
// already accepted are served (or refused with 503 if they would queue)
// before Shutdown closes what is left idle. A connection accepted just
// before the listeners closed is tracked only once its Serve loop has
// called the ConnState hook, so the wait for busy connections begins when
// every Serve has returned (accepting closed): otherwise Shutdown could
// begin before that connection is seen, and close it unanswered.
func drain(log *slog.Logger, gw drainer, apiSrv, metricsSrv *http.Server, apiLns []net.Listener, accepting <-chan struct{}, conns *connTracker, grace time.Duration) error {
	s := gw.QueueStats()
	log.Info("draining", "queued", s.Queued, "inflight_sequences", s.Inflight, "grace", grace)
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	apiSrv.SetKeepAlivesEnabled(false)
	for _, l := range apiLns {
		_ = l.Close()
	}
	gw.Drain()
	select {
	case <-accepting:
	case <-ctx.Done():
	}
	for conns.busy(time.Now()) > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := apiSrv.Shutdown(ctx); err != nil {
		log.Warn("grace period over; closing remaining connections", "grace", grace)
		_ = apiSrv.Close()
	}
	_ = metricsSrv.Close()
	gw.CloseIdle()
	log.Info("stopped")
	return nil
}

// connTracker follows the API's connections, so that a drain can wait
// for the requests on those already accepted.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]connState
}

type connState struct {
	state http.ConnState
	since time.Time
}

func newConnTracker() *connTracker { return &connTracker{conns: map[net.Conn]connState{}} }

// track is the server's ConnState hook.
func (t *connTracker) track(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch s {
	case http.StateClosed, http.StateHijacked:
		delete(t.conns, c)
	default:
		t.conns[c] = connState{state: s, since: time.Now()}
	}
}

// newConnPatience is how long a drain waits for a new connection's first
// request, as net/http's Shutdown does.
const newConnPatience = 5 * time.Second

// busy counts the connections with a request in progress, or new ones
// whose first request may still come.
func (t *connTracker) busy(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.conns {
		if c.state == http.StateActive || c.state == http.StateNew && now.Sub(c.since) < newConnPatience {
			n++
		}
	}
	return n
}
