package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/connlimit"
	"github.com/llmlab/llmlab/daemon/sd"
)

// listeners are the daemon's sockets. They are opened before anything is
// built, so that an address in use fails the start.
type listeners struct {
	// api are the socket-activated "http" listeners, or the daemon's own
	// on gateway.listen; activated says which.
	api       []net.Listener
	activated bool
	// metrics serves /metrics, /healthz and /status (nil: metrics.listen
	// is ""); agent answers HAProxy's agent check (nil:
	// balancer.agent_listen is ""). Neither is ever socket-activated.
	metrics, agent net.Listener
}

// openListeners opens the daemon's sockets. The API may listen beyond
// loopback without API keys only when gateway.allow_public_without_keys
// says so.
func openListeners(cfg *config.Config, keys *auth.Keys, log *slog.Logger) (*listeners, error) {
	apiLns, activated, err := apiListeners(cfg)
	if err != nil {
		return nil, err
	}
	if err := checkPublic(apiLns, cfg, keys, log); err != nil {
		closeAll(apiLns)
		return nil, err
	}
	lns := &listeners{api: apiLns, activated: activated}
	if cfg.Metrics.Listen != "" {
		lns.metrics, err = net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			closeAll(apiLns)
			return nil, fmt.Errorf("metrics listener: %w", err)
		}
	}
	if cfg.Balancer.AgentListen != "" {
		// Like /metrics, never socket-activated: a check must not start
		// llmlabd, and must fail while it has exited (HAProxy then keeps
		// the last answer).
		lns.agent, err = net.Listen("tcp", cfg.Balancer.AgentListen)
		if err != nil {
			closeAll(apiLns)
			if lns.metrics != nil {
				lns.metrics.Close()
			}
			return nil, fmt.Errorf("balancer agent listener: %w", err)
		}
	}
	return lns, nil
}

// checkPublic refuses a public API without API keys, unless
// gateway.allow_public_without_keys accepts the risk (then each listener
// is logged). An API listener is public when it listens beyond loopback,
// or when gateway.trusted_proxies says a reverse proxy fronts it: then a
// loopback listener is as public as the proxy makes it, which llmlabd
// cannot see. The start and every reload ask it: a reload may remove the
// keys, withdraw the permission or name a proxy.
func checkPublic(api []net.Listener, cfg *config.Config, keys *auth.Keys, log *slog.Logger) error {
	if keys.Enabled() {
		return nil
	}
	for _, l := range api {
		switch {
		case !config.IsLoopback(l.Addr().String()):
			if !cfg.Gateway.AllowPublicWithoutKeys {
				return fmt.Errorf("the API listens on %s, beyond loopback, without API keys: set auth.keys_file, or gateway.allow_public_without_keys = true to accept the risk", l.Addr())
			}
			log.Warn("api listens beyond loopback without api keys", "addr", l.Addr().String())
		case len(cfg.Gateway.TrustedProxies) > 0:
			if !cfg.Gateway.AllowPublicWithoutKeys {
				return fmt.Errorf("the API listens on %s behind a reverse proxy (gateway.trusted_proxies = %v), as public as the proxy makes it, without API keys: set auth.keys_file, or gateway.allow_public_without_keys = true to accept the risk", l.Addr(), cfg.Gateway.TrustedProxies)
			}
			log.Warn("api behind a reverse proxy without api keys", "addr", l.Addr().String(), "trusted_proxies", fmt.Sprint(cfg.Gateway.TrustedProxies))
		}
	}
	return nil
}

// apiListeners returns the socket-activated "http" listeners, or one of
// the daemon's own on gateway.listen.
func apiListeners(cfg *config.Config) ([]net.Listener, bool, error) {
	lns, err := sd.Listeners("http")
	if err != nil {
		return nil, false, err
	}
	if len(lns) > 0 {
		return lns, true, nil
	}
	l, err := net.Listen("tcp", cfg.Gateway.Listen)
	if err != nil {
		return nil, false, fmt.Errorf("api listener: %w", err)
	}
	return []net.Listener{l}, false, nil
}

func serve(srv *http.Server, l net.Listener) error {
	err := srv.Serve(l)
	// drain closes the listeners itself (net.ErrClosed) before it shuts
	// the server down (http.ErrServerClosed).
	if !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serving on %s: %w", l.Addr(), err)
	}
	return nil
}

// addr is l's address ("" for none).
func addr(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

func closeAll(ls []net.Listener) {
	for _, l := range ls {
		_ = l.Close()
	}
}

// buildServers makes the API's and the metrics listener's HTTP servers,
// and caps the API's connections at gateway.max_connections, read at
// every accept (a reload changes it). Go's profiler is served while
// metrics.pprof is on, read at each request (a reload changes it too).
func (d *daemon) buildServers(clientTimeout time.Duration) {
	apiMux := http.NewServeMux()
	apiMux.Handle("/", d.gw.Handler())
	apiMux.HandleFunc("GET /healthz", serveHealthz)
	apiMux.HandleFunc("GET /status", d.st.serve)
	d.conns = newConnTracker()
	// gateway.client_timeout bounds the headers too (at start; the body's
	// bound follows reloads).
	d.apiSrv = &http.Server{Handler: apiMux, ReadHeaderTimeout: clientTimeout, IdleTimeout: 120 * time.Second,
		ConnState: d.conns.track, ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelDebug)}

	metricsMux := http.NewServeMux()
	metricsMux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	metricsMux.HandleFunc("GET /healthz", serveHealthz)
	metricsMux.HandleFunc("GET /status", d.st.serve)
	ifPprof := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !d.st.cfgNow().Metrics.Pprof {
				http.NotFound(w, r)
				return
			}
			h(w, r)
		}
	}
	metricsMux.HandleFunc("/debug/pprof/", ifPprof(pprof.Index))
	metricsMux.HandleFunc("/debug/pprof/profile", ifPprof(pprof.Profile))
	metricsMux.HandleFunc("/debug/pprof/symbol", ifPprof(pprof.Symbol))
	metricsMux.HandleFunc("/debug/pprof/trace", ifPprof(pprof.Trace))
	d.metricsSrv = &http.Server{Handler: metricsMux, ReadHeaderTimeout: 10 * time.Second}

	connMetrics := connlimit.NewMetrics(d.reg)
	maxConns := func() int64 { return int64(d.st.cfgNow().Gateway.MaxConnections) }
	for i, l := range d.lns.api {
		d.lns.api[i] = connlimit.New(l, maxConns, connMetrics)
	}
}

// listen serves the API and metrics listeners; a listener's failure goes
// to d.errc, and d.accepting is closed once every API listener's Serve has
// returned (no connection is then between its accept and its first
// ConnState).
func (d *daemon) listen() {
	d.errc = make(chan error, len(d.lns.api)+1)
	d.accepting = make(chan struct{})
	var serving sync.WaitGroup
	for _, l := range d.lns.api {
		serving.Go(func() { d.errc <- serve(d.apiSrv, l) })
	}
	go func() { serving.Wait(); close(d.accepting) }()
	if d.lns.metrics != nil {
		go func() { d.errc <- serve(d.metricsSrv, d.lns.metrics) }()
	}
	addrs := make([]string, len(d.lns.api))
	for i, l := range d.lns.api {
		addrs[i] = l.Addr().String()
	}
	cfg := d.st.cfgNow()
	d.log.Info("serving", "api", strings.Join(addrs, ","), "socket_activated", d.lns.activated, "metrics", addr(d.lns.metrics),
		"agent", addr(d.lns.agent), "engine", cfg.Engine.URL.String(), "config", cfg.Path, "api_keys", d.keys.Len())
}

func serveHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, "{\"status\":\"ok\"}\n")
}
