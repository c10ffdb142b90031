package gpu

import (
	"flag"
	"slices"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmlab/llmlab/internal/metricsdoc"
)

var update = flag.Bool("update", false, "rewrite docs/metrics.md's GPU table from the registry")

// docs/metrics.md's GPU device table is the monitor's own series, read
// with NVML's mock: a card with a compute process.
func TestMetricsCatalogueGPU(t *testing.T) {
	c := &card{total: 4 * gib, used: gib, procs: []nvml.ProcessInfo{{Pid: 42, UsedGpuMemory: 900 << 20}}}
	m, _ := run(t, c.lib())
	waitFor(t, "a reading", func() bool { return m.Snapshot().Available })
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// The series without a device label are llmlabd's table's.
	rows := slices.DeleteFunc(metricsdoc.FromFamilies(fams, "llmlab_gpu_"), func(r metricsdoc.Row) bool {
		return !slices.Contains(r.Labels, "gpu")
	})
	if err := metricsdoc.Check("../../docs/metrics.md", "gpu", metricsdoc.Render(rows), *update); err != nil {
		t.Fatal(err)
	}
}
