package gateway

import (
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/queue"
)

// metrics are the gateway's Prometheus series. Outcomes:
//
//	ok, invalid, unauthorized, rate_limited, queue_full, overloaded,
//	queue_timeout, draining, engine_error, engine_unavailable, cancelled
type metrics struct {
	requests      *prometheus.CounterVec   // route, outcome, code
	duration      *prometheus.HistogramVec // route, result
	queueWait     prometheus.Histogram
	ttft          *prometheus.HistogramVec // route
	batchSize     prometheus.Histogram
	upstream      *prometheus.CounterVec // kind: proxied, coalesced
	clientReqs    *prometheus.CounterVec // client
	clientTokens  *prometheus.CounterVec // client, type
	unreported    *prometheus.CounterVec // client
	clientRefused *prometheus.CounterVec // client
	clientEngine  *prometheus.CounterVec // client
	classReqs     *prometheus.CounterVec // class, outcome
	decisions     *prometheus.CounterVec // class, decision, reason
	clientQueued  clientQueued
	// keys are the API keys now, which name the client label (auth.Keys.Label).
	keys func() *auth.Keys
}

// clientQueued is llmlab_client_queued_requests, read from the queue at
// scrape time: every label the keys use, and any other a request still
// queued has (a key removed by a reload).
type clientQueued struct {
	desc   *prometheus.Desc
	keys   func() *auth.Keys
	queued func() map[string]int
}

func (c clientQueued) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c clientQueued) Collect(ch chan<- prometheus.Metric) {
	keys := c.keys()
	byLabel := map[string]int{}
	for _, l := range keys.Labels() {
		byLabel[l] = 0
	}
	for flow, n := range c.queued() {
		byLabel[keys.Label(flow)] += n
	}
	for l, n := range byLabel {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), l)
	}
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

// newMetrics registers the gateway's series on reg: stats and queued are
// read from the queue at scrape time, keys names the client label.
func newMetrics(reg prometheus.Registerer, stats func() queue.Stats, queued func() map[string]int, keys func() *auth.Keys, slo time.Duration) *metrics {
	m := &metrics{keys: keys,
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
			Help: "Requests by API key name (\"anonymous\" when keys are off; \"other\" past the keys file's first 32 keys).",
		}, []string{"client"}),
		clientTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_client_tokens_total",
			Help: "Tokens by API key name and type (prompt, completion), from the engine's usage reports.",
		}, []string{"client", "type"}),
		unreported: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_client_usage_unreported_total",
			Help: "Answered requests whose answer carried no usage (a stream without stream_options.include_usage), by API key name: their tokens are not in llmlab_client_tokens_total.",
		}, []string{"client"}),
		clientRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_client_refused_total",
			Help: "Requests refused with 429 or 503 and Retry-After (the key's request or token rate, or admission), by API key name.",
		}, []string{"client"}),
		clientEngine: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmlab_client_engine_tokens_total",
			Help: "Engine work by API key name as fair sharing counts it: each request's prompt and output tokens (usage where reported, else the streamed chunks, else prompt and max_tokens), when it ends; a key's share of the engine under contention is its weight's share of this.",
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
	m.clientQueued = clientQueued{desc: prometheus.NewDesc("llmlab_client_queued_requests", "Requests waiting in the queue by API key name.", []string{"client"}, nil),
		keys: keys, queued: queued}
	m.initClients()
	reg.MustRegister(m.requests, m.duration, m.queueWait, m.ttft, m.batchSize, m.upstream, m.clientReqs, m.clientTokens, m.unreported, m.classReqs, m.decisions,
		m.clientRefused, m.clientEngine, m.clientQueued,
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

// initClients makes the per-key series of every label the keys use, at
// zero, so that a key's series exist before its first request.
func (m *metrics) initClients() {
	for _, l := range m.keys().Labels() {
		m.clientReqs.WithLabelValues(l)
		m.clientRefused.WithLabelValues(l)
		m.clientEngine.WithLabelValues(l)
	}
}

// Served implements queue.Observer.
func (m *metrics) Served(_ queue.Class, flow string, tokens float64) {
	m.clientEngine.WithLabelValues(m.keys().Label(flow)).Add(tokens)
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
