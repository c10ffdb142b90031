package enginemodel

import (
	"math"
	"time"
)

// Limit is the in-flight limit the model chooses, within [lo, hi]: the
// largest concurrency at which the recent typical request's tail time
// stays within target (0: no target), no more than twice and one the
// most requests the engine was seen to run at once (FirstToken), and, where requests
// were seen to wait inside the engine past some concurrency (Knee), no
// more than a quarter and one beyond it: a request or two ready beyond the slots
// keeps a slot engine busy through the turnaround between one answer and
// the next dispatch, and more would only wait inside the engine, where
// llmlab can neither order nor refuse them.
func (m *Model) Limit(target time.Duration, lo, hi int, q float64) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	lo, hi = max(lo, 1), max(hi, 1)
	if lo > hi {
		lo = hi
	}
	prompt, out := m.typicalLocked()
	limit := hi
	if target > 0 {
		t := target.Seconds()
		spread := m.spreadLocked(q)
		limit = 0
		for n := 1; n <= hi; n++ {
			if m.meanLocked(float64(n), prompt, out)*spread > t {
				break
			}
			limit = n
		}
	}
	if k, ok := m.kneeLocked(); ok {
		limit = min(limit, int(math.Ceil(float64(k)*1.25))+1)
	}
	// Never far past what has been seen: twice and one the highest
	// concurrency the engine was seen to run (FirstToken; lo before any). A limit
	// read off the line far past the data sent a 4-slot Ollama 101
	// requests at once, most of them into its own queue, before the knee
	// could be seen; doubling each time the engine starts a request at a
	// new high sends a slot engine at most twice its slots before the knee
	// shows, and lets a batching engine meet a burst within a first token
	// or two (growing by a quarter refused requests in the bursts of a
	// fresh llmlabd at the engine's own rate: docs/benchmarks.md).
	limit = min(limit, max(lo, int(math.Ceil(2*m.nHi))+1))
	return min(max(limit, lo), hi)
}

// Knee is the concurrency past which requests were seen to wait inside
// the engine: ok is false when none was.
func (m *Model) Knee() (int, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.kneeLocked()
}

// kneeLocked finds where the time to first token turns from flat (or a
// step's growth per sequence, as a continuous batch adds) to rising by at
// least queueShare of a request's time over the slots for each sequence
// more: the signature of requests queued inside the engine.
//
// A knee found holds for kneeHold after it was last found: the fit of a
// few bins near the limit can lose it for a second or two (the limit
// kept short of it leaves little fresh evidence past it), and each time
// the limit jumped to the line's value and sent a 4-slot Ollama 19 to 71
// requests at once (make test-engines). An engine that gained slots shows
// a knee further out, which replaces it at once.
func (m *Model) kneeLocked() (int, bool) {
	now := time.Now()
	s, _, d, ok := m.knees.knee()
	if ok && s >= 1 {
		prompt, out := m.typicalLocked()
		if d >= queueShare*m.aloneLocked(float64(s), prompt, out)/float64(s) {
			m.lastKnee, m.kneeAt = s, now
			return s, true
		}
	}
	if m.lastKnee > 0 && now.Sub(m.kneeAt) < kneeHold {
		return m.lastKnee, true
	}
	return 0, false
}
