package gpu

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descUp       = prometheus.NewDesc("llmlab_gpu_up", "1 when the last NVML reading succeeded; 0 with no GPU, no driver or a failing GPU.", nil, nil)
	descAge      = prometheus.NewDesc("llmlab_gpu_reading_age_seconds", "Age of the latest GPU reading.", nil, nil)
	descPolls    = prometheus.NewDesc("llmlab_gpu_polls_total", "NVML readings taken, by result.", []string{"result"}, nil)
	descTotal    = prometheus.NewDesc("llmlab_gpu_memory_total_bytes", "GPU memory, total.", []string{"gpu", "name"}, nil)
	descUsed     = prometheus.NewDesc("llmlab_gpu_memory_used_bytes", "GPU memory in use.", []string{"gpu"}, nil)
	descFree     = prometheus.NewDesc("llmlab_gpu_memory_free_bytes", "GPU memory free.", []string{"gpu"}, nil)
	descReserved = prometheus.NewDesc("llmlab_gpu_memory_reserved_bytes", "GPU memory reserved by the driver.", []string{"gpu"}, nil)
	descUtil     = prometheus.NewDesc("llmlab_gpu_utilization_ratio", "Share of the last sample period the GPU was busy.", []string{"gpu"}, nil)
	descMemUtil  = prometheus.NewDesc("llmlab_gpu_memory_utilization_ratio", "Share of the last sample period GPU memory was read or written.", []string{"gpu"}, nil)
	descProc     = prometheus.NewDesc("llmlab_gpu_process_memory_bytes", "GPU memory of each compute process.", []string{"gpu", "pid"}, nil)
	descProcSM   = prometheus.NewDesc("llmlab_gpu_process_sm_utilization_ratio", "Share of the time each compute process's kernels ran on the SMs since the previous reading.", []string{"gpu", "pid"}, nil)
)

// Describe implements prometheus.Collector.
func (m *Monitor) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descAge, descPolls, descTotal, descUsed, descFree, descReserved, descUtil, descMemUtil, descProc, descProcSM} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: the latest snapshot, read at
// scrape time.
func (m *Monitor) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	s, polls, errs := m.snap, m.polls, m.errors
	m.mu.Unlock()
	up := 0.0
	if s.Available {
		up = 1
	}
	ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up)
	if !s.At.IsZero() {
		ch <- prometheus.MustNewConstMetric(descAge, prometheus.GaugeValue, time.Since(s.At).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(descPolls, prometheus.CounterValue, float64(polls), "ok")
	ch <- prometheus.MustNewConstMetric(descPolls, prometheus.CounterValue, float64(errs), "error")
	if !s.Available {
		return
	}
	for _, d := range s.Devices {
		g := strconv.Itoa(d.Index)
		ch <- prometheus.MustNewConstMetric(descTotal, prometheus.GaugeValue, float64(d.MemoryTotal), g, d.Name)
		ch <- prometheus.MustNewConstMetric(descUsed, prometheus.GaugeValue, float64(d.MemoryUsed), g)
		ch <- prometheus.MustNewConstMetric(descFree, prometheus.GaugeValue, float64(d.MemoryFree), g)
		ch <- prometheus.MustNewConstMetric(descReserved, prometheus.GaugeValue, float64(d.MemoryReserved), g)
		if d.UtilOK {
			ch <- prometheus.MustNewConstMetric(descUtil, prometheus.GaugeValue, d.UtilGPU, g)
			ch <- prometheus.MustNewConstMetric(descMemUtil, prometheus.GaugeValue, d.UtilMemory, g)
		}
		for _, p := range d.Processes {
			pid := strconv.FormatUint(uint64(p.PID), 10)
			ch <- prometheus.MustNewConstMetric(descProc, prometheus.GaugeValue, float64(p.UsedMemory), g, pid)
			if d.ProcessUtilOK {
				ch <- prometheus.MustNewConstMetric(descProcSM, prometheus.GaugeValue, p.SMUtil, g, pid)
			}
		}
	}
}
