package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// limitSetter is what the model's limit loop drives.
type limitSetter interface {
	Model() *enginemodel.Model
	Level() float64
	SetLimit(n int)
	SampleProgress(now time.Time)
}

// modelLimit is the in-flight limit chosen from the engine model under
// cfg (queue.concurrency = "model"), predicting at admission's level: the
// largest concurrency whose typical request's tail time stays within the
// target (queue.target_latency, or the objective itself: admission judges
// every request, so a limit below what the objective allows would only
// make requests wait that the engine could run; none without an
// objective), never past the engine's knee, between queue.min_inflight and
// queue.max_inflight, and never above engine.max_num_seqs, what vLLM runs
// at once, where it is set.
func modelLimit(m *enginemodel.Model, cfg *config.Config, level float64) int {
	target := cfg.Queue.TargetLatency
	if target == 0 {
		target = cfg.SLO.Latency
	}
	hi := cfg.Queue.MaxInflight
	if s := cfg.Engine.MaxNumSeqs; s > 0 && s < hi {
		hi = s
	}
	return m.Limit(target, cfg.Queue.MinInflight, hi, level)
}

// limitFromModel sets the in-flight limit from the engine model every
// interval, as the model learns, until ctx ends; it logs the model at
// debug level every 10 s. Before each choice the running requests'
// streams teach the model the time per token now (SampleProgress). A short
// interval lets the limit follow the first tokens of a burst (Model.FirstToken)
// while the burst lasts, and the model follow the limit.
func limitFromModel(ctx context.Context, log *slog.Logger, gw limitSetter, cfg func() *config.Config, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	last := 0
	logEvery := max(int(10*time.Second/every), 1)
	for tick := 0; ; tick++ {
		gw.SampleProgress(time.Now())
		n := modelLimit(gw.Model(), cfg(), gw.Level())
		if n != last {
			gw.SetLimit(n)
			log.Debug("in-flight limit from the engine model", "limit", n, "was", last)
			last = n
		}
		if tick%logEvery == 0 && log.Enabled(ctx, slog.LevelDebug) {
			st := gw.Model().Status()
			log.Debug("engine model", "limit", n, "level", gw.Level(), "observed", st.Observed, "tpot", st.TPOTSeconds,
				"tpot_per_step_token", st.TPOTPerToken, "ttft", st.TTFTSeconds, "ttft_per_sequence", st.TTFTPerSequence,
				"spread_p95", st.Spread, "knee", st.Knee)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
