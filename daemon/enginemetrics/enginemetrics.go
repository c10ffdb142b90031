// Package enginemetrics reads the engine's own Prometheus metrics (vLLM's
// /metrics) while it runs: how many requests it is running and keeping
// waiting, and how full its KV cache is. They hold the gateway's
// dispatching (daemon/server's saturation hold): an engine that queues
// internally with its KV cache full is saturated whatever llmlab's own
// counts say.
//
// One goroutine (Scraper.Run) scrapes at a short interval while the engine
// is ready; readings older than three intervals are stale, and a stale
// reading of a ready engine counts as saturated.
package enginemetrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Reading is one scrape of the engine's gauges, summed over its label sets
// (engines, models).
type Reading struct {
	At      time.Time
	Running float64
	Waiting float64
	// KVUsage is the KV cache's fill, 0 to 1.
	KVUsage float64
	// Preemptions is vLLM's running total of preempted sequences.
	Preemptions float64
}

// Signals are the engine's own readings, as the saturation hold reads
// them.
type Signals struct {
	// Known is false when the engine serves no metrics (nothing to act on).
	Known bool
	// Stale is true when readings stopped arriving from a ready engine.
	Stale   bool
	Waiting float64
	KVUsage float64
}

// Saturated reports whether the engine cannot usefully take more work now:
// it queues internally with its KV cache full, or its readings are stale.
func (s Signals) Saturated() bool {
	return s.Known && (s.Stale || (s.Waiting > 0 && s.KVUsage >= 0.95))
}

// Names of the series read; older vLLM releases call the KV gauge
// gpu_cache_usage_perc.
var (
	running     = []string{"vllm:num_requests_running"}
	waiting     = []string{"vllm:num_requests_waiting"}
	kvUsage     = []string{"vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"}
	preemptions = []string{"vllm:num_preemptions_total", "vllm:num_preemptions"}
)

// ErrNotVLLM says the text parsed but carries none of vLLM's gauges.
var ErrNotVLLM = errors.New("no vllm:num_requests_running or vllm:num_requests_waiting series: not a vLLM /metrics")

// Parse reads Prometheus text exposition as vLLM serves it.
func Parse(r io.Reader) (Reading, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Reading{}, fmt.Errorf("parsing the engine's metrics: %w", err)
	}
	var rd Reading
	found := false
	sum := func(names []string) (float64, bool) {
		for _, n := range names {
			if f, ok := fams[n]; ok {
				total := 0.0
				for _, m := range f.GetMetric() {
					total += value(f.GetType(), m)
				}
				return total, true
			}
		}
		return 0, false
	}
	var ok bool
	if rd.Running, ok = sum(running); ok {
		found = true
	}
	if rd.Waiting, ok = sum(waiting); ok {
		found = true
	}
	rd.KVUsage, _ = sum(kvUsage)
	rd.Preemptions, _ = sum(preemptions)
	if !found {
		return Reading{}, ErrNotVLLM
	}
	// Several engines' caches: report the mean fill, not the sum.
	for _, n := range kvUsage {
		if f, ok := fams[n]; ok && len(f.GetMetric()) > 1 {
			rd.KVUsage /= float64(len(f.GetMetric()))
			break
		}
	}
	return rd, nil
}

func value(t dto.MetricType, m *dto.Metric) float64 {
	switch t {
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue()
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue()
	case dto.MetricType_UNTYPED:
		return m.GetUntyped().GetValue()
	}
	return 0
}

// Scraper scrapes an engine's /metrics. Create it with NewScraper and run
// Run.
type Scraper struct {
	url      string
	interval time.Duration
	client   *http.Client
	log      *slog.Logger

	mu      sync.Mutex
	last    Reading
	ok      uint64
	failed  uint64
	lastErr string
	// expiredAt is the reading last reported expired (logged once).
	expiredAt time.Time
}

// NewScraper returns a scraper of url (the engine's /metrics) every
// interval.
func NewScraper(url string, interval time.Duration, log *slog.Logger) *Scraper {
	return &Scraper{url: url, interval: interval, log: log, client: &http.Client{Timeout: max(interval*5, time.Second)}}
}

// Interval is the scrape interval.
func (s *Scraper) Interval() time.Duration { return s.interval }

// Run scrapes while active reports true (the engine is ready), until ctx
// ends.
// An engine that answers 404 serves no /metrics (Ollama, llama.cpp
// without --metrics): it is asked again only every NoMetricsRetry, and
// until then llmlab works from latency alone.
func (s *Scraper) Run(ctx context.Context, active func() bool) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	var next time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if !active() {
				next = time.Time{} // a new engine run is asked at once
				continue
			}
			if now.Before(next) {
				continue
			}
			if s.scrape(ctx) == http.StatusNotFound {
				next = now.Add(NoMetricsRetry)
			}
		}
	}
}

// NoMetricsRetry is how often an engine that serves no /metrics is asked
// again.
const NoMetricsRetry = 30 * time.Second

// scrape reads the engine's metrics once and returns the HTTP status (0
// when there was no answer).
func (s *Scraper) scrape(ctx context.Context) int {
	rd, status, err := s.fetch(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failed++
		if msg := err.Error(); msg != s.lastErr {
			if status == http.StatusNotFound {
				s.log.Info("the engine serves no metrics; working from latency alone", "url", s.url, "retry_every", NoMetricsRetry)
			} else {
				s.log.Warn("cannot read the engine's metrics", "url", s.url, "err", err)
			}
			s.lastErr = msg
		}
		return status
	}
	s.ok++
	s.lastErr = ""
	s.last = rd
	return status
}

func (s *Scraper) fetch(ctx context.Context) (Reading, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return Reading{}, 0, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return Reading{}, 0, err
	}
	defer func() {
		// Read what is left of a short answer (an error page, say), so
		// that the next scrape reuses the connection instead of opening
		// one every interval.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK {
		return Reading{}, resp.StatusCode, fmt.Errorf("GET %s: %s", s.url, resp.Status)
	}
	rd, err := Parse(io.LimitReader(resp.Body, 8<<20))
	rd.At = time.Now()
	return rd, resp.StatusCode, err
}

// Latest returns the latest reading (zero At when none yet).
func (s *Scraper) Latest() Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Freshness says how far a reading can be trusted.
type Freshness int

const (
	// Fresh readings are acted on.
	Fresh Freshness = iota
	// Stale readings (older than three intervals) hold dispatching: the
	// engine may be saturated and unable to answer its /metrics.
	Stale
	// Expired readings (older than StaleHold) are ignored: the engine
	// answers requests but no longer its /metrics, and holding every
	// request for as long as that lasts would stop serving.
	Expired
)

// StaleHold bounds how long stale readings hold dispatching.
const StaleHold = 5 * time.Second

// Freshness tells how old r is at now; the first time readings expire,
// it logs that llmlab falls back to latency alone.
func (s *Scraper) Freshness(r Reading, now time.Time) Freshness {
	age := now.Sub(r.At)
	switch {
	case r.At.IsZero() || age > max(StaleHold, 3*s.interval):
		s.mu.Lock()
		first := s.expiredAt != r.At
		s.expiredAt = r.At
		s.mu.Unlock()
		if first && !r.At.IsZero() {
			s.log.Warn("the engine's metrics stopped; admission falls back to latency alone until they return",
				"url", s.url, "last_reading_age", age.Round(time.Millisecond))
		}
		return Expired
	case age > 3*s.interval:
		return Stale
	}
	return Fresh
}

var (
	descRunning = prometheus.NewDesc("llmlab_engine_requests_running", "Requests the engine is running (vllm:num_requests_running), as last scraped.", nil, nil)
	descWaiting = prometheus.NewDesc("llmlab_engine_requests_waiting", "Requests waiting inside the engine (vllm:num_requests_waiting), as last scraped.", nil, nil)
	descKV      = prometheus.NewDesc("llmlab_engine_kv_cache_usage_ratio", "The engine's KV-cache fill (vllm:kv_cache_usage_perc), as last scraped.", nil, nil)
	descAge     = prometheus.NewDesc("llmlab_engine_metrics_age_seconds", "Age of the last successful scrape of the engine's metrics.", nil, nil)
	descScrapes = prometheus.NewDesc("llmlab_engine_metrics_scrapes_total", "Scrapes of the engine's metrics, by result.", []string{"result"}, nil)
)

// Describe implements prometheus.Collector.
func (s *Scraper) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRunning, descWaiting, descKV, descAge, descScrapes} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *Scraper) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	r, ok, failed := s.last, s.ok, s.failed
	s.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descScrapes, prometheus.CounterValue, float64(ok), "ok")
	ch <- prometheus.MustNewConstMetric(descScrapes, prometheus.CounterValue, float64(failed), "error")
	if r.At.IsZero() {
		return
	}
	ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, r.Running)
	ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, r.Waiting)
	ch <- prometheus.MustNewConstMetric(descKV, prometheus.GaugeValue, r.KVUsage)
	ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, time.Since(r.At).Seconds())
}
