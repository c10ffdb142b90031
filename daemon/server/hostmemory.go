package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/llmlab/llmlab/daemon/gpu"
)

// hostMemory is what the sleep ladder's level 1 is checked against: vLLM's
// sleep level 1 copies the weights into pinned host memory (a CPU backup of
// every allocation tagged "weights": vllm/device_allocator/cumem.py,
// CuMemAllocator.sleep), so the host must have room for them.
//
// What llmlabd can know of the weights' size: vLLM's /metrics has no series
// for it (vllm/v1/metrics/loggers.py), and its "Model loading took N GiB"
// is a log line. NVML gives the GPU memory of the engine's own processes:
// the weights, the KV cache, activations and CUDA graphs together, so a
// bound that never understates the weights (and overstates them most on a
// large card whose share is mostly KV cache). Level 1 is chosen only when
// the host's MemAvailable holds that bound with a tenth of the host's
// memory to spare; otherwise the engine sleeps at level 2, which is slower
// to wake but never takes the host's memory. Without an NVML reading of
// the engine (gpu.enabled = false, no driver) there is no bound, and the
// engine sleeps at level 1 unchecked, as llmlabd did before the ladder.
type hostMemory struct {
	// meminfo is /proc/meminfo.
	meminfo string
	// engineGPU is the engine's GPU memory (gpu.Admission.EngineMemory);
	// nil without NVML.
	engineGPU func() (uint64, bool)
}

// hostHoldsWeights is the supervisor's HostHoldsWeights: nil when level 1
// may go ahead, else why the host cannot hold the weights now.
func (d *daemon) hostHoldsWeights(context.Context) error {
	h := d.host
	var weights uint64
	ok := false
	if h.engineGPU != nil {
		weights, ok = h.engineGPU()
	}
	if !ok {
		d.log.Info("sleeping at level 1 unchecked: no GPU reading bounds the engine's weights")
		return nil
	}
	avail, total, err := readMeminfo(h.meminfo)
	if err != nil {
		return fmt.Errorf("the host's free memory cannot be read (%w)", err)
	}
	return holdsWeights(avail, total, weights)
}

// holdsWeights says whether a host with avail of total bytes available
// holds weights with a tenth of total to spare.
func holdsWeights(avail, total, weights uint64) error {
	spare := total / 10
	if avail >= weights+spare {
		return nil
	}
	return fmt.Errorf("the host has %s available (MemAvailable) of %s; sleep level 1 would copy up to %s of weights into it "+
		"(the engine's GPU memory, NVML's reading, bounds them) and leave less than a tenth of the host's memory (%s) free",
		gpu.GiB(avail), gpu.GiB(total), gpu.GiB(weights), gpu.GiB(spare))
}

// readMeminfo reads MemAvailable and MemTotal, in bytes, from a file in
// /proc/meminfo's format ("MemAvailable:   123456 kB").
func readMeminfo(path string) (avail, total uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var haveAvail, haveTotal bool
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "MemAvailable" && name != "MemTotal") {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, 0, fmt.Errorf("%s: %s: want a number of kB, got %q", path, name, strings.TrimSpace(rest))
		}
		kb, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %s: %w", path, name, err)
		}
		if name == "MemAvailable" {
			avail, haveAvail = kb<<10, true
		} else {
			total, haveTotal = kb<<10, true
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if !haveAvail || !haveTotal {
		return 0, 0, errors.New(path + " has no MemAvailable or MemTotal")
	}
	return avail, total, nil
}
