// The sweep: the points measured through one llmlabd, each reached by a
// reload, and the find-max search on each.

package tune

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/daemonproc"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/internal/progressline"
)

// measure runs the points through one llmlabd, reloading it for each.
func (o EngineOptions) measure(ctx context.Context, prof sim.Profile, engineName string, todo []Point, resultsPath string, done map[string]Result, perPoint time.Duration) error {
	dir, err := os.MkdirTemp("", "llmlab-tune-engine")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	base, engineURL, err := o.baseConfig(dir, prof)
	if err != nil {
		return err
	}
	if resp, err := http.Get(engineURL + "/health"); err == nil {
		resp.Body.Close()
		return fmt.Errorf("an engine already answers at %s: stop it (and llmlab.socket, llmlab.service) first, so that each point's engine is started with its knobs", engineURL)
	}
	// llmlabd's metrics listener, for its NVML readings (none on the
	// simulator): it binds a free port and says which (proc.Metrics).
	metricsListen := ""
	if o.Config != "" {
		metricsListen = daemonproc.Any
	}
	render := func(p Point, listen string) (string, error) {
		return renderConfig(base, p, listen, filepath.Join(dir, "state"), metricsListen, o.SLO.Latency, o.budget)
	}
	var listen string
	start := func(p Point) (*daemonproc.Proc, error) {
		return daemonproc.Run(ctx, o.Llmlabd, filepath.Join(dir, "llmlabd"), func(l string) string {
			listen = l
			c, _ := render(p, l)
			return c
		})
	}
	proc, err := start(todo[0])
	if err != nil {
		return err
	}
	defer func() {
		if proc != nil {
			proc.Stop()
		}
	}()
	client := bench.NewClient(2048)
	// The progress: in place on a terminal, else a plain line for each
	// step (a start, a probe), which come seconds apart.
	var line *progressline.Line
	if o.Progress != nil {
		line = progressline.New(o.Progress, 0)
	}
	began := time.Now()
	prevEngine, prevFailure := "", ""
	lastRate := o.StartRate
	measured := 0
	for i, p := range todo {
		if o.MaxTime > 0 && time.Since(began) > o.MaxTime {
			return fmt.Errorf("stopped at --max-time %s with %d of %d points measured; run the same command again to resume", o.MaxTime, i, len(todo))
		}
		eta := time.Duration(len(todo)-i) * perPoint
		if measured > 0 {
			eta = time.Since(began) / time.Duration(measured) * time.Duration(len(todo)-i)
		}
		progress := func(what string) {
			if line != nil {
				line.Show(fmt.Sprintf("%s %d/%d  elapsed %s  ETA %s  %s: %s", bar(i, len(todo)), i, len(todo),
					time.Since(began).Round(time.Second), eta.Round(time.Second), p.Key(), what))
			}
		}
		progress("starting")
		t0 := time.Now()
		r := Result{Point: p, Engine: engineName}
		if plan, err := prof.Plan(p.GPUMemoryUtilization, p.MaxNumSeqs, p.MaxNumBatchedTokens, p.MaxModelLen); err == nil {
			r.KVTokens = int64(plan.KVBlocks) * sim.BlockSize
			r.EngineMemory, r.MemorySource = plan.Share, "plan"
		}
		conf, err := render(p, listen)
		if err == nil {
			_, err = config.Parse(proc.Config, []byte(conf))
		}
		switch {
		case err != nil:
			r.Status, r.Reason = StatusRefused, "llmlabd's configuration: "+err.Error()
		case p.engineKey() == prevEngine && prevFailure != "":
			r.Status, r.Reason = StatusCrashed, prevFailure
		default:
			fresh := i == 0
			if i > 0 && p.modeKey() != todo[i-1].modeKey() {
				// The limit's mode is read at llmlabd's start only (a
				// reload keeps it): a new llmlabd, and so a new engine.
				proc.Stop()
				if proc, err = start(p); err != nil {
					return err
				}
				fresh = true
			}
			restart := fresh || p.engineKey() != prevEngine
			startSecs, failure, err := o.switchTo(ctx, proc, conf, fresh, restart)
			if err != nil {
				return err
			}
			if failure != "" {
				failure += engineLastWords(proc.Log)
			}
			prevEngine, prevFailure = p.engineKey(), failure
			r.StartSeconds = startSecs
			if failure != "" {
				r.Status, r.Reason = StatusCrashed, failure
				break
			}
			r.Status = StatusOK
			r.EngineKVTokens, r.EngineMaxModelLen = engineReports(engineURL)
			o.findMax(ctx, client, proc.URL, engineURL, proc.Metrics, &r, lastRate, progress)
			if st, err := fetchStatus(proc.URL); err == nil {
				r.Concurrency, r.FinalLimit = st.Limits.Concurrency, st.Queue.Limit
			}
			if f := lastFailureSince(proc.URL, t0); f != "" {
				f += engineLastWords(proc.Log)
				r.Status, r.Reason = StatusCrashed, "during the measurement: "+f
				prevFailure = f
			}
			if r.Sustainable > 0 {
				lastRate = r.Sustainable
			}
			measured++
		}
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted at point %d of %d (not recorded); run the same command again to resume", i+1, len(todo))
		}
		r.Seconds = time.Since(t0).Seconds()
		if err := appendResult(resultsPath, r); err != nil {
			return err
		}
		done[p.Key()] = r
		if line != nil {
			line.Clear()
		}
		fmt.Fprintf(o.Out, "%s: %s\n", p.Key(), summaryLine(r))
	}
	return nil
}

func bar(i, n int) string {
	const width = 20
	filled := width * i / max(n, 1)
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

func summaryLine(r Result) string {
	switch r.Status {
	case StatusOK:
		s := r.Summary
		return fmt.Sprintf("%.2f req/s sustainable; goodput %.2f, p95 %s, TTFT p95 %s (%d probes)", r.Sustainable, s.Goodput,
			s.Latency.P95.Round(10*time.Millisecond), s.TTFT.P95.Round(10*time.Millisecond), len(r.Probes))
	default:
		return r.Status + ": " + r.Reason
	}
}

// switchTo puts llmlabd on the point's configuration: the first point's
// llmlabd is already running it; later ones are reloaded. When the engine
// is (re)started, it waits for the start to end and returns how long it
// took, or why it failed.
func (o EngineOptions) switchTo(ctx context.Context, proc *daemonproc.Proc, conf string, first, restart bool) (float64, string, error) {
	st, err := fetchStatus(proc.URL)
	if err != nil {
		return 0, "", fmt.Errorf("llmlabd's /status: %w", err)
	}
	if !first {
		if err := proc.Reload(conf); err != nil {
			return 0, "", err
		}
		deadline := time.Now().Add(30 * time.Second)
		for before := st.Config.LoadedAt; ; {
			// A /status that does not answer for a moment is no sign
			// that the new configuration is in.
			if st, err = fetchStatus(proc.URL); err == nil && !st.Config.LoadedAt.Equal(before) {
				break
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(proc.Log)
				return 0, "", fmt.Errorf("llmlabd did not take the point's configuration within 30s:\n%s", tail(log, 2000))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !restart {
		return 0, "", nil
	}
	since := st.Config.LoadedAt
	// A request asks for the engine (the first point's is not started
	// yet); it waits through the start as any arrival does.
	go func() {
		body := `{"model":"` + model + `","prompt":"x","max_tokens":1}`
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, proc.URL+"/v1/completions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	// llmlabd fails a start that takes longer than engine.start_timeout
	// (at most 10 minutes by default); this bound only catches an
	// llmlabd that stopped answering.
	deadline := time.Now().Add(15 * time.Minute)
	for ctx.Err() == nil {
		st, err := fetchStatus(proc.URL)
		if err != nil && !proc.Running() {
			log, _ := os.ReadFile(proc.Log)
			return 0, "", fmt.Errorf("llmlabd exited during the sweep:\n%s", tail(log, 2000))
		}
		if time.Now().After(deadline) {
			return 0, "", errors.New("the engine neither started nor failed within 15 minutes, and llmlabd says nothing of it")
		}
		lc := lifecycle(st)
		if lc.LastFailure != "" && lc.LastFailureAt.After(since) {
			return 0, lc.LastFailure, nil
		}
		if lc.State == "ready" && lc.LastStart.After(since) {
			return lc.LastStartSeconds, "", nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return 0, "", ctx.Err()
}

// findMax runs the find-max search on the point and records its probes
// and the best passing one.
func (o EngineOptions) findMax(ctx context.Context, client *http.Client, gw, engineURL, metricsAddr string, r *Result, start float64, progress func(string)) {
	var peak float64
	best := -1.0
	pass := func(rate float64) bool {
		if ctx.Err() != nil {
			return false
		}
		progress(fmt.Sprintf("probe at %.2f req/s", rate))
		opt := bench.Options{Target: gw, Model: model, Stream: true, PromptTokens: 200, MaxTokens: 200, Rate: rate, Poisson: true,
			Seed: uint64(len(r.Probes) + 1), Warmup: o.Warmup, Duration: o.probeDuration(rate), Timeout: 60 * time.Second}
		stopMem := make(chan float64)
		memCtx, stopPoll := context.WithCancel(ctx)
		go func() { stopMem <- pollMemory(memCtx, metricsAddr) }()
		steps0, onTime0, lagOK := bench.LagSnapshot(engineURL + "/metrics")
		samples, _ := bench.Run(ctx, client, opt)
		steps1, onTime1, _ := bench.LagSnapshot(engineURL + "/metrics")
		stopPoll()
		peak = max(peak, <-stopMem)
		s := bench.Summarize(samples, opt.Duration, o.SLO)
		probe := Probe{Rate: rate, Seconds: opt.Duration.Seconds(), Requests: s.Requests, Goodput: s.Goodput, P95: s.Latency.P95, Errors: s.ErrorRate}
		probe.Pass = s.Pass
		if lagOK {
			if lag := bench.CheckLag(steps0, onTime0, steps1, onTime1); lag.Checked && !lag.Valid {
				probe.Invalid, probe.Pass = true, false
			}
		}
		r.Probes = append(r.Probes, probe)
		if probe.Pass && rate > best {
			best, r.Summary = rate, s
		}
		bench.Drain(ctx, engineURL+"/metrics", 2*time.Minute)
		return probe.Pass
	}
	// Half the previous point's result: a first probe that fails leaves
	// only the bisection below it, so it had better pass.
	r.Sustainable = bench.FindMax(max(start*0.5, 0.05), o.MaxRate, o.Precision, pass)
	if peak > 0 {
		r.EngineMemory, r.MemorySource = int64(peak), "nvml"
	}
}

// probeDuration is a probe's measurement at rate: Duration, or longer
// where MinRequests need it.
func (o EngineOptions) probeDuration(rate float64) time.Duration {
	d := o.Duration
	if o.MinRequests > 0 && rate > 0 {
		d = max(d, time.Duration(float64(o.MinRequests)/rate*float64(time.Second)))
	}
	return d
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
