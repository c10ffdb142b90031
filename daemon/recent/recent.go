// Package recent keeps the last minute of the gateway's answers, for the
// operator's summary (GET /status, llmlab status): requests per second,
// the share answered within the latency objective, the 50th and 95th
// percentiles of the answered requests' latency, and counts by outcome
// (refusals by reason). Prometheus keeps the long view; this is the one
// an operator reads at a glance without a query language.
package recent

import (
	"slices"
	"sync"
	"time"
)

// Span is how far back the window reaches.
const Span = time.Minute

// maxSamples bounds the latencies kept: past that many answers in a
// minute, the percentiles are those of the latest maxSamples.
const maxSamples = 8192

// Window is the last Span of answers. It is safe for concurrent use.
type Window struct {
	mu      sync.Mutex
	started time.Time
	// seconds holds the outcome counts of each of the last Span's
	// seconds, indexed by the second since started (on the monotonic
	// clock, so that a jump of the wall clock neither empties nor
	// doubles the window) modulo its length.
	seconds [60]second
	samples [maxSamples]sample // ring of answered requests' latencies
	next    int
	n       int
}

type second struct {
	n        int64 // seconds since started
	outcomes map[string]int
}

type sample struct {
	at time.Time
	d  time.Duration
}

// New returns an empty window starting now.
func New(now time.Time) *Window { return &Window{started: now} }

// Add records one answer: its outcome ("ok" for an answered request, else
// the refusal's reason or the error's kind) and its latency.
func (w *Window) Add(now time.Time, outcome string, latency time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	u := w.second(now)
	s := &w.seconds[u%int64(len(w.seconds))]
	if s.n != u || s.outcomes == nil {
		s.n, s.outcomes = u, map[string]int{}
	}
	s.outcomes[outcome]++
	if outcome == "ok" {
		w.samples[w.next] = sample{at: now, d: latency}
		w.next = (w.next + 1) % len(w.samples)
		w.n = min(w.n+1, len(w.samples))
	}
}

// second is now's second since the window started. now.Sub reads the
// monotonic clock when both times carry it, as time.Now's do.
func (w *Window) second(now time.Time) int64 {
	return int64(max(now.Sub(w.started), 0) / time.Second)
}

// Summary is the window read at one moment.
type Summary struct {
	// Seconds is the span covered: Span, or less just after start.
	Seconds float64 `json:"seconds"`
	// Requests counts every answer; PerSecond is Requests over Seconds.
	Requests  int     `json:"requests"`
	PerSecond float64 `json:"requests_per_second"`
	// OK counts the answered requests; Within those answered within the
	// objective, and Goodput is Within per second.
	OK      int     `json:"ok"`
	Within  int     `json:"within_slo"`
	Goodput float64 `json:"goodput_per_second"`
	// P50 and P95 are percentiles of the answered requests' latency, in
	// seconds (0 when none was answered).
	P50 float64 `json:"p50_seconds"`
	P95 float64 `json:"p95_seconds"`
	// Outcomes counts the answers by outcome.
	Outcomes map[string]int `json:"outcomes"`
}

// Summary reads the window at now; slo is the latency objective that
// Within counts against (0: every answered request counts).
func (w *Window) Summary(now time.Time, slo time.Duration) Summary {
	w.mu.Lock()
	defer w.mu.Unlock()
	sum := Summary{Outcomes: map[string]int{}}
	sum.Seconds = min(now.Sub(w.started), Span).Seconds()
	from := now.Add(-Span)
	last := w.second(now)
	for _, s := range w.seconds {
		if s.outcomes == nil || s.n <= last-int64(len(w.seconds)) || s.n > last {
			continue
		}
		for o, c := range s.outcomes {
			sum.Outcomes[o] += c
			sum.Requests += c
		}
	}
	var lat []time.Duration
	for i := range w.n {
		s := w.samples[(w.next-1-i+len(w.samples))%len(w.samples)]
		if !s.at.After(from) {
			break
		}
		lat = append(lat, s.d)
		if slo == 0 || s.d <= slo {
			sum.Within++
		}
	}
	sum.OK = sum.Outcomes["ok"]
	if sum.Seconds > 0 {
		sum.PerSecond = float64(sum.Requests) / sum.Seconds
		sum.Goodput = float64(sum.Within) / sum.Seconds
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		sum.P50 = lat[(len(lat)-1)*50/100].Seconds()
		sum.P95 = lat[(len(lat)-1)*95/100].Seconds()
	}
	return sum
}
