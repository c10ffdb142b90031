// Package ratelimit owns the request-rate token buckets: one per client (the
// API key's name when keys are configured, else the client's address: the
// peer's, or behind gateway.trusted_proxies the one the proxy names) and one
// for the whole gateway. A zero rate turns a bucket off. Beside them,
// Tokens holds the buckets of API keys that limit their tokens per minute
// (tokens.go).
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Config sets the buckets, in requests per second.
type Config struct {
	Rate        float64
	Burst       int
	GlobalRate  float64
	GlobalBurst int
}

// Scopes of a refusal.
const (
	ScopeClient = "client"
	ScopeGlobal = "global"
)

// idleAfter is how long an unused client bucket is kept.
const idleAfter = 10 * time.Minute

// Limiter is safe for concurrent use.
type Limiter struct {
	mu        sync.Mutex
	cfg       Config
	global    *rate.Limiter
	clients   map[string]*client
	lastSweep time.Time
}

type client struct {
	lim      *rate.Limiter
	lastSeen time.Time
}

// New returns a limiter with the given buckets.
func New(cfg Config) *Limiter {
	l := &Limiter{clients: map[string]*client{}}
	l.SetConfig(cfg)
	return l
}

// SetConfig replaces the buckets' rates; client buckets start full again.
func (l *Limiter) SetConfig(cfg Config) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cfg = cfg
	l.global = nil
	if cfg.GlobalRate > 0 {
		l.global = rate.NewLimiter(rate.Limit(cfg.GlobalRate), cfg.GlobalBurst)
	}
	clear(l.clients)
}

// Allow takes a token for the client at now. When refused it returns the
// wait before a token is available and which bucket refused.
func (l *Limiter) Allow(now time.Time, clientID string) (ok bool, retryAfter time.Duration, scope string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var cr *rate.Reservation
	if l.cfg.Rate > 0 {
		c := l.clients[clientID]
		if c == nil {
			c = &client{lim: rate.NewLimiter(rate.Limit(l.cfg.Rate), l.cfg.Burst)}
			l.clients[clientID] = c
		}
		c.lastSeen = now
		cr = c.lim.ReserveN(now, 1)
		if d := cr.DelayFrom(now); d > 0 {
			cr.CancelAt(now)
			l.sweep(now)
			return false, d, ScopeClient
		}
	}
	if l.global != nil {
		gr := l.global.ReserveN(now, 1)
		if d := gr.DelayFrom(now); d > 0 {
			gr.CancelAt(now)
			if cr != nil {
				cr.CancelAt(now)
			}
			return false, d, ScopeGlobal
		}
	}
	l.sweep(now)
	return true, 0, ""
}

// sweep forgets clients idle for a while, so the map stays bounded by the
// number of recently active clients.
func (l *Limiter) sweep(now time.Time) {
	forgetIdle(l.clients, func(c *client) time.Time { return c.lastSeen }, now, &l.lastSweep)
}

// forgetIdle deletes, at most once a minute (last is when it last ran),
// the entries of m not seen for idleAfter: a bucket left alone that long is
// full again, which a new one is too.
func forgetIdle[V any](m map[string]V, seen func(V) time.Time, now time.Time, last *time.Time) {
	if now.Sub(*last) < time.Minute {
		return
	}
	*last = now
	for id, v := range m {
		if now.Sub(seen(v)) > idleAfter {
			delete(m, id)
		}
	}
}

// Clients returns how many client buckets are held.
func (l *Limiter) Clients() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.clients)
}
