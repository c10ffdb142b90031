package sim

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the simulator's series, under vLLM's names (with vLLM's
// model_name label), plus the simulator's own lag series.
type metrics struct {
	running     prometheus.Gauge
	waiting     prometheus.Gauge
	kvUsage     prometheus.Gauge
	ttft        prometheus.Observer
	e2e         prometheus.Observer
	queueTime   prometheus.Observer
	iterTokens  prometheus.Observer
	success     prometheus.Counter
	preemptions prometheus.Counter
	// Prefix-cache queries and hits, in tokens, as vLLM v1 counts them
	// (vllm/v1/metrics/loggers.py: vllm:prefix_cache_queries, _hits).
	cacheQueries prometheus.Counter
	cacheHits    prometheus.Counter
	lag          prometheus.Histogram
	maxLag       prometheus.Gauge
	steps        prometheus.Counter
	lagMax       float64 // owned by the engine loop
}

var latencyBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80}

func newMetrics(reg prometheus.Registerer, model string) *metrics {
	lbl := prometheus.Labels{"model_name": model, "engine": "0"}
	gauge := func(name, help string) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: lbl})
		reg.MustRegister(g)
		return g
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: lbl, Buckets: buckets})
		reg.MustRegister(h)
		return h
	}
	success := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "vllm:request_success_total",
		Help: "Count of successfully processed requests.", ConstLabels: lbl}, []string{"finished_reason"})
	preempt := prometheus.NewCounter(prometheus.CounterOpts{Name: "vllm:num_preemptions_total",
		Help: "Cumulative number of preemption from the engine.", ConstLabels: lbl})
	steps := prometheus.NewCounter(prometheus.CounterOpts{Name: "llmlab_sim_steps_total", Help: "Engine steps the simulator ran."})
	queries := prometheus.NewCounter(prometheus.CounterOpts{Name: "vllm:prefix_cache_queries",
		Help: "Prefix cache queries, in terms of number of queried tokens.", ConstLabels: lbl})
	hits := prometheus.NewCounter(prometheus.CounterOpts{Name: "vllm:prefix_cache_hits",
		Help: "Prefix cache hits, in terms of number of cached tokens.", ConstLabels: lbl})
	reg.MustRegister(success, preempt, steps, queries, hits)
	m := &metrics{
		running:      gauge("vllm:num_requests_running", "Number of requests in model execution batches."),
		waiting:      gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
		kvUsage:      gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
		ttft:         hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", latencyBuckets),
		e2e:          hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", latencyBuckets),
		queueTime:    hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", latencyBuckets),
		iterTokens:   hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", []float64{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192}),
		success:      success.WithLabelValues("length"),
		preemptions:  preempt,
		cacheQueries: queries,
		cacheHits:    hits,
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "llmlab_sim_step_lag_seconds",
			Help:    "How late each engine step ended against the cost model's schedule (CPU starvation shows here).",
			Buckets: []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1}}),
		maxLag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "llmlab_sim_step_lag_max_seconds",
			Help: "The largest step lag seen since the simulator started."}),
		steps: steps,
	}
	reg.MustRegister(m.lag, m.maxLag)
	return m
}

func (m *metrics) observeStep(tokens int, lag time.Duration) {
	m.steps.Inc()
	m.iterTokens.Observe(float64(tokens))
	s := max(0, lag.Seconds())
	m.lag.Observe(s)
	if s > m.lagMax {
		m.lagMax = s
		m.maxLag.Set(s)
	}
}
