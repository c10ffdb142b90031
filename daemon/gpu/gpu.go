// Package gpu reads the GPUs through NVML (github.com/NVIDIA/go-nvml): each
// device's memory (total, used, free, reserved), its utilisation (GPU and
// memory controller) and the memory of its compute processes, polled at an
// interval by one goroutine (Run) that owns NVML's lifecycle. The latest
// snapshot and its age are exported as Prometheus gauges read at scrape
// time, and serve the engine's start admission (admission.go).
//
// Without a driver NVML's Init fails cleanly; no other NVML function is
// called then (doing so kills the process). The monitor logs the reason
// once, reports "no GPU" in its snapshot and metrics, and tries Init again
// now and then. A GPU that errors mid-run is handled the same way: NVML is
// shut down and initialised afresh later.
package gpu

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// Device is one GPU's reading.
type Device struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	UUID  string `json:"uuid"`
	// Memory in bytes. Reserved is what the driver keeps for itself (0
	// where NVML's v2 memory call is not supported).
	MemoryTotal    uint64 `json:"memory_total_bytes"`
	MemoryUsed     uint64 `json:"memory_used_bytes"`
	MemoryFree     uint64 `json:"memory_free_bytes"`
	MemoryReserved uint64 `json:"memory_reserved_bytes"`
	// Utilisation over NVML's last sample period, 0 to 1; UtilOK is false
	// where the device does not report it.
	UtilGPU    float64   `json:"utilization_gpu"`
	UtilMemory float64   `json:"utilization_memory"`
	UtilOK     bool      `json:"utilization_ok"`
	Processes  []Process `json:"processes"`
	// ProcessUtilOK is true where the device reports each process's
	// share of the SMs (Process.SMUtil).
	ProcessUtilOK bool `json:"process_utilization_ok"`
}

// Process is a compute process holding memory on a device.
type Process struct {
	PID        uint32 `json:"pid"`
	UsedMemory uint64 `json:"used_memory_bytes"`
	// SMUtil is the share of the time its kernels ran on the SMs since the
	// last reading, 0 to 1 (NVML's per-process samples, averaged over the
	// device's sample periods in that time).
	SMUtil float64 `json:"sm_utilization"`
}

// Snapshot is what the monitor last read.
type Snapshot struct {
	At time.Time `json:"at"`
	// Available is true when NVML is initialised and the last poll
	// succeeded; otherwise Reason says why ("no GPU: ...").
	Available bool     `json:"available"`
	Reason    string   `json:"reason,omitempty"`
	Driver    string   `json:"driver,omitempty"`
	Devices   []Device `json:"devices,omitempty"`
}

// Device returns the reading of the device with that index.
func (s Snapshot) Device(index int) (Device, bool) {
	for _, d := range s.Devices {
		if d.Index == index {
			return d, true
		}
	}
	return Device{}, false
}

// Monitor polls NVML. Create it with New and run Run.
type Monitor struct {
	lib      nvml.Interface
	interval time.Duration
	retry    time.Duration
	log      *slog.Logger

	fresh chan chan Snapshot
	// lastSample is, per device, the timestamp of the newest per-process
	// utilisation sample read (NVML returns those after it). Run's alone.
	lastSample map[int]uint64

	mu     sync.Mutex
	snap   Snapshot
	polls  uint64
	errors uint64
}

// New returns a monitor over lib (nvml.New() in production, a mock in
// tests) that polls every interval.
func New(lib nvml.Interface, interval time.Duration, log *slog.Logger) *Monitor {
	if interval <= 0 {
		interval = time.Second
	}
	return &Monitor{lib: lib, interval: interval, retry: time.Minute, log: log, fresh: make(chan chan Snapshot),
		lastSample: map[int]uint64{}, snap: Snapshot{Reason: "not read yet"}}
}

// Snapshot returns the latest reading.
func (m *Monitor) Snapshot() Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap
}

// Fresh asks Run for a reading taken now (for decisions that cannot use
// one a poll interval old); it falls back to the latest when Run does not
// answer before ctx ends.
func (m *Monitor) Fresh(ctx context.Context) Snapshot {
	ch := make(chan Snapshot, 1)
	select {
	case m.fresh <- ch:
		select {
		case s := <-ch:
			return s
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	return m.Snapshot()
}

// Run owns NVML until ctx ends: it initialises it, polls, and on failure
// shuts it down and tries again after a while.
func (m *Monitor) Run(ctx context.Context) {
	initialised := false
	lastReason := ""
	var retryAt time.Time
	tick := time.NewTicker(m.interval)
	defer tick.Stop()
	defer func() {
		if initialised {
			m.lib.Shutdown()
		}
	}()
	poll := func() Snapshot {
		now := time.Now()
		if !initialised && !now.Before(retryAt) {
			if ret := m.lib.Init(); ret != nvml.SUCCESS {
				retryAt = now.Add(m.retry)
				return m.fail(now, &lastReason, "no GPU: NVML cannot start: "+nvml.ErrorString(ret))
			}
			initialised = true
		}
		if !initialised {
			return m.Snapshot()
		}
		s, err := read(m.lib, now, m.lastSample)
		if err != nil {
			m.lib.Shutdown()
			initialised = false
			retryAt = now.Add(m.retry)
			return m.fail(now, &lastReason, "no GPU: "+err.Error())
		}
		if lastReason != "" {
			m.log.Info("GPU readings available", "devices", len(s.Devices), "driver", s.Driver)
			lastReason = ""
		}
		m.mu.Lock()
		m.snap = s
		m.polls++
		m.mu.Unlock()
		return s
	}
	lastReason = "first"
	poll()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			poll()
		case ch := <-m.fresh:
			ch <- poll()
		}
	}
}

// fail records a failed reading, logging a reason once.
func (m *Monitor) fail(now time.Time, last *string, reason string) Snapshot {
	if reason != *last {
		m.log.Warn("GPU readings unavailable", "reason", reason)
		*last = reason
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.errors++
	m.snap = Snapshot{At: now, Reason: reason}
	return m.snap
}

// read takes one reading of every device; last holds each device's newest
// per-process utilisation sample read so far, and is updated.
func read(lib nvml.Interface, now time.Time, last map[int]uint64) (Snapshot, error) {
	s := Snapshot{At: now, Available: true}
	if v, ret := lib.SystemGetDriverVersion(); ret == nvml.SUCCESS {
		s.Driver = v
	}
	n, ret := lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return s, fmt.Errorf("counting devices: %s", nvml.ErrorString(ret))
	}
	if n == 0 {
		return s, fmt.Errorf("NVML reports no devices")
	}
	for i := range n {
		dev, ret := lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return s, fmt.Errorf("GPU %d: %s", i, nvml.ErrorString(ret))
		}
		d := Device{Index: i}
		d.Name, _ = dev.GetName()
		d.UUID, _ = dev.GetUUID()
		mem, ret := dev.GetMemoryInfo_v2()
		switch ret {
		case nvml.SUCCESS:
			d.MemoryTotal, d.MemoryUsed, d.MemoryFree, d.MemoryReserved = mem.Total, mem.Used, mem.Free, mem.Reserved
		case nvml.ERROR_NOT_SUPPORTED, nvml.ERROR_FUNCTION_NOT_FOUND, nvml.ERROR_ARGUMENT_VERSION_MISMATCH:
			// Older drivers: the v1 call, without the reserved figure.
			mem1, ret := dev.GetMemoryInfo()
			if ret != nvml.SUCCESS {
				return s, fmt.Errorf("GPU %d memory: %s", i, nvml.ErrorString(ret))
			}
			d.MemoryTotal, d.MemoryUsed, d.MemoryFree = mem1.Total, mem1.Used, mem1.Free
		default:
			return s, fmt.Errorf("GPU %d memory: %s", i, nvml.ErrorString(ret))
		}
		if u, ret := dev.GetUtilizationRates(); ret == nvml.SUCCESS {
			d.UtilGPU, d.UtilMemory, d.UtilOK = float64(u.Gpu)/100, float64(u.Memory)/100, true
		} else if ret == nvml.ERROR_GPU_IS_LOST {
			return s, fmt.Errorf("GPU %d: %s", i, nvml.ErrorString(ret))
		}
		if procs, ret := dev.GetComputeRunningProcesses(); ret == nvml.SUCCESS {
			for _, p := range procs {
				d.Processes = append(d.Processes, Process{PID: p.Pid, UsedMemory: p.UsedGpuMemory})
			}
		}
		d.ProcessUtilOK = processUtil(dev, &d, last, i)
		s.Devices = append(s.Devices, d)
	}
	return s, nil
}

// processUtil sets each process's SMUtil from the per-process samples NVML
// took since the last reading (nvmlDeviceGetProcessUtilization: a sample
// for each process that ran in each of the driver's sample periods, each
// with its own timestamp). A process's share is the sum of its samples over
// the number of periods sampled, taken as the most samples any process
// has, so one that was idle in some of them counts less. It returns false
// where the device does not report per-process utilisation.
func processUtil(dev nvml.Device, d *Device, last map[int]uint64, i int) bool {
	samples, ret := dev.GetProcessUtilization(last[i])
	switch ret {
	case nvml.SUCCESS:
	case nvml.ERROR_NOT_FOUND:
		return true // no process ran since the last reading
	default:
		return false
	}
	since := last[i]
	count := map[uint32]int{}
	sum := map[uint32]float64{}
	periods := 0
	for _, p := range samples {
		last[i] = max(last[i], p.TimeStamp)
		if p.TimeStamp <= since {
			continue
		}
		count[p.Pid]++
		periods = max(periods, count[p.Pid])
		sum[p.Pid] += float64(min(p.SmUtil, 100)) / 100
	}
	for k := range d.Processes {
		if periods > 0 {
			d.Processes[k].SMUtil = min(sum[d.Processes[k].PID]/float64(periods), 1)
		}
	}
	return true
}
