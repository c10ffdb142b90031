package bench

import (
	"math"
	"slices"
	"strconv"
	"time"
)

// SLO is the service-level objective a run is judged by.
type SLO struct {
	// Latency is the per-request end-to-end bound for goodput, and the
	// bound on p95 for the pass/fail line.
	Latency      time.Duration
	MaxErrorRate float64
}

// Percentiles of a distribution, exact over all samples (nearest rank).
type Percentiles struct {
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
	P95 time.Duration `json:"p95"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
}

// Summary is what a run measured, warm-up excluded.
type Summary struct {
	Requests    int     `json:"requests"`
	OK          int     `json:"ok"`
	Refused     int     `json:"refused"` // 429 and 503
	Failed      int     `json:"failed"`  // other statuses and transport errors
	Seconds     float64 `json:"seconds"`
	RPS         float64 `json:"rps"`          // successful requests per second
	Goodput     float64 `json:"goodput"`      // successful within SLO latency, per second
	OutputTPS   float64 `json:"output_tps"`   // output tokens per second
	ErrorRate   float64 `json:"error_rate"`   // (refused+failed)/requests
	FailureRate float64 `json:"failure_rate"` // failed/requests
	// Latency and TTFT are over successful requests; TPOT is the time per
	// output token after the first.
	Latency Percentiles `json:"latency"`
	TTFT    Percentiles `json:"ttft"`
	TPOT    Percentiles `json:"tpot"`
	// QueueWait is over successful requests: their wait in llmlabd's queue
	// (X-Llmlab-Queue-Wait; zero without llmlabd).
	QueueWait Percentiles `json:"queue_wait"`
	// Tokens are the prompt and output tokens of the successful requests,
	// from their usage.
	Tokens int            `json:"tokens"`
	ByCode map[string]int `json:"by_status"`
	Pass   bool           `json:"pass"`
	// RetryAfter is over the refusals that carried one. Retried counts
	// the refusals sent again after it (Options.Retry; not in the figures
	// above), RetriedOK those then answered.
	RetryAfter Percentiles `json:"retry_after"`
	Retried    int         `json:"retried,omitempty"`
	RetriedOK  int         `json:"retried_ok,omitempty"`
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted values.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func percentiles(v []time.Duration) Percentiles {
	slices.Sort(v)
	if len(v) == 0 {
		return Percentiles{}
	}
	return Percentiles{P50: Percentile(v, 50), P90: Percentile(v, 90), P95: Percentile(v, 95), P99: Percentile(v, 99), Max: v[len(v)-1]}
}

// Summarize computes a run's figures over window seconds of measurement
// (the duration requests were started in), excluding warm-up samples.
func Summarize(samples []Sample, window time.Duration, slo SLO) Summary {
	s := Summary{ByCode: map[string]int{}, Seconds: window.Seconds()}
	var lat, ttft, tpot, retryAfter, wait []time.Duration
	good, tokens := 0, 0
	for _, x := range samples {
		if x.Warmup {
			continue
		}
		if x.Retry {
			s.Retried++
			if x.Error == "" && x.Status == 200 {
				s.RetriedOK++
			}
			continue
		}
		if x.RetryAfter > 0 {
			retryAfter = append(retryAfter, x.RetryAfter)
		}
		s.Requests++
		code := "error"
		if x.Status != 0 {
			code = strconv.Itoa(x.Status)
		}
		if x.Error != "" {
			code = x.Error
		}
		s.ByCode[code]++
		switch {
		case x.Error == "" && x.Status == 200:
			s.OK++
			lat = append(lat, x.Latency)
			ttft = append(ttft, x.TTFT)
			wait = append(wait, x.QueueWait)
			s.Tokens += x.PromptTokens + x.OutputTokens
			if x.OutputTokens > 1 {
				tpot = append(tpot, (x.Latency-x.TTFT)/time.Duration(x.OutputTokens-1))
			}
			tokens += x.OutputTokens
			if x.Latency <= slo.Latency {
				good++
			}
		case x.Error == "" && (x.Status == 429 || x.Status == 503):
			s.Refused++
		default:
			s.Failed++
		}
	}
	if s.Seconds > 0 {
		s.RPS = float64(s.OK) / s.Seconds
		s.Goodput = float64(good) / s.Seconds
		s.OutputTPS = float64(tokens) / s.Seconds
	}
	if s.Requests > 0 {
		s.ErrorRate = float64(s.Refused+s.Failed) / float64(s.Requests)
		s.FailureRate = float64(s.Failed) / float64(s.Requests)
	}
	s.Latency, s.TTFT, s.TPOT = percentiles(lat), percentiles(ttft), percentiles(tpot)
	s.RetryAfter = percentiles(retryAfter)
	s.QueueWait = percentiles(wait)
	s.Pass = s.OK > 0 && s.Latency.P95 <= slo.Latency && s.ErrorRate <= slo.MaxErrorRate
	return s
}

func sortDurations(v []time.Duration) { slices.Sort(v) }

// FindMax is the highest rate at which pass holds, found by doubling from
// start until one fails, then bisecting (at most 8 times) until the bracket
// is narrower than precision, relative; never above maxRate. 0: pass held
// at no rate tried.
func FindMax(start, maxRate, precision float64, pass func(float64) bool) float64 {
	lo, hi := 0.0, 0.0
	for r := start; hi == 0; r *= 2 {
		if r > maxRate {
			return lo
		}
		if pass(r) {
			lo = r
		} else {
			hi = r
		}
	}
	for i := 0; i < 8 && (hi-lo)/hi > precision; i++ {
		mid := (lo + hi) / 2
		if pass(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}
