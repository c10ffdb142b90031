// Package textfile writes llmlabd's key series to node_exporter's textfile
// collector directory, so that monitoring sees "scaled to zero" rather
// than a gap while llmlabd has exited on idle, and never has to wake it.
//
// The file carries llmlab_up (1 while the daemon runs, 0 once it exited),
// the engine's state, the queue gauges, and the request, token and engine
// start counters. Counters continue across restarts: the totals at exit are
// kept (in the state directory) and added to the next run's counts.
package textfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"
)

// families are the series written to the file.
var families = map[string]bool{
	"llmlab_requests_total":      true,
	"llmlab_client_tokens_total": true,
	"llmlab_engine_starts_total": true,
	"llmlab_engine_state":        true,
	"llmlab_queue_depth":         true,
	"llmlab_inflight_sequences":  true,
}

// Writer writes the file. It is safe for concurrent use.
type Writer struct {
	path string
	src  prometheus.Gatherer

	mu   sync.Mutex
	base map[string]float64 // counter totals of earlier runs
	last []byte
}

// New returns a writer of path from src; base holds earlier runs' totals.
func New(path string, src prometheus.Gatherer, base map[string]float64) *Writer {
	if base == nil {
		base = map[string]float64{}
	}
	return &Writer{path: path, src: src, base: base}
}

// key names one counter series: its name and labels.
func key(name string, m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	slices.Sort(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

// gather returns the selected families with earlier runs' totals added to
// the counters, and llmlab_up.
func (w *Writer) gather(up bool) ([]*dto.MetricFamily, map[string]float64, error) {
	all, err := w.src.Gather()
	if err != nil {
		return nil, nil, err
	}
	totals := map[string]float64{}
	for k, v := range w.base {
		totals[k] = v
	}
	var out []*dto.MetricFamily
	seen := map[string]bool{}
	for _, f := range all {
		if !families[f.GetName()] {
			continue
		}
		f = proto.Clone(f).(*dto.MetricFamily)
		for _, m := range f.Metric {
			if f.GetType() == dto.MetricType_COUNTER {
				k := key(f.GetName(), m)
				v := m.GetCounter().GetValue() + w.base[k]
				m.Counter.Value = proto.Float64(v)
				totals[k] = v
				seen[k] = true
			}
			// An exited daemon holds no requests.
			if !up && (f.GetName() == "llmlab_queue_depth" || f.GetName() == "llmlab_inflight_sequences") {
				m.Gauge.Value = proto.Float64(0)
			}
		}
		out = append(out, f)
	}
	upVal := 0.0
	if up {
		upVal = 1
	}
	out = append(out, &dto.MetricFamily{
		Name: proto.String("llmlab_up"), Help: proto.String("1 while llmlabd runs; 0 once it has exited (on idle, or stopped)."),
		Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(upVal)}}},
	})
	return out, totals, nil
}

// Write writes the file if its content changed. A missing directory (no
// node_exporter on this box) is not an error: nothing is written.
func (w *Writer) Write(up bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := os.Stat(filepath.Dir(w.path)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	fams, _, err := w.gather(up)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	for _, f := range fams {
		if _, err := expfmt.MetricFamilyToText(&buf, f); err != nil {
			return err
		}
	}
	if bytes.Equal(buf.Bytes(), w.last) {
		return nil
	}
	if err := prometheus.WriteToTextfile(w.path, prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return fams, nil })); err != nil {
		return err
	}
	w.last = buf.Bytes()
	return nil
}

// Totals returns the counters' totals over this and earlier runs, to keep
// for the next run.
func (w *Writer) Totals() (map[string]float64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, totals, err := w.gather(true)
	return totals, err
}
