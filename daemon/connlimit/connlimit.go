// Package connlimit caps the connections a listener holds open at once.
// Past the cap, a new connection is answered at once with an HTTP 503, an
// OpenAI-shaped error and Retry-After, and closed: a flood of idle
// connections costs llmlabd a file descriptor for a moment each, never its
// whole table, and a client learns why rather than hanging in the
// kernel's backlog.
//
// Config key: gateway.max_connections. Metrics: llmlab_connections_open,
// llmlab_connections_refused_total.
package connlimit

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const body = `{"error":{"message":"llmlabd holds its maximum of open connections (gateway.max_connections); retry shortly.","type":"service_unavailable","param":null,"code":"too_many_connections"}}`

// refusal is the whole answer to a connection past the cap.
var refusal = []byte("HTTP/1.1 503 Service Unavailable\r\n" +
	"Content-Type: application/json\r\n" +
	"Retry-After: 1\r\n" +
	"Connection: close\r\n" +
	"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)

// Metrics counts what a Listener does; share one across listeners.
type Metrics struct {
	open    atomic.Int64
	refused prometheus.Counter
}

// NewMetrics registers the connection series on reg (nil: none).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{refused: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "llmlab_connections_refused_total",
		Help: "API connections answered 503 and closed because gateway.max_connections were open.",
	})}
	if reg != nil {
		reg.MustRegister(m.refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "llmlab_connections_open",
			Help: "API connections open, idle keep-alive ones included.",
		}, func() float64 { return float64(m.open.Load()) }))
	}
	return m
}

// Open is the number of connections open.
func (m *Metrics) Open() int64 { return m.open.Load() }

// Listener caps the connections of the listener it wraps.
type Listener struct {
	net.Listener
	max     func() int64
	metrics *Metrics
}

// New wraps l; max is read at every accept, so a reload can change it.
func New(l net.Listener, max func() int64, m *Metrics) *Listener {
	return &Listener{Listener: l, max: max, metrics: m}
}

// Accept returns the next connection within the cap; those past it are
// answered and closed here.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.metrics.open.Add(1) > l.max() {
			l.metrics.open.Add(-1)
			l.metrics.refused.Inc()
			go refuse(c)
			continue
		}
		return &conn{Conn: c, m: l.metrics}, nil
	}
}

// refuse answers a connection past the cap, without waiting long for a
// client that does not read.
func refuse(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(time.Second))
	_, _ = c.Write(refusal)
	_ = c.Close()
}

type conn struct {
	net.Conn
	m    *Metrics
	once sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() { c.m.open.Add(-1) })
	return c.Conn.Close()
}
