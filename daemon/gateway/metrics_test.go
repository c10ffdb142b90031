package gateway

import (
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/queue"
)

// The request-duration histogram has a bucket boundary at the latency
// objective, whatever it is, so that goodput (answers within it) is exact.
func TestDurationBucketAtTheObjective(t *testing.T) {
	for _, slo := range []time.Duration{5 * time.Second, 1500 * time.Millisecond, 0} {
		reg := prometheus.NewRegistry()
		m := newMetrics(reg, func() queue.Stats { return queue.Stats{} }, func() map[string]int { return nil }, func() *auth.Keys { return nil }, slo)
		m.duration.WithLabelValues("/v1/completions", "ok").Observe(1)
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var bounds []float64
		for _, f := range fams {
			if f.GetName() == "llmlab_request_duration_seconds" {
				for _, b := range f.Metric[0].GetHistogram().GetBucket() {
					bounds = append(bounds, b.GetUpperBound())
				}
			}
		}
		if !slices.IsSorted(bounds) || len(bounds) < len(latencyBuckets) {
			t.Fatalf("slo %s: bounds %v", slo, bounds)
		}
		if slo > 0 && !slices.Contains(bounds, slo.Seconds()) {
			t.Fatalf("slo %s: no bucket at %v in %v", slo, slo.Seconds(), bounds)
		}
	}
}
