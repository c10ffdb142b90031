package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// engineTransport is the gateway's HTTP/1.1 client for the one engine.
//
// Why not http.Transport: it runs two goroutines per connection and hands
// every request and response between them over channels. For a gateway
// whose every request is one exchange with one local engine, that handoff
// was a large part of the CPU per request (docs/benchmarks.md). Here the
// caller's goroutine writes the request and reads the response itself,
// with the standard library's own serialisation (Request.Write,
// http.ReadResponse), on keep-alive connections kept in a LIFO pool.
//
// A connection serves one request at a time. It returns to the pool when
// its response body has been read to the end and neither side asked to
// close; a request whose context ends closes its connection, which is how
// the engine learns that the client left.
type engineTransport struct {
	dialer      net.Dialer
	idleTimeout time.Duration
	maxIdle     int
	// awaitEngine, when set, is asked after a refused connection, when
	// nothing of the request has reached any engine: it waits a little
	// and says whether to dial again (a managed engine restarting after a
	// crash), or not (the request fails as engine_unavailable).
	awaitEngine func(ctx context.Context, firstRefused time.Time) bool
	// responseTimeout, when set and positive, bounds each wait for the
	// engine: the request's writing and the answer's headers together, and
	// then every read of its body (engine.response_timeout).
	responseTimeout func() time.Duration

	mu    sync.Mutex
	idle  []*engineConn
	sweep *time.Timer // closes idle connections past idleTimeout while any are pooled
}

type engineConn struct {
	c        net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
}

func newEngineTransport() *engineTransport {
	return &engineTransport{
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		// Below uvicorn's 5 s keep-alive timeout (vLLM's server), so the
		// gateway rarely picks a connection the engine is closing.
		idleTimeout: 4 * time.Second,
		maxIdle:     1024,
	}
}

// get returns an idle connection to addr, or a new one.
func (t *engineTransport) get(ctx context.Context, addr string) (*engineConn, bool, error) {
	now := time.Now()
	t.mu.Lock()
	for len(t.idle) > 0 {
		ec := t.idle[len(t.idle)-1]
		t.idle = t.idle[:len(t.idle)-1]
		if now.Sub(ec.lastUsed) < t.idleTimeout {
			t.mu.Unlock()
			return ec, true, nil
		}
		_ = ec.c.Close()
	}
	t.mu.Unlock()
	c, err := t.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, false, err
	}
	return &engineConn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 8<<10)}, false, nil
}

func (t *engineTransport) put(ec *engineConn) {
	_ = ec.c.SetDeadline(time.Time{})
	ec.lastUsed = time.Now()
	t.mu.Lock()
	if len(t.idle) < t.maxIdle {
		t.idle = append(t.idle, ec)
		if t.sweep == nil {
			t.sweep = time.AfterFunc(t.idleTimeout, t.closeExpired)
		}
		t.mu.Unlock()
		return
	}
	t.mu.Unlock()
	_ = ec.c.Close()
}

// closeExpired closes the pooled connections idle for idleTimeout, so that
// a quiet gateway holds no descriptors for connections the engine has
// given up on, and runs again while any remain.
func (t *engineTransport) closeExpired() {
	now := time.Now()
	t.mu.Lock()
	var expired []*engineConn
	kept := t.idle[:0]
	for _, ec := range t.idle { // oldest first
		if now.Sub(ec.lastUsed) >= t.idleTimeout {
			expired = append(expired, ec)
		} else {
			kept = append(kept, ec)
		}
	}
	clear(t.idle[len(kept):])
	t.idle = kept
	t.sweep = nil
	if len(t.idle) > 0 {
		t.sweep = time.AfterFunc(t.idleTimeout-now.Sub(t.idle[0].lastUsed), t.closeExpired)
	}
	t.mu.Unlock()
	for _, ec := range expired {
		_ = ec.c.Close()
	}
}

// CloseIdleConnections closes the pooled connections.
func (t *engineTransport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	if t.sweep != nil {
		t.sweep.Stop()
		t.sweep = nil
	}
	t.mu.Unlock()
	for _, ec := range idle {
		_ = ec.c.Close()
	}
}

// RoundTrip implements http.RoundTripper.
//
// Nothing of the engine's answer has reached the client while RoundTrip
// runs, so a request may be sent again: on the next pooled connection when
// a reused one fails before any answer (the engine closed it while idle);
// once more, through awaitEngine, when a fresh connection fails the same
// way (the engine died or reset it: a crash, or a restart under way); and
// for as long as awaitEngine allows when the engine refuses connections,
// or resets one while it is being made (it is dying or restarting).
func (t *engineTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	var firstRefused time.Time
	await := func() bool {
		if t.awaitEngine == nil || ctx.Err() != nil {
			return false
		}
		if firstRefused.IsZero() {
			firstRefused = time.Now()
		}
		return t.awaitEngine(ctx, firstRefused)
	}
	resent := false
	for attempt := 0; ; attempt++ {
		ec, reused, err := t.get(ctx, hostPort(req))
		if err != nil {
			// A connection refused, or reset while it was being made (the
			// engine died with it in its accept queue: CI caught a request
			// dispatched in that instant answered 502), sent nothing.
			if (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)) && await() {
				continue
			}
			return nil, err
		}
		stop := context.AfterFunc(ctx, func() { _ = ec.c.Close() })
		resp, err := t.exchange(ec, req)
		if err != nil {
			stop()
			_ = ec.c.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			retry := false
			if req.GetBody != nil && staleConn(err) {
				switch {
				case reused && attempt < t.maxIdle:
					retry = true
				case !resent:
					resent = true
					retry = await()
				}
			}
			if retry {
				body, gerr := req.GetBody()
				if gerr == nil {
					req = req.Clone(ctx)
					req.Body = body
					continue
				}
			}
			return nil, err
		}
		resp.Body = &engineBody{rc: resp.Body, t: t, ec: ec, stop: stop, reuse: !resp.Close && !req.Close}
		return resp, nil
	}
}

// deadline bounds the next wait on ec by the response timeout.
func (t *engineTransport) deadline(ec *engineConn) {
	if t.responseTimeout != nil {
		if d := t.responseTimeout(); d > 0 {
			_ = ec.c.SetDeadline(time.Now().Add(d))
		}
	}
}

func (t *engineTransport) exchange(ec *engineConn, req *http.Request) (*http.Response, error) {
	t.deadline(ec)
	if err := req.Write(ec.bw); err != nil {
		return nil, err
	}
	if err := ec.bw.Flush(); err != nil {
		return nil, err
	}
	return http.ReadResponse(ec.br, req)
}

func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func hostPort(req *http.Request) string {
	host := req.URL.Host
	if req.URL.Port() == "" {
		// http only: config.EngineURL refuses https.
		return host + ":80"
	}
	return host
}

// engineBody returns the connection to the pool once the answer has been
// read to the end.
type engineBody struct {
	rc    io.ReadCloser
	t     *engineTransport
	ec    *engineConn
	stop  func() bool
	reuse bool
	done  bool
}

func (b *engineBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	b.t.deadline(b.ec)
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	}
	return n, err
}

func (b *engineBody) Close() error {
	if !b.done {
		// Not read to the end: the connection holds the rest of an answer.
		b.finish(false)
	}
	return nil
}

func (b *engineBody) finish(complete bool) {
	b.done = true
	// stop reports false when the request's context already ended (and
	// closed the connection).
	if b.stop() && complete && b.reuse {
		_ = b.rc.Close()
		b.t.put(b.ec)
		return
	}
	// Close the connection first: closing an unfinished body would
	// otherwise read the rest of the answer.
	_ = b.ec.c.Close()
	_ = b.rc.Close()
}
