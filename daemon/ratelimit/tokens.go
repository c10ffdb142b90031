package ratelimit

// Tokens per minute: one bucket per API key that sets a limit (the keys
// file's tpm=N), filled at N/60 tokens a second up to N. A request takes
// its prompt's tokens and its output cap when it is admitted, and is given
// back what it did not use when it ends (Return), as OpenAI counts a
// request's max_tokens against its tokens-per-minute limit. A request
// larger than the bucket is let through when the bucket is full, leaving
// it in debt, so that no request is refused for ever.

import (
	"sync"
	"time"
)

// ScopeTokens is the scope of a refusal by a key's tokens-per-minute
// limit.
const ScopeTokens = "tokens"

// Tokens holds the token buckets. Safe for concurrent use.
type Tokens struct {
	mu        sync.Mutex
	buckets   map[string]*tokenBucket
	lastSweep time.Time
}

type tokenBucket struct {
	perMinute int
	level     float64
	at        time.Time
	lastSeen  time.Time
}

// NewTokens returns an empty set of token buckets.
func NewTokens() *Tokens { return &Tokens{buckets: map[string]*tokenBucket{}} }

// bucket is client's bucket at now, filled up to now, made full if new or
// if its limit changed (a reload).
func (l *Tokens) bucket(now time.Time, client string, perMinute int) *tokenBucket {
	b := l.buckets[client]
	if b == nil || b.perMinute != perMinute {
		b = &tokenBucket{perMinute: perMinute, level: float64(perMinute), at: now}
		l.buckets[client] = b
	}
	if dt := now.Sub(b.at).Seconds(); dt > 0 {
		b.level = min(float64(perMinute), b.level+dt*float64(perMinute)/60)
		b.at = now
	}
	b.lastSeen = now
	return b
}

// Take takes n tokens from client's bucket of perMinute tokens a minute
// (perMinute 0: no limit, always allowed). When refused it returns the
// wait until the bucket holds n (or is full, for a request larger than
// it).
func (l *Tokens) Take(now time.Time, client string, perMinute, n int) (ok bool, retryAfter time.Duration) {
	if perMinute <= 0 || n <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.sweep(now)
	b := l.bucket(now, client, perMinute)
	need := float64(min(n, perMinute))
	if b.level < need {
		return false, time.Duration((need - b.level) / float64(perMinute) * 60 * float64(time.Second))
	}
	b.level -= float64(n)
	return true, 0
}

// Return gives n tokens taken earlier back to client's bucket, up to its
// size: what a request was charged and did not use. A negative n takes -n
// more: a request that used more than it was charged (a prompt longer
// than estimated).
func (l *Tokens) Return(now time.Time, client string, perMinute, n int) {
	if perMinute <= 0 || n == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucket(now, client, perMinute)
	b.level = min(float64(perMinute), b.level+float64(n))
}

// sweep forgets buckets unused for idleAfter (forgetIdle).
func (l *Tokens) sweep(now time.Time) {
	forgetIdle(l.buckets, func(b *tokenBucket) time.Time { return b.lastSeen }, now, &l.lastSweep)
}

// Len returns how many token buckets are held.
func (l *Tokens) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
