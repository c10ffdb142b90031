// Package gateway owns llmlab's OpenAI-compatible front door: routes,
// request validation, the error envelope, authentication, rate limiting,
// admission through the queue, and the streaming proxy to the engine.
//
// A work request (POST /v1/completions, POST /v1/chat/completions) goes
// through these steps; each refusal is answered at once, OpenAI-shaped,
// with the request id, and counted in llmlab_requests_total:
//
//  1. Tell the engine's supervisor that work arrived (a stopped engine
//     starts while the body is still being read).
//  2. Authenticate the API key, if keys are configured (401).
//  3. Take a rate-limit token for the client (its key's name, else its
//     address: behind a proxy in gateway.trusted_proxies, the one the
//     proxy's X-Forwarded-For names, clientaddr.go) and for the gateway
//     (429).
//  4. Read the body within the size limit (413) and validate it (400, 404).
//  5. Take the request's tokens (its prompt's and its max_tokens) from its
//     key's tokens-per-minute bucket, if the key sets one (tpm= in the keys
//     file; 429); what it does not use goes back when it ends.
//  6. Wait for admission in the queue (429 queue full, 503 overloaded,
//     queue timeout or draining), where the key's weight sets its share
//     of the engine's work under contention (daemon/queue, fair.go).
//  7. Proxy to the engine, streaming server-sent events as they arrive, or
//     coalesce with compatible requests into one upstream request. An
//     engine that schedules by priority gets the request's class as its
//     "priority" (Config.EnginePriority, priority.go).
//
// Metrics: llmlab_requests_total, llmlab_request_duration_seconds,
// llmlab_queue_wait_seconds, llmlab_time_to_first_token_seconds,
// llmlab_dispatch_batch_size, llmlab_upstream_requests_total,
// the per-key series (llmlab_client_requests_total,
// llmlab_client_tokens_total, llmlab_client_usage_unreported_total,
// llmlab_client_refused_total, llmlab_client_engine_tokens_total,
// llmlab_client_queued_requests: the client label is a key's name for the
// keys file's first 32 keys, "other" past them, "anonymous" without keys,
// never a string a client sends) and the queue gauges
// (llmlab_queue_depth, llmlab_queue_sequences, llmlab_inflight_sequences,
// llmlab_inflight_limit, llmlab_queue_limit, llmlab_completion_rate).
package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/enginemodel"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/daemon/ratelimit"
	"github.com/llmlab/llmlab/daemon/recent"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

// Engine is the gateway's view of the engine's lifecycle.
type Engine interface {
	// Wake is called as soon as a work request's headers arrive.
	Wake()
	// State is the engine's lifecycle state.
	State() supervisor.State
}

// Config is what the gateway needs from the daemon's configuration.
type Config struct {
	EngineURL    *url.URL
	Limits       Limits
	MaxBodyBytes int64
	Queue        queue.Config
	Coalesce     bool
	RateLimit    ratelimit.Config
	AccessLog    bool
	// ClientTimeout bounds the client's sending of its request body (408
	// past it) and each write of the answer to it (a client that reads
	// nothing for that long is disconnected, its engine slot freed); 0:
	// no bound.
	ClientTimeout time.Duration
	// ResponseTimeout is the longest the engine may send nothing of an
	// answer (headers or body); 0: no bound.
	ResponseTimeout time.Duration
	// WaitUpdates: a streamed request that has waited this long in the
	// queue is answered 200 and told its place every as long (waitupdates.go;
	// 0: never).
	WaitUpdates time.Duration
	// TrustedProxies are the peers whose X-Forwarded-For names the client
	// (clientAddr); none: the peer is the client.
	TrustedProxies []netip.Prefix
	// EnginePriority: the engine schedules by each request's priority
	// (vLLM's --scheduling-policy priority), and every request carries its
	// class there as the body's "priority"; otherwise none is sent
	// (priority.go).
	EnginePriority bool
}

// settings is the part of the configuration that a reload swaps whole.
type settings struct {
	cfg  Config
	keys *auth.Keys
}

// Gateway serves the API. Create it with New.
type Gateway struct {
	log      *slog.Logger
	settings atomic.Pointer[settings]
	queue    *queue.Queue
	limiter  *ratelimit.Limiter
	// tokens holds the buckets of keys that limit their tokens per minute.
	tokens    *ratelimit.Tokens
	engine    Engine
	transport *engineTransport
	proxy     *httputil.ReverseProxy
	coalescer *coalescer
	metrics   *metrics
	recent    *recent.Window
	// lastWork is the latest work request's arrival, as nanoseconds after
	// epoch plus one (0: none yet): on the monotonic clock, which a jump of
	// the wall clock does not move.
	lastWork atomic.Int64
	epoch    time.Time
	// maxModelLen is the engine's context length as its /v1/models last
	// said (0: not known).
	maxModelLen atomic.Int64
}

// awaitEngine decides whether a request whose engine refused the
// connection (nothing of it sent) waits for the engine to come back: only a
// managed engine that is restarting (after a crash: the supervisor
// restarts it at once) or starting, for at most max_cold_start_wait from
// the first refusal. It wakes the engine and waits 100 ms before the next
// dial.
func (g *Gateway) awaitEngine(ctx context.Context, firstRefused time.Time) bool {
	wait := g.settings.Load().cfg.Queue.MaxColdStartWait
	switch g.engine.State() {
	case supervisor.Ready, supervisor.Starting, supervisor.Stopped, supervisor.Sleeping, supervisor.DeepSleeping:
	default: // failed, or an engine llmlab does not manage
		return false
	}
	if wait <= 0 || time.Since(firstRefused) >= wait {
		return false
	}
	g.engine.Wake()
	select {
	case <-time.After(100 * time.Millisecond):
		return true
	case <-ctx.Done():
		return false
	}
}

// New returns a gateway in front of cfg.EngineURL. keys may be nil (no
// authentication).
func New(cfg Config, keys *auth.Keys, engine Engine, warmup queue.Warmup, reg prometheus.Registerer, log *slog.Logger) *Gateway {
	g := &Gateway{log: log, engine: engine, limiter: ratelimit.New(cfg.RateLimit), tokens: ratelimit.NewTokens(), recent: recent.New(time.Now()), epoch: time.Now()}
	g.settings.Store(&settings{cfg: cfg, keys: keys})
	g.metrics = newMetrics(reg, func() queue.Stats { return g.queue.Stats() }, func() map[string]int { return g.queue.QueuedByFlow() },
		func() *auth.Keys { return g.settings.Load().keys }, cfg.Queue.SLO)
	g.queue = queue.New(cfg.Queue, warmup, g.metrics)
	g.transport = newEngineTransport()
	g.transport.awaitEngine = g.awaitEngine
	g.transport.responseTimeout = func() time.Duration { return g.settings.Load().cfg.ResponseTimeout }
	g.proxy = &httputil.ReverseProxy{
		Rewrite:   g.rewrite,
		Transport: g.transport,
		// FlushInterval 0: ReverseProxy flushes event streams and chunked
		// answers after every read from the engine, and lets answers of
		// known length go out in one write.
		BufferPool:     bufferPool{},
		ModifyResponse: g.modifyResponse,
		ErrorHandler:   g.proxyError,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	g.coalescer = newCoalescer(g)
	return g
}

// Reload applies a new configuration; connections and queued requests are
// kept. The engine URL is not changed by a reload.
func (g *Gateway) Reload(cfg Config, keys *auth.Keys) {
	old := g.settings.Load()
	cfg.EngineURL = old.cfg.EngineURL
	g.settings.Store(&settings{cfg: cfg, keys: keys})
	g.metrics.initClients()
	g.queue.SetConfig(cfg.Queue)
	if cfg.RateLimit != old.cfg.RateLimit {
		g.limiter.SetConfig(cfg.RateLimit)
	}
}

// Drain refuses queued and new work with 503, for shutdown. Requests in
// the engine run on.
func (g *Gateway) Drain() { g.queue.Drain() }

// SetEngineReady opens or closes the queue's gate to the engine.
// Connections pooled to an engine that stopped are useless, so they are
// closed when the gate closes.
func (g *Gateway) SetEngineReady(ready bool) {
	if !ready {
		g.transport.CloseIdleConnections()
	}
	g.queue.SetEngineReady(ready)
}

// SetMaxModelLen records the engine's context length (0: unknown), which
// the validator holds max_tokens to.
func (g *Gateway) SetMaxModelLen(n int) { g.maxModelLen.Store(int64(n)) }

// MaxModelLen is the engine's context length as last learned (0: unknown).
func (g *Gateway) MaxModelLen() int { return int(g.maxModelLen.Load()) }

// FailWaiting answers every queued request with 503.
func (g *Gateway) FailWaiting(reason, message string, retryAfter time.Duration) {
	g.queue.FailWaiting(queue.Reason(reason), message, retryAfter)
}

// Busy is the number of requests queued plus sequences in flight.
func (g *Gateway) Busy() int { return g.queue.Busy() }

// Inflight is the number of sequences in the engine.
func (g *Gateway) Inflight() int { return g.queue.Inflight() }

// Model is the engine model admission judges with.
func (g *Gateway) Model() *enginemodel.Model { return g.queue.Model() }

// Level is the quantile of the engine model's spread admission predicts
// at.
func (g *Gateway) Level() float64 { return g.queue.Level() }

// RestoreLevel sets a level learned in an earlier run.
func (g *Gateway) RestoreLevel(level float64) { g.queue.RestoreLevel(level) }

// LastWork is when the latest work request arrived (zero if none yet).
func (g *Gateway) LastWork() time.Time {
	if n := g.lastWork.Load(); n != 0 {
		return g.epoch.Add(time.Duration(n - 1))
	}
	return time.Time{}
}

// PriorityHeader asks for a priority class: "batch" lowers a request's
// priority; "interactive" (the default) cannot raise a batch key's.
const PriorityHeader = "X-Llmlab-Priority"

// QueueWaitHeader carries, on every answer that reached the engine, the
// seconds the request waited in llmlab's queue before it was sent.
const QueueWaitHeader = "X-Llmlab-Queue-Wait"

// SetLimit sets the queue's in-flight limit.
func (g *Gateway) SetLimit(n int) { g.queue.SetLimit(n) }

// SampleProgress teaches the engine model the time per output token the
// running requests' streams show now (queue.SampleProgress).
func (g *Gateway) SampleProgress(now time.Time) { g.queue.SampleProgress(now) }

// SetHold holds (true) or resumes dispatching to a saturated engine.
func (g *Gateway) SetHold(hold bool) { g.queue.SetHold(hold) }

// QueueStats returns a snapshot of the queue.
func (g *Gateway) QueueStats() queue.Stats { return g.queue.Stats() }

// CloseIdle closes idle upstream connections.
func (g *Gateway) CloseIdle() { g.transport.CloseIdleConnections() }

// Handler returns the API's routes.
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) { g.serveWork(w, r, routeCompletions) })
	mux.HandleFunc("/v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { g.serveWork(w, r, routeChat) })
	mux.HandleFunc("/v1/models", g.serveModels)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, failure{status: http.StatusNotFound, kind: typeInvalid, code: "unknown_url",
			msg: "Unknown request URL: " + r.Method + " " + r.URL.Path}, requestID(w, r))
	})
	return mux
}

// Recent summarises the last minute's answers against the latency
// objective.
func (g *Gateway) Recent() recent.Summary {
	return g.recent.Summary(time.Now(), g.settings.Load().cfg.Queue.SLO)
}

// finish counts the request and writes its access-log line.
func (g *Gateway) finish(rec *recorder, st *reqState) {
	rec.disarm()
	if rec.writeErr != nil && (st.outcome == "" || st.outcome == "ok") {
		// The client left, or read nothing for gateway.client_timeout.
		st.outcome, st.status = "cancelled", 499
		rec.status = 499
	}
	status := rec.status
	if status == 0 {
		status = st.status
	}
	if status == 0 {
		status = http.StatusOK
	}
	if st.outcome == "" {
		switch {
		case status < 400:
			st.outcome = "ok"
		case status < 500:
			st.outcome = "invalid"
		default:
			st.outcome = "engine_error"
		}
	}
	elapsed := time.Since(st.start)
	g.recent.Add(time.Now(), st.outcome, elapsed)
	m := g.metrics
	m.requests.WithLabelValues(st.route, st.outcome, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(st.route, result(st.outcome, status)).Observe(elapsed.Seconds())
	client := g.settings.Load().keys.Label(st.key)
	m.clientReqs.WithLabelValues(client).Inc()
	if result(st.outcome, status) == "refused" {
		m.clientRefused.WithLabelValues(client).Inc()
	}
	m.classReqs.WithLabelValues(queue.ClassName(st.class), st.outcome).Inc()
	if st.ttft > 0 {
		m.ttft.WithLabelValues(st.route).Observe(st.ttft.Seconds())
	}
	// An answer without usage (vLLM streams report it only when asked:
	// docs/engine-contract.md) is counted, not silently left out.
	unreported := st.outcome == "ok" && st.prompt == 0 && st.complete == 0
	if unreported {
		m.unreported.WithLabelValues(client).Inc()
	} else if st.prompt > 0 || st.complete > 0 {
		m.clientTokens.WithLabelValues(client, "prompt").Add(float64(st.prompt))
		m.clientTokens.WithLabelValues(client, "completion").Add(float64(st.complete))
	}
	g.returnTokens(st)
	if !g.settings.Load().cfg.AccessLog {
		return
	}
	attrs := []slog.Attr{
		slog.String("request_id", st.id),
		slog.String("client", st.client),
		slog.String("remote", st.remote),
		slog.String("class", queue.ClassName(st.class)),
		slog.String("route", st.route),
		slog.Int("status", status),
		slog.String("outcome", st.outcome),
		slog.Duration("queue_wait", st.waited),
		slog.Duration("duration", elapsed),
	}
	if st.reason != "" {
		attrs = append(attrs, slog.String("reason", st.reason))
	}
	if st.ttft > 0 {
		attrs = append(attrs, slog.Duration("ttft", st.ttft))
	}
	if st.prompt > 0 || st.complete > 0 {
		attrs = append(attrs, slog.Int("prompt_tokens", st.prompt), slog.Int("completion_tokens", st.complete))
	} else if unreported {
		attrs = append(attrs, slog.String("usage", "unreported"))
	}
	g.log.LogAttrs(context.Background(), slog.LevelInfo, "request", attrs...)
}

// returnTokens settles a key's tokens-per-minute bucket with what st used:
// all of its charge comes back if it never reached the engine; otherwise
// the difference between its charge and the usage reported (taking more
// where the usage is larger: a prompt longer than estimated); without
// usage, what it used is not known, and the charge stands.
func (g *Gateway) returnTokens(st *reqState) {
	if st.tpmTaken == 0 {
		return
	}
	used := st.tpmTaken
	switch {
	case !st.dispatched:
		used = 0
	case st.prompt > 0 || st.complete > 0:
		used = st.prompt + st.complete
	}
	g.tokens.Return(time.Now(), st.key, st.tpm, st.tpmTaken-used)
}

// serveModels answers GET /v1/models from the engine, or from the
// configuration when the engine does not answer.
func (g *Gateway) serveModels(w http.ResponseWriter, r *http.Request) {
	id := requestID(w, r)
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		writeError(w, failure{status: http.StatusMethodNotAllowed, kind: typeInvalid, code: "method_not_allowed", msg: "use GET"}, id)
		return
	}
	s := g.settings.Load()
	if _, err := s.keys.Authenticate(r); err != nil {
		writeError(w, failure{status: http.StatusUnauthorized, kind: typeAuth, code: "invalid_api_key", msg: err.Error()}, id)
		return
	}
	writeModels(w, s.cfg.Limits.Models)
}

// recorder remembers the status written through it.
type recorder struct {
	http.ResponseWriter
	status int
	// early: the status (200) and the stream's headers went out with the
	// first queue update (waitupdates.go); held keeps the body of an
	// engine's error answer after that, to send it as an event.
	early, convert bool
	held           []byte
	// rc reaches the connection's deadlines; timeout, when set, bounds
	// each write to the client.
	rc       *http.ResponseController
	timeout  time.Duration
	deadline bool  // a write deadline is set and must be cleared
	writeErr error // the first failed write: the client is gone or stalled
}

// armWrite bounds the next write to the client.
func (r *recorder) armWrite() {
	if r.timeout > 0 {
		_ = r.rc.SetWriteDeadline(time.Now().Add(r.timeout))
		r.deadline = true
	}
}

// disarm clears the write deadline, which would otherwise outlive the
// request on a keep-alive connection.
func (r *recorder) disarm() {
	if r.deadline {
		_ = r.rc.SetWriteDeadline(time.Time{})
		r.deadline = false
	}
}

func (r *recorder) WriteHeader(code int) {
	if r.early {
		// The status went out with the first queue update: the engine's
		// is not sent again, and an error's body becomes an event.
		if code != http.StatusOK {
			r.convert, r.status = true, code
		}
		return
	}
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.convert {
		if len(r.held) < maxHeld {
			r.held = append(r.held, p[:min(len(p), maxHeld-len(r.held))]...)
		}
		return len(p), nil
	}
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.armWrite()
	n, err := r.ResponseWriter.Write(p)
	if err != nil && r.writeErr == nil {
		r.writeErr = err
	}
	return n, err
}

// Flush forwards to the client connection, so streams are not buffered.
func (r *recorder) Flush() {
	r.armWrite()
	if err := r.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) && r.writeErr == nil {
		r.writeErr = err
	}
}

// FlushError is Flush with its error, for http.ResponseController.
func (r *recorder) FlushError() error {
	r.Flush()
	return r.writeErr
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
