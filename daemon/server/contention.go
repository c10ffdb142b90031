package server

import (
	"context"
	"log/slog"
	"time"
)

// contentionSource says how much the GPU's other work slows the engine
// (gpu.Admission).
type contentionSource interface {
	Contention() (factor, foreign float64)
}

// contentionSink is the engine model, told it.
type contentionSink interface {
	SetContention(factor float64)
}

// contentionFromGPU tells the engine model, at every GPU reading, how much
// the card's other compute processes slow the engine (NVML's per-process
// utilisation: daemon/gpu's Contention), until ctx ends. Admission then
// predicts the slower engine at once, refusing and limiting for it, and
// stops doing so as soon as the other work ends; the model keeps learning
// the engine alone. It logs when other work starts and stops slowing the
// engine by a tenth or more. While on() is false (gpu.contention, read at
// each reading: a reload turns it off or on) the model expects the engine
// alone.
func contentionFromGPU(ctx context.Context, log *slog.Logger, src contentionSource, model contentionSink, on func() bool, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	slowed := false
	for {
		f, foreign := src.Contention()
		if !on() {
			f = 1
		}
		model.SetContention(f)
		switch {
		case f >= 1.1 && !slowed:
			log.Info("other work on the GPU slows the engine; admission expects it", "factor", f, "others_sm_share", foreign)
			slowed = true
		case f < 1.05 && slowed:
			log.Info("the engine has the GPU to itself again", "factor", f)
			slowed = false
		}
		select {
		case <-ctx.Done():
			model.SetContention(1)
			return
		case <-t.C:
		}
	}
}
