package gpu

import "slices"

// busyShare is the SM share from which another process counts as one more
// context the GPU time-slices with the engine's.
const busyShare = 0.05

// Contention is how much the card's other work slows the engine now: the
// factor by which the engine's steps take longer than they would alone
// (1: nothing else runs), and the share of the SMs the other compute
// processes took since the last reading.
//
// Without MPS or MIG a GPU time-slices between the contexts that have work:
// with k other busy processes the engine gets, at worst, one slice in k+1.
// The others' measured share f says how much of the time they took; while
// the engine computes too, that is the time it lost, so its steps take
// 1/(1-f) as long, never more than k+1 times (a busy process beside an
// idle engine shows f near 1, though it would only take half the time from
// one that computes). It is 1 where it cannot be told: the engine not
// running (its processes are known only once it is ready), no readings, or
// a device that does not report per-process utilisation.
func (a *Admission) Contention() (factor, foreign float64) {
	a.mu.Lock()
	engine := slices.Clone(a.engine)
	a.mu.Unlock()
	s := a.Monitor.Snapshot()
	d, ok := s.Device(a.Device)
	if len(engine) == 0 || !s.Available || !ok || !d.ProcessUtilOK {
		return 1, 0
	}
	busy := 0
	for _, p := range d.Processes {
		if slices.Contains(engine, p.PID) {
			continue
		}
		foreign += p.SMUtil
		if p.SMUtil >= busyShare {
			busy++
		}
	}
	foreign = min(foreign, 1)
	if busy == 0 {
		return 1, foreign
	}
	k := float64(busy)
	return 1 / (1 - min(foreign, k/(k+1))), foreign
}
