package gateway

import (
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/daemon/queue"
)

// metrics are the gateway's Prometheus series. Outcomes:
//
//	ok, invalid, unauthorized, rate_limited, queue_full, overloaded,
//	queue_timeout, draining, engine_error, engine_unavailable, cancelled
type metrics struct {
	requests     *prometheus.CounterVec   // route, outcome, code
	duration     *prometheus.HistogramVec // route, result
	queueWait    prometheus.Histogram
	ttft         *prometheus.HistogramVec // route
	batchSize    prometheus.Histogram
	upstream     *prometheus.CounterVec // kind: proxied, coalesced
	clientReqs   *prometheus.CounterVec // client
	clientTokens *prometheus.CounterVec // client, type
	unreported   *prometheus.CounterVec // client
	classReqs    *prometheus.CounterVec // class, outcome
	decisions    *prometheus.CounterVec // class, decision, reason
}

var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 60}

// bucketsWith returns latencyBuckets with slo among them, so that the
// share of requests within the objective (goodput) is exact from the
// histogram: a dashboard reads le="<slo>".
func bucketsWith(slo time.Duration) []float64 {
	b := slices.Clone(latencyBuckets)
	if s := slo.Seconds(); s > 0 && !slices.Contains(b, s) {
		b = append(b, s)
		slices.Sort(b)
	}
	return b
}

func newMetrics(reg prometheus.Registerer, stats func() queue.Stats, slo time.Duration) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_requests_total",
			Help: "Requests answered by the gateway, by route, outcome and HTTP status code.",
		}, []string{"route", "outcome", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmlab_request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its answer, by result (ok: answered; refused: 429 or 503 with Retry-After; failed: the client's error, an engine error, or the client left); a bucket boundary sits at the latency objective (slo.latency at start).",
			Buckets: bucketsWith(slo),
		}, []string{"route", "result"}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "llmlab_queue_wait_seconds",
			Help:    "Time admitted requests waited in the queue before reaching the engine.",
			Buckets: latencyBuckets,
		}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmlab_time_to_first_token_seconds",
			Help:    "Time from a request's arrival to the first byte of the engine's answer.",
			Buckets: latencyBuckets,
		}, []string{"route"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "llmlab_dispatch_batch_size",
			Help:    "Requests released to the engine together by one dispatch.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128},
		}),
		upstream: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_upstream_requests_total",
			Help: "Requests sent to the engine: proxied one for one, or coalesced from several clients.",
		}, []string{"kind"}),
		clientReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_client_requests_total",
			Help: "Requests by API key name (\"anonymous\" when keys are off).",
		}, []string{"client"}),
		clientTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_client_tokens_total",
			Help: "Tokens by API key name and type (prompt, completion), from the engine's usage reports.",
		}, []string{"client", "type"}),
		unreported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_client_usage_unreported_total",
			Help: "Answered requests whose answer carried no usage (a stream without stream_options.include_usage), by API key name: their tokens are not in llmlab_client_tokens_total.",
		}, []string{"client"}),
		classReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_class_requests_total",
			Help: "Requests by priority class (interactive, batch) and outcome.",
		}, []string{"class", "outcome"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_admission_decisions_total",
			Help: "Admission decisions (dispatch, queue, refuse) by priority class and reason.",
		}, []string{"class", "decision", "reason"}),
	}
	stat := func(f func(queue.Stats) float64) func() float64 {
		return func() float64 { return f(stats()) }
	}
	reg.MustRegister(m.requests, m.duration, m.queueWait, m.ttft, m.batchSize, m.upstream, m.clientReqs, m.clientTokens, m.unreported, m.classReqs, m.decisions,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_queue_depth", Help: "Requests waiting in the queue."},
			stat(func(s queue.Stats) float64 { return float64(s.Queued) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_queue_sequences", Help: "Sequences waiting in the queue."},
			stat(func(s queue.Stats) float64 { return float64(s.QueuedSlots) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_inflight_sequences", Help: "Sequences in the engine."},
			stat(func(s queue.Stats) float64 { return float64(s.Inflight) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_inflight_limit", Help: "Most sequences allowed in the engine at once now (the limit chosen from the engine model, or queue.max_inflight)."},
			stat(func(s queue.Stats) float64 { return float64(s.Limit) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_engine_saturated", Help: "1 while the engine's own metrics say it is saturated and dispatching is held."},
			stat(func(s queue.Stats) float64 {
				if s.Hold {
					return 1
				}
				return 0
			})),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_engine_seconds_per_request", Help: "Recent average time a request holds its engine slots."},
			stat(func(s queue.Stats) float64 { return s.EngineSeconds })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_admission_tail_seconds", Help: "The engine model's time for the recent typical request at the in-flight limit, 95 times in 100: what admission expects of a request that waits for a slot."},
			stat(func(s queue.Stats) float64 { return s.AdmissionTailSeconds })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_engine_model_measured_ratio", Help: "Share of the engine model's fit that is measured from requests rather than assumed from its prior (0 to 1)."},
			stat(func(s queue.Stats) float64 { return s.Model.Measured })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_queue_limit", Help: "Most sequences allowed to wait in the queue."},
			stat(func(s queue.Stats) float64 { return float64(s.MaxQueued) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "llmlab_completion_rate", Help: "Sequences per second the engine completes at the in-flight limit, as the engine model predicts it."},
			stat(func(s queue.Stats) float64 { return s.RateRPS })),
	)
	return m
}

// Dispatched implements queue.Observer.
func (m *metrics) Dispatched(n int) { m.batchSize.Observe(float64(n)) }

// Decided implements queue.Observer.
func (m *metrics) Decided(class queue.Class, decision, reason string) {
	m.decisions.WithLabelValues(queue.ClassName(class), decision, reason).Inc()
}

// result sorts an answer for llmlab_request_duration_seconds: "ok" for an
// answered request, "refused" for llmlab's own 429 and 503 (every refusal
// carries Retry-After), "failed" for the rest. Answered requests have
// their own series so that their percentiles and the goodput
// (bucket{result="ok",le=<slo>}) are not diluted by fast refusals.
func result(outcome string, status int) string {
	switch {
	case outcome == "ok":
		return "ok"
	case status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable:
		return "refused"
	default:
		return "failed"
	}
}
