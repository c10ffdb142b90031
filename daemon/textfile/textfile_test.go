package textfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestWriteCarriesCountersAndUp(t *testing.T) {
	reg := prometheus.NewRegistry()
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "llmlab_requests_total", Help: "h"}, []string{"outcome"})
	depth := prometheus.NewGauge(prometheus.GaugeOpts{Name: "llmlab_queue_depth", Help: "h"})
	other := prometheus.NewGauge(prometheus.GaugeOpts{Name: "go_goroutines_x", Help: "h"})
	reg.MustRegister(reqs, depth, other)
	reqs.WithLabelValues("ok").Add(3)
	depth.Set(7)

	path := filepath.Join(t.TempDir(), "llmlab.prom")
	w := New(path, reg, map[string]float64{"llmlab_requests_total{outcome=ok}": 10})
	if err := w.Write(true); err != nil {
		t.Fatal(err)
	}
	got := read(t, path)
	for _, want := range []string{`llmlab_requests_total{outcome="ok"} 13`, "llmlab_queue_depth 7", "llmlab_up 1"} {
		if !strings.Contains(got, want) {
			t.Errorf("file lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "go_goroutines_x") {
		t.Errorf("file carries series it should not:\n%s", got)
	}
	if err := w.Write(false); err != nil {
		t.Fatal(err)
	}
	got = read(t, path)
	if !strings.Contains(got, "llmlab_up 0") || !strings.Contains(got, "llmlab_queue_depth 0") || !strings.Contains(got, `outcome="ok"} 13`) {
		t.Errorf("after exit:\n%s", got)
	}
	totals, err := w.Totals()
	if err != nil || totals["llmlab_requests_total{outcome=ok}"] != 13 {
		t.Fatalf("Totals = %v, %v", totals, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("%d files in the collector directory, want 1 (no temporary files)", len(entries))
	}
}

func TestMissingDirectoryWritesNothing(t *testing.T) {
	w := New("/nonexistent/node-exporter/llmlab.prom", prometheus.NewRegistry(), nil)
	if err := w.Write(true); err != nil {
		t.Fatalf("Write with no collector directory: %v, want nothing written and no error", err)
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
