package gpu

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const gib = 1 << 30

// card is a one-GPU machine behind go-nvml's mock: its memory, processes
// and health change as a test says.
type card struct {
	mu    sync.Mutex
	total uint64
	used  uint64
	procs []nvml.ProcessInfo
	// samples are the per-process utilisation samples the driver holds
	// (NVML returns those newer than the caller's last timestamp).
	samples       []nvml.ProcessUtilizationSample
	noProcessUtil bool // the device does not report them
	lost          bool // the GPU fell off the bus
	noDriver      bool
	inits         int
	shutdowns     int
}

func (c *card) lib() *mock.Interface {
	dev := &mock.Device{
		GetNameFunc: func() (string, nvml.Return) { return "Tesla T4-4GB", nvml.SUCCESS },
		GetUUIDFunc: func() (string, nvml.Return) { return "GPU-test", nvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.lost {
				return nvml.Memory_v2{}, nvml.ERROR_GPU_IS_LOST
			}
			return nvml.Memory_v2{Total: c.total, Used: c.used, Free: c.total - c.used, Reserved: 100 << 20}, nvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: 87, Memory: 41}, nvml.SUCCESS
		},
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
			c.mu.Lock()
			defer c.mu.Unlock()
			return append([]nvml.ProcessInfo(nil), c.procs...), nvml.SUCCESS
		},
		GetProcessUtilizationFunc: func(last uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.noProcessUtil {
				return nil, nvml.ERROR_NOT_SUPPORTED
			}
			var out []nvml.ProcessUtilizationSample
			for _, p := range c.samples {
				if p.TimeStamp > last {
					out = append(out, p)
				}
			}
			if len(out) == 0 {
				return nil, nvml.ERROR_NOT_FOUND
			}
			return out, nvml.SUCCESS
		},
	}
	// Only Init and Shutdown are set until Init succeeds: the mock panics
	// on any other call, as the real library kills the process.
	return &mock.Interface{
		InitFunc: func() nvml.Return {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.inits++
			if c.noDriver {
				return nvml.ERROR_LIBRARY_NOT_FOUND
			}
			return nvml.SUCCESS
		},
		ShutdownFunc: func() nvml.Return {
			c.mu.Lock()
			defer c.mu.Unlock()
			c.shutdowns++
			return nvml.SUCCESS
		},
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		DeviceGetCountFunc: func() (int, nvml.Return) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.noDriver {
				panic("NVML called after a failed Init")
			}
			return 1, nvml.SUCCESS
		},
		DeviceGetHandleByIndexFunc: func(int) (nvml.Device, nvml.Return) { return dev, nvml.SUCCESS },
	}
}

func (c *card) set(f func(c *card)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c)
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func run(t *testing.T, lib nvml.Interface) (*Monitor, *logBuf) {
	t.Helper()
	return runEvery(t, lib, 10*time.Millisecond)
}

// runEvery runs a monitor polling at interval (a long one: readings only
// when a test asks with Fresh).
func runEvery(t *testing.T, lib nvml.Interface, interval time.Duration) (*Monitor, *logBuf) {
	t.Helper()
	logs := &logBuf{}
	m := New(lib, interval, slog.New(slog.NewTextHandler(logs, nil)))
	m.retry = 30 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m, logs
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReadings(t *testing.T) {
	c := &card{total: 4 * gib, used: gib, procs: []nvml.ProcessInfo{{Pid: 42, UsedGpuMemory: 900 << 20}}}
	m, _ := run(t, c.lib())
	waitFor(t, "a reading", func() bool { return m.Snapshot().Available })
	s := m.Snapshot()
	d, ok := s.Device(0)
	if !ok || d.MemoryTotal != 4*gib || d.MemoryUsed != gib || d.MemoryFree != 3*gib || d.MemoryReserved != 100<<20 ||
		d.UtilGPU != 0.87 || d.UtilMemory != 0.41 || len(d.Processes) != 1 || d.Processes[0].PID != 42 || s.Driver != "550.54.15" {
		t.Fatalf("snapshot %+v", s)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(m)
	want := `
# HELP llmlab_gpu_memory_free_bytes GPU memory free.
# TYPE llmlab_gpu_memory_free_bytes gauge
llmlab_gpu_memory_free_bytes{gpu="0"} 3.221225472e+09
# HELP llmlab_gpu_process_memory_bytes GPU memory of each compute process.
# TYPE llmlab_gpu_process_memory_bytes gauge
llmlab_gpu_process_memory_bytes{gpu="0",pid="42"} 9.437184e+08
# HELP llmlab_gpu_up 1 when the last NVML reading succeeded; 0 with no GPU, no driver or a failing GPU.
# TYPE llmlab_gpu_up gauge
llmlab_gpu_up 1
# HELP llmlab_gpu_utilization_ratio Share of the last sample period the GPU was busy.
# TYPE llmlab_gpu_utilization_ratio gauge
llmlab_gpu_utilization_ratio{gpu="0"} 0.87
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "llmlab_gpu_up", "llmlab_gpu_memory_free_bytes",
		"llmlab_gpu_utilization_ratio", "llmlab_gpu_process_memory_bytes"); err != nil {
		t.Fatal(err)
	}
	// Scrapes read the latest snapshot: a change shows at the next poll.
	c.set(func(c *card) { c.used = 3 * gib })
	waitFor(t, "the new reading", func() bool { d, _ := m.Snapshot().Device(0); return d.MemoryFree == gib })
}

// Without a driver: Init fails, nothing else is called (the mock panics if
// it is), the reason is logged once however often Init is retried, and the
// metrics say no GPU. Once the driver is there, readings follow.
func TestNoDriver(t *testing.T) {
	c := &card{total: 4 * gib, noDriver: true}
	m, logs := run(t, c.lib())
	waitFor(t, "three Init attempts", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.inits >= 3 })
	s := m.Snapshot()
	if s.Available || !strings.Contains(s.Reason, "no GPU") || !strings.Contains(s.Reason, "ERROR_LIBRARY_NOT_FOUND") {
		t.Fatalf("snapshot without a driver: %+v", s)
	}
	if n := strings.Count(logs.String(), "GPU readings unavailable"); n != 1 {
		t.Fatalf("the reason was logged %d times, want once:\n%s", n, logs)
	}
	if v := testutil.ToFloat64(upOnly{m}); v != 0 {
		t.Fatalf("llmlab_gpu_up %v without a driver", v)
	}
	c.set(func(c *card) { c.noDriver = false })
	waitFor(t, "readings once the driver is there", func() bool { return m.Snapshot().Available })
	if !strings.Contains(logs.String(), "GPU readings available") {
		t.Fatalf("no log line when readings came back:\n%s", logs)
	}
}

// A GPU lost mid-run: no GPU, NVML shut down, initialised again later.
func TestGPUVanishes(t *testing.T) {
	c := &card{total: 4 * gib}
	m, logs := run(t, c.lib())
	waitFor(t, "a reading", func() bool { return m.Snapshot().Available })
	c.set(func(c *card) { c.lost = true })
	waitFor(t, "no GPU", func() bool { return !m.Snapshot().Available })
	if r := m.Snapshot().Reason; !strings.Contains(r, "ERROR_GPU_IS_LOST") {
		t.Fatalf("reason %q", r)
	}
	c.mu.Lock()
	shut := c.shutdowns
	c.mu.Unlock()
	if shut == 0 {
		t.Fatal("NVML was not shut down after the GPU was lost")
	}
	c.set(func(c *card) { c.lost = false })
	waitFor(t, "the GPU back", func() bool { return m.Snapshot().Available })
	if !strings.Contains(logs.String(), "ERROR_GPU_IS_LOST") {
		t.Fatalf("the loss was not logged:\n%s", logs)
	}
}

// go-nvml's canned DGX H100: eight 80 GB cards.
func TestCannedDGXH100(t *testing.T) {
	srv := dgxh100.New()
	for _, d := range srv.Devices {
		dev := d.(*server.Device)
		dev.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) { return nvml.Memory_v2{}, nvml.ERROR_NOT_SUPPORTED }
		dev.GetUtilizationRatesFunc = func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{Gpu: 5}, nvml.SUCCESS }
		dev.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
		dev.GetProcessUtilizationFunc = func(uint64) ([]nvml.ProcessUtilizationSample, nvml.Return) {
			return nil, nvml.ERROR_NOT_SUPPORTED
		}
	}
	m, _ := run(t, srv)
	waitFor(t, "a reading", func() bool { return m.Snapshot().Available })
	s := m.Snapshot()
	if len(s.Devices) != 8 || !strings.Contains(s.Devices[0].Name, "H100") || s.Devices[7].MemoryTotal < 80e9 {
		t.Fatalf("snapshot of the DGX H100: %d devices, first %+v", len(s.Devices), s.Devices[0])
	}
	u, err := Utilization(4*gib, s.Devices[0].MemoryTotal, 0.9)
	if err != nil || u < 0.04 || u > 0.06 {
		t.Fatalf("a 4 GiB budget on an H100: %v %v", u, err)
	}
}

// upOnly collects llmlab_gpu_up alone.
type upOnly struct{ m *Monitor }

func (u upOnly) Describe(ch chan<- *prometheus.Desc) { ch <- descUp }
func (u upOnly) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric, 64)
	u.m.Collect(all)
	close(all)
	for m := range all {
		if m.Desc() == descUp {
			ch <- m
		}
	}
}

func TestUtilization(t *testing.T) {
	for _, tc := range []struct {
		budget, total uint64
		want          float64
		err           string
	}{
		{0, 16 * gib, 0.9, ""},
		{4 * gib, 16 * gib, 0.25, ""},
		{4 * gib, 80 * gib, 0.05, ""},
		{4 * gib, 4 * gib, 1, ""},
		{5 * gib, 4 * gib, 0, "gpu.memory_budget 5.00 GiB is more than the card's 4.00 GiB"},
		{3 * gib, 14 * gib, 0.2142, ""}, // rounded down: never more than the budget
	} {
		got, err := Utilization(tc.budget, tc.total, 0.9)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("Utilization(%d, %d) error %v, want %q", tc.budget, tc.total, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Utilization(%d, %d) = %v, %v; want %v", tc.budget, tc.total, got, err, tc.want)
		}
	}
}

func newAdmission(t *testing.T, m *Monitor, budget uint64) (*Admission, *[]string) {
	var refused []string
	return &Admission{Monitor: m, Budget: budget, Fraction: 0.9,
		ReleaseTimeout: time.Second, Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		OnRefuse: func(r string) { refused = append(refused, r) }}, &refused
}

func TestStartAdmission(t *testing.T) {
	c := &card{total: 16 * gib, used: 10 * gib, procs: []nvml.ProcessInfo{{Pid: 777, UsedGpuMemory: 10 * gib}}}
	m, _ := run(t, c.lib())
	waitFor(t, "a reading", func() bool { return m.Snapshot().Available })
	ctx := context.Background()

	// 0.9 of the card is not free: refused, naming the cause.
	a, refused := newAdmission(t, m, 0)
	err := a.BeforeStart(ctx)
	if err == nil || !strings.Contains(err.Error(), "6.00 GiB free of 16.00 GiB") || !strings.Contains(err.Error(), "needs 14.40 GiB") ||
		!strings.Contains(err.Error(), "PID 777 (10.00 GiB)") {
		t.Fatalf("BeforeStart with the card taken: %v", err)
	}
	if len(*refused) != 1 || (*refused)[0] != "gpu_memory" {
		t.Fatalf("refusals counted: %v", *refused)
	}

	// A 4 GiB budget fits: the share for this card is the engine's
	// environment (llmlabd writes it for the unit: cmd/llmlabd's tests).
	a, _ = newAdmission(t, m, 4*gib)
	if err := a.BeforeStart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := a.Env(); len(got) != 1 || got[0] != "LLMLAB_GPU_MEMORY_UTILIZATION=0.25" {
		t.Fatalf("Env() = %v", got)
	}

	// A budget larger than the card is refused with the numbers.
	a, _ = newAdmission(t, m, 20*gib)
	if err := a.BeforeStart(ctx); err == nil || !strings.Contains(err.Error(), "20.00 GiB is more than the card's 16.00 GiB") {
		t.Fatalf("a budget beyond the card: %v", err)
	}
}

// Without readings the start goes ahead (a laptop running the simulator),
// unless a budget was asked for, which cannot be honoured.
func TestStartWithoutGPU(t *testing.T) {
	c := &card{noDriver: true}
	m, _ := run(t, c.lib())
	waitFor(t, "a failed Init", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.inits > 0 })
	a, _ := newAdmission(t, m, 0)
	if err := a.BeforeStart(context.Background()); err != nil {
		t.Fatalf("no GPU, no budget: %v", err)
	}
	a, _ = newAdmission(t, m, 4*gib)
	if err := a.BeforeStart(context.Background()); err == nil || !strings.Contains(err.Error(), "cannot be read") {
		t.Fatalf("no GPU with a budget: %v", err)
	}
}

// After a stop, the wait ends when the engine's processes are gone and the
// memory is back; it is bounded when they never go.
func TestReleaseWait(t *testing.T) {
	c := &card{total: 16 * gib, used: gib}
	m, _ := run(t, c.lib())
	waitFor(t, "a reading", func() bool { return m.Snapshot().Available })
	ctx := context.Background()
	a, _ := newAdmission(t, m, 0)
	var release []bool
	a.OnRelease = func(_ time.Duration, ok bool) { release = append(release, ok) }
	if err := a.BeforeStart(ctx); err != nil {
		t.Fatal(err)
	}
	c.set(func(c *card) { c.used = 15 * gib; c.procs = []nvml.ProcessInfo{{Pid: 4242, UsedGpuMemory: 14 * gib}} })
	a.NoteRunning(ctx)
	// The engine exits; the driver frees its memory 300 ms later.
	go func() {
		time.Sleep(300 * time.Millisecond)
		c.set(func(c *card) { c.used = gib; c.procs = nil })
	}()
	t0 := time.Now()
	a.AfterStop(ctx)
	if took := time.Since(t0); took < 250*time.Millisecond || len(release) != 1 || !release[0] {
		t.Fatalf("AfterStop returned after %s (release %v); want after the memory was freed", took, release)
	}
	if d, _ := m.Snapshot().Device(0); d.MemoryUsed != gib {
		t.Fatalf("reported stopped with %s in use", GiB(d.MemoryUsed))
	}

	// Never released: the wait gives up at ReleaseTimeout.
	if err := a.BeforeStart(ctx); err != nil {
		t.Fatal(err)
	}
	c.set(func(c *card) { c.used = 15 * gib; c.procs = []nvml.ProcessInfo{{Pid: 5151, UsedGpuMemory: 14 * gib}} })
	a.NoteRunning(ctx)
	a.ReleaseTimeout = 200 * time.Millisecond
	t0 = time.Now()
	a.AfterStop(ctx)
	if took := time.Since(t0); took > 2*time.Second || len(release) != 2 || release[1] {
		t.Fatalf("AfterStop with the memory never released: %s, %v", took, release)
	}
}

// EngineMemory is the memory of the engine's own processes, those that
// appeared with its start, not another program's on the same card: the
// bound on the weights that the sleep ladder's level 1 checks the host
// against. With no engine recorded, or no GPU, it is not known.
func TestEngineMemory(t *testing.T) {
	c := &card{total: 16 * gib, used: 2 * gib, procs: []nvml.ProcessInfo{{Pid: 1000, UsedGpuMemory: 2 * gib}}}
	m, _ := run(t, c.lib())
	waitFor(t, "a reading", func() bool { return m.Snapshot().Available })
	ctx := context.Background()
	a, _ := newAdmission(t, m, 4*gib)
	if _, ok := a.EngineMemory(); ok {
		t.Fatal("EngineMemory before any start: known, want not")
	}
	if err := a.BeforeStart(ctx); err != nil {
		t.Fatal(err)
	}
	c.set(func(c *card) {
		c.used = 6 * gib
		c.procs = append(c.procs, nvml.ProcessInfo{Pid: 4242, UsedGpuMemory: 3 * gib})
	})
	a.NoteRunning(ctx)
	waitFor(t, "the engine's reading", func() bool { d, _ := m.Snapshot().Device(0); return len(d.Processes) == 2 })
	if got, ok := a.EngineMemory(); !ok || got != 3*gib {
		t.Fatalf("EngineMemory() = %s, %v; want the engine's 3.00 GiB, not the other program's", GiB(got), ok)
	}

	nc := &card{noDriver: true}
	nm, _ := run(t, nc.lib())
	na, _ := newAdmission(t, nm, 0)
	if _, ok := na.EngineMemory(); ok {
		t.Fatal("EngineMemory without a GPU: known, want not")
	}
}
