// This file is llmlab tune-engine, one command: its types, the sweep, the
// probes, the generated configurations, the results store and the report
// are the steps of one run and share its types. It is longer than the
// house's files; issue 24 splits it by step.

package tune

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/daemonproc"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/daemon/config"
)

// EngineOptions configure a sweep over the engine's knobs and llmlab's
// (llmlab tune-engine). Every point goes through llmlabd: tune writes
// llmlabd's configuration and reloads it, and llmlabd restarts the engine
// with the point's knobs, as it would for an operator's reload.
type EngineOptions struct {
	Llmlabd string
	// Tool is the llmlab binary, whose simulator is the engine when Config
	// is empty.
	Tool string
	// Profile is the card's memory model for the KV-cache arithmetic, and
	// the simulated engine when Config is empty.
	Profile string
	// GPUMemoryGiB overrides the profile's card memory (0: the profile's).
	GPUMemoryGiB float64
	// SimArgs are more flags for the simulator (its card, its costs).
	SimArgs []string
	// StartupDelay is the simulator's start time.
	StartupDelay time.Duration
	// Config is an llmlabd configuration to tune instead of the simulator:
	// its engine (engine.command or engine.unit), with tune's points.
	Config string
	Grid   Grid
	// Warmup and Duration are each find-max probe's; StartRate the first
	// probe's rate, Precision find-max's. MinRequests lengthens a probe
	// at a low rate until it holds that many requests: the SLO is a 95th
	// percentile and an error rate, and forty requests judge neither.
	Warmup, Duration time.Duration
	MinRequests      int
	StartRate        float64
	MaxRate          float64
	Precision        float64
	SLO              bench.SLO
	// MaxTime bounds the sweep: a grid estimated to take longer is refused
	// before it starts, and a sweep that runs past it stops (resumable).
	MaxTime time.Duration
	// Results is the folder the points are appended to (points.jsonl); a
	// sweep started again on it skips the points already there.
	Results string
	// Apply writes the best point into ApplyConfig (llmlab.toml) and
	// takes the tuned flags out of EngineEnv's LLMLAB_VLLM_ARGS, keeping
	// backups of both.
	Apply       bool
	ApplyConfig string
	EngineEnv   string
	// Report prints the table of every point recorded in Results for
	// this engine (several sweeps' grids together), measuring nothing.
	Report bool
	Out    io.Writer
	// Progress gets the progress bar (nil: none).
	Progress io.Writer

	budget uint64 // the tuned configuration's gpu.memory_budget
}

// Grid is the sweep's values; every combination is a point.
type Grid struct {
	MaxNumSeqs           []int
	MaxNumBatchedTokens  []int
	MaxModelLen          []int
	GPUMemoryUtilization []float64
	// Inflight is llmlabd's in-flight limit: "seqs" (max_num_seqs),
	// "model" (chosen from the engine model, up to max_num_seqs), or a
	// number.
	Inflight    []string
	BatchWindow []time.Duration
}

// Point is one combination of the knobs.
type Point struct {
	MaxNumSeqs           int           `json:"max_num_seqs"`
	MaxNumBatchedTokens  int           `json:"max_num_batched_tokens"`
	MaxModelLen          int           `json:"max_model_len"`
	GPUMemoryUtilization float64       `json:"gpu_memory_utilization"`
	Inflight             string        `json:"inflight"`
	BatchWindow          time.Duration `json:"batch_window_ns"`
}

// Key names a point in the results file.
func (p Point) Key() string {
	return fmt.Sprintf("seqs=%d batched=%d len=%d util=%g inflight=%s window=%s", p.MaxNumSeqs, p.MaxNumBatchedTokens, p.MaxModelLen,
		p.GPUMemoryUtilization, p.Inflight, p.BatchWindow)
}

func (p Point) engineKey() string {
	return fmt.Sprintf("%d/%d/%d/%g", p.MaxNumSeqs, p.MaxNumBatchedTokens, p.MaxModelLen, p.GPUMemoryUtilization)
}

// modeKey is what of the point llmlabd reads only when it starts: the
// in-flight limit's mode (queue.concurrency; the model's floor,
// queue.min_inflight, follows a reload).
func (p Point) modeKey() string {
	conc, _ := p.limit()
	return conc
}

// limit is the point's queue settings.
func (p Point) limit() (concurrency string, maxInflight int) {
	switch p.Inflight {
	case "seqs":
		return "fixed", p.MaxNumSeqs
	case "model":
		return "model", p.MaxNumSeqs
	}
	n, _ := strconv.Atoi(p.Inflight)
	return "fixed", n
}

// Point outcomes.
const (
	StatusOK      = "ok"      // measured
	StatusRefused = "refused" // the memory plan (or the configuration) cannot work: never started
	StatusCrashed = "crashed" // the engine failed to start, or died during the measurement
)

// Probe is one find-max step.
type Probe struct {
	Rate     float64       `json:"rate"`
	Seconds  float64       `json:"seconds"`
	Requests int           `json:"requests"`
	Pass     bool          `json:"pass"`
	Goodput  float64       `json:"goodput"`
	P95      time.Duration `json:"p95_ns"`
	Errors   float64       `json:"error_rate"`
	Invalid  bool          `json:"invalid,omitempty"` // the simulator lagged
}

// Result is a point's outcome.
type Result struct {
	Point
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Engine is what was tuned: "simulated <profile>" or the config file.
	Engine string `json:"engine"`
	// Sustainable is the highest rate that met the SLO (find-max), and
	// Summary that probe's figures.
	Sustainable float64       `json:"sustainable_rps"`
	Summary     bench.Summary `json:"summary"`
	Probes      []Probe       `json:"probes"`
	// KVTokens is the memory plan's KV cache; EngineMemory the engine's
	// memory, from NVML's peak (MemorySource "nvml") or the plan's share
	// ("plan": what vLLM takes at start).
	KVTokens     int64  `json:"kv_tokens"`
	EngineMemory int64  `json:"engine_memory_bytes"`
	MemorySource string `json:"memory_source"`
	// EngineKVTokens and EngineMaxModelLen are what the engine reported
	// once started: vllm:cache_config_info's num_gpu_blocks x block_size,
	// and /v1/models' max_model_len (0: not reported).
	EngineKVTokens    int64 `json:"engine_kv_tokens,omitempty"`
	EngineMaxModelLen int   `json:"engine_max_model_len,omitempty"`
	// Concurrency and FinalLimit are llmlabd's in-flight mode and limit
	// at the end of the point, from its /status.
	Concurrency  string  `json:"concurrency,omitempty"`
	FinalLimit   int     `json:"final_limit,omitempty"`
	StartSeconds float64 `json:"start_seconds,omitempty"`
	Seconds      float64 `json:"seconds"`
}

// Points expands the grid, the engine's knobs outermost so that
// consecutive points share an engine start where they can.
func (g Grid) Points() []Point {
	var out []Point
	for _, s := range g.MaxNumSeqs {
		for _, b := range g.MaxNumBatchedTokens {
			for _, l := range g.MaxModelLen {
				for _, u := range g.GPUMemoryUtilization {
					for _, i := range g.Inflight {
						for _, w := range g.BatchWindow {
							out = append(out, Point{s, b, l, u, i, w})
						}
					}
				}
			}
		}
	}
	return out
}

// RunEngine runs the sweep and returns every point's result (those resumed
// included), in grid order.
func RunEngine(ctx context.Context, o EngineOptions) ([]Result, error) {
	prof, ok := sim.Profiles[o.Profile]
	if !ok {
		return nil, fmt.Errorf("--profile %q: want one of %s", o.Profile, sim.ProfileNames())
	}
	if o.GPUMemoryGiB > 0 {
		prof.GPUMemory = int64(o.GPUMemoryGiB * (1 << 30))
	}
	if o.Config != "" {
		cfg, err := config.Load(o.Config, true)
		if err != nil {
			return nil, err
		}
		if b := cfg.GPU.MemoryBudget; b > 0 {
			// The engine's share is a budget, whatever the card: the
			// points' utilisation is of the budget, and the plan's card
			// is the budget.
			o.budget, prof.GPUMemory = b, int64(b)
			fmt.Fprintf(o.Out, "%s sets gpu.memory_budget %.2f GiB: each point's gpu_memory_utilization is a share of that budget\n", o.Config, float64(b)/(1<<30))
		}
	}
	for _, v := range o.Grid.Inflight {
		if n, err := strconv.Atoi(v); v != "seqs" && v != "model" && (err != nil || n < 1) {
			return nil, fmt.Errorf("--inflight %q: want seqs, model or a positive number", v)
		}
	}
	engineName := "simulated " + prof.Name
	if o.Config != "" {
		engineName = o.Config
	}
	points := o.Grid.Points()
	if err := os.MkdirAll(o.Results, 0o755); err != nil {
		return nil, err
	}
	resultsPath := filepath.Join(o.Results, "points.jsonl")
	done, err := readResults(resultsPath)
	if err != nil {
		return nil, err
	}
	if o.Report {
		var all []Result
		for _, r := range done {
			if r.Engine == engineName {
				all = append(all, r)
			}
		}
		slices.SortFunc(all, func(a, b Result) int {
			return cmp.Or(cmp.Compare(a.MaxNumSeqs, b.MaxNumSeqs), cmp.Compare(a.MaxNumBatchedTokens, b.MaxNumBatchedTokens),
				cmp.Compare(a.MaxModelLen, b.MaxModelLen), cmp.Compare(a.GPUMemoryUtilization, b.GPUMemoryUtilization),
				cmp.Compare(a.Inflight, b.Inflight), cmp.Compare(a.BatchWindow, b.BatchWindow))
		})
		if len(all) == 0 {
			return nil, fmt.Errorf("--report: %s holds no point measured on %s", resultsPath, engineName)
		}
		o.report(all, prof)
		return all, nil
	}
	if err := appendFile(filepath.Join(o.Results, "command.txt"), strings.Join(os.Args, " ")+"\n"); err != nil {
		return nil, err
	}

	// The memory plan first: points that cannot fit are refused, never
	// started.
	var todo []Point
	resumed := 0
	for _, p := range points {
		if r, ok := done[p.Key()]; ok && r.Engine == engineName {
			resumed++
			continue
		}
		if _, err := prof.Plan(p.GPUMemoryUtilization, p.MaxNumSeqs, p.MaxNumBatchedTokens, p.MaxModelLen); err != nil {
			r := Result{Point: p, Engine: engineName, Status: StatusRefused, Reason: "memory plan: " + err.Error()}
			if err := appendResult(resultsPath, r); err != nil {
				return nil, err
			}
			done[p.Key()] = r
			fmt.Fprintf(o.Out, "refused before starting: %s: %s\n", p.Key(), r.Reason)
			continue
		}
		todo = append(todo, p)
	}
	perPoint := o.pointEstimate(prof)
	estimate := time.Duration(len(todo)) * perPoint
	fmt.Fprintf(o.Out, "%d points: %d resumed from %s, %d refused by the memory plan, %d to measure; estimated %s (%s each: engine start, about %d find-max probes of %s + %s)\n",
		len(points), resumed, resultsPath, len(points)-resumed-len(todo), len(todo), estimate.Round(time.Second), perPoint.Round(time.Second),
		probesEstimate, o.Warmup, o.probeDuration(o.StartRate).Round(time.Second))
	if o.MaxTime > 0 && estimate > o.MaxTime {
		fits := int(o.MaxTime / perPoint)
		return nil, fmt.Errorf("the sweep is estimated at %s, more than --max-time %s (about %d of its %d points fit): narrow the grid, shorten --duration, or raise --max-time",
			estimate.Round(time.Second), o.MaxTime, fits, len(todo))
	}
	if len(todo) > 0 {
		if err := o.measure(ctx, prof, engineName, todo, resultsPath, done, perPoint); err != nil {
			return collect(points, done), err
		}
	}
	results := collect(points, done)
	o.report(results, prof)
	if o.Apply {
		best, ok := Best(results)
		if !ok {
			return results, errors.New("--apply: no point met the SLO")
		}
		if err := o.apply(best); err != nil {
			return results, err
		}
	}
	return results, nil
}

// probesEstimate is how many find-max probes a point is expected to take.
const probesEstimate = 6

func (o EngineOptions) pointEstimate(prof sim.Profile) time.Duration {
	start := prof.StartupDelay
	if o.Config == "" {
		start = o.StartupDelay
	}
	return start + 5*time.Second + probesEstimate*(o.Warmup+o.probeDuration(o.StartRate)+3*time.Second)
}

func collect(points []Point, done map[string]Result) []Result {
	var out []Result
	for _, p := range points {
		if r, ok := done[p.Key()]; ok {
			out = append(out, r)
		}
	}
	return out
}

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
	metricsAddr := ""
	if o.Config != "" {
		metricsAddr = freeAddr()
	}
	render := func(p Point, listen string) (string, error) {
		return renderConfig(base, p, listen, filepath.Join(dir, "state"), metricsAddr, o.SLO.Latency, o.budget)
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
			if o.Progress != nil {
				fmt.Fprintf(o.Progress, "\r\033[K%s %d/%d  elapsed %s  ETA %s  %s: %s", bar(i, len(todo)), i, len(todo),
					time.Since(began).Round(time.Second), eta.Round(time.Second), p.Key(), what)
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
			o.findMax(ctx, client, proc.URL, engineURL, metricsAddr, &r, lastRate, progress)
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
		if o.Progress != nil {
			fmt.Fprint(o.Progress, "\r\033[K")
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
		lc := st.Engine.Lifecycle
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

// pollMemory is the highest GPU memory in use that llmlabd's NVML readings
// show until ctx ends (0: none; the simulator has no GPU).
func pollMemory(ctx context.Context, metricsAddr string) float64 {
	if metricsAddr == "" {
		return 0
	}
	peak := 0.0
	for {
		if v, ok := metricValue("http://"+metricsAddr+"/metrics", "llmlab_gpu_memory_used_bytes"); ok {
			peak = max(peak, v)
		}
		select {
		case <-ctx.Done():
			return peak
		case <-time.After(time.Second):
		}
	}
}

// metricValue sums the series of the gauge, counter or untyped metric
// name that url serves; ok is false when it serves none.
func metricValue(url, name string) (sum float64, ok bool) {
	fams, err := bench.Scrape(url)
	if err != nil || fams[name] == nil {
		return 0, false
	}
	for _, m := range fams[name].Metric {
		sum += m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
	}
	return sum, len(fams[name].Metric) > 0
}

// engineReports reads what a started engine says of itself, as vLLM
// reports it: its KV cache (vllm:cache_config_info's num_gpu_blocks and
// block_size labels: vllm/config/cache.py, metrics_info) and its context
// length (/v1/models' max_model_len).
func engineReports(engineURL string) (kvTokens int64, maxModelLen int) {
	if fams, err := bench.Scrape(engineURL + "/metrics"); err == nil {
		if f := fams["vllm:cache_config_info"]; f != nil && len(f.Metric) > 0 {
			labels := map[string]string{}
			for _, l := range f.Metric[0].Label {
				labels[l.GetName()] = l.GetValue()
			}
			blocks, _ := strconv.ParseInt(labels["num_gpu_blocks"], 10, 64)
			size, _ := strconv.ParseInt(labels["block_size"], 10, 64)
			kvTokens = blocks * size
		}
	}
	if resp, err := http.Get(engineURL + "/v1/models"); err == nil {
		var m struct {
			Data []struct {
				MaxModelLen int `json:"max_model_len"`
			} `json:"data"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if len(m.Data) > 0 {
			maxModelLen = m.Data[0].MaxModelLen
		}
	}
	return kvTokens, maxModelLen
}

// engineLastWords is the last output of the engine that llmlabd logged as
// it exited (last_output, from the exec backend), as ": <line>".
func engineLastWords(logPath string) string {
	data, _ := os.ReadFile(logPath)
	lines := strings.Split(string(data), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		_, after, ok := strings.Cut(lines[i], "last_output=")
		if !ok || !strings.Contains(lines[i], "engine exited") {
			continue
		}
		if q, err := strconv.QuotedPrefix(after); err == nil {
			after, _ = strconv.Unquote(q)
		} else {
			after, _, _ = strings.Cut(after, " ")
		}
		return ": " + after
	}
	return ""
}

type daemonStatus struct {
	Config struct {
		LoadedAt time.Time `json:"loaded_at"`
	} `json:"config"`
	Limits struct {
		Concurrency string `json:"concurrency"`
	} `json:"limits"`
	Queue struct {
		Limit int `json:"inflight_limit"`
	} `json:"queue"`
	Engine struct {
		Lifecycle struct {
			State            string    `json:"state"`
			LastStart        time.Time `json:"last_start"`
			LastStartSeconds float64   `json:"last_start_seconds"`
			LastFailure      string    `json:"last_failure"`
			LastFailureAt    time.Time `json:"last_failure_at"`
		} `json:"lifecycle"`
	} `json:"engine"`
}

func fetchStatus(gw string) (daemonStatus, error) {
	var st daemonStatus
	resp, err := http.Get(gw + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET %s/status: %s", gw, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// lastFailureSince is the engine's failure after t, if any. An llmlabd
// that does not answer says none; the next point's switch finds it gone.
func lastFailureSince(gw string, t time.Time) string {
	st, err := fetchStatus(gw)
	if err != nil {
		return ""
	}
	if lc := st.Engine.Lifecycle; lc.LastFailure != "" && lc.LastFailureAt.After(t) {
		return lc.LastFailure
	}
	return ""
}

// baseConfig is the configuration every point starts from, and the
// engine's URL: the simulator behind llmlabd, or the operator's file.
func (o EngineOptions) baseConfig(dir string, prof sim.Profile) (map[string]any, string, error) {
	if o.Config != "" {
		base := map[string]any{}
		if _, err := toml.DecodeFile(o.Config, &base); err != nil {
			return nil, "", fmt.Errorf("--config: %w", err)
		}
		cfg, err := config.Load(o.Config, true)
		if err != nil {
			return nil, "", err
		}
		if len(cfg.Engine.Command) == 0 && cfg.Engine.Unit == "" {
			return nil, "", fmt.Errorf("%s manages no engine (engine.command and engine.unit are empty): llmlabd cannot restart it with each point's knobs", o.Config)
		}
		engine := section(base, "engine")
		if cfg.Engine.Unit != "" && cfg.Engine.RuntimeEnv == "" {
			// Where llmlab-vllm.service reads llmlabd's settings
			// (EnvironmentFile=-/run/llmlab/engine.env); llmlabd started
			// here has no systemd runtime directory to find it by.
			engine["runtime_env"] = "/run/llmlab/engine.env"
		}
		return base, strings.TrimRight(cfg.Engine.URL.String(), "/"), nil
	}
	addr := freeAddr()
	host, port, _ := net.SplitHostPort(addr)
	command := []any{o.Tool, "sim", "--profile", prof.Name, "--host", host, "--port", port, "--startup-delay", o.StartupDelay.String()}
	if o.GPUMemoryGiB > 0 {
		command = append(command, "--gpu-memory-gib", strconv.FormatFloat(o.GPUMemoryGiB, 'g', -1, 64))
	}
	for _, a := range o.SimArgs {
		command = append(command, a)
	}
	base := map[string]any{
		"engine": map[string]any{"url": "http://" + addr, "models": []any{model}, "command": command,
			"start_timeout": "2m", "expected_start_time": o.StartupDelay.String(), "max_cold_start_wait": "2m"},
		"gpu": map[string]any{"enabled": false},
	}
	return base, "http://" + addr, nil
}

// renderConfig is base with the point's settings and tune's own: its
// listener, a state folder, no exit or stop on idle, no textfile, agent
// or access log.
func renderConfig(base map[string]any, p Point, listen, stateDir, metricsAddr string, slo time.Duration, budget uint64) (string, error) {
	c := deepCopy(base)
	gw := section(c, "gateway")
	gw["listen"], gw["state_dir"], gw["exit_idle_timeout"] = listen, stateDir, "0s"
	eng := section(c, "engine")
	eng["idle_timeout"], eng["sleep_after"] = "0s", "0s"
	eng["max_num_seqs"], eng["max_num_batched_tokens"], eng["max_model_len"] = p.MaxNumSeqs, p.MaxNumBatchedTokens, p.MaxModelLen
	g := section(c, "gpu")
	g["memory_fraction"], g["memory_budget"] = p.GPUMemoryUtilization, ""
	if budget > 0 {
		g["memory_budget"] = strconv.FormatUint(uint64(p.GPUMemoryUtilization*float64(budget)), 10)
	}
	q := section(c, "queue")
	conc, limit := p.limit()
	q["concurrency"], q["max_inflight"], q["batch_window"] = conc, limit, p.BatchWindow.String()
	q["max_queued"] = 1024
	if conc == "model" {
		q["min_inflight"] = min(4, limit)
	}
	if slo > 0 {
		section(c, "slo")["latency"] = slo.String()
		q["max_wait"] = (slo * 4 / 5).String()
	}
	m := section(c, "metrics")
	m["listen"], m["textfile"] = metricsAddr, ""
	section(c, "balancer")["agent_listen"] = ""
	l := section(c, "log")
	l["format"], l["access_log"] = "text", false
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(c); err != nil {
		return "", err
	}
	return b.String(), nil
}

func section(m map[string]any, name string) map[string]any {
	if s, ok := m[name].(map[string]any); ok {
		return s
	}
	s := map[string]any{}
	m[name] = s
	return s
}

func deepCopy(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if s, ok := v.(map[string]any); ok {
			v = deepCopy(s)
		}
		out[k] = v
	}
	return out
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer l.Close()
	return l.Addr().String()
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// readResults reads a results file (absent: none). A line cut short by a
// crash is skipped; its point is measured again.
func readResults(path string) (map[string]Result, error) {
	done := map[string]Result{}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return done, nil
	}
	if err != nil {
		return nil, err
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		var r Result
		if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &r) != nil {
			continue
		}
		done[r.Key()] = r
	}
	return done, nil
}

func appendResult(path string, r Result) error {
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return appendFile(path, string(line)+"\n")
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(s); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Best is the measured point with the highest sustainable rate; among
// equals (within 2%), the one that needs the least memory, then the fewest
// sequences.
func Best(results []Result) (Result, bool) {
	var best Result
	found := false
	for _, r := range results {
		if r.Status != StatusOK || r.Sustainable <= 0 {
			continue
		}
		switch {
		case !found, r.Sustainable > best.Sustainable*1.02:
		case r.Sustainable >= best.Sustainable*0.98 && (r.EngineMemory < best.EngineMemory ||
			(r.EngineMemory == best.EngineMemory && r.MaxNumSeqs < best.MaxNumSeqs)):
		default:
			continue
		}
		best, found = r, true
	}
	return best, found
}

// Frontier marks the measured points no other beats on both memory and
// sustainable rate: the most requests per second for the memory given.
func Frontier(results []Result) []bool {
	on := make([]bool, len(results))
	for i, r := range results {
		if r.Status != StatusOK || r.Sustainable <= 0 {
			continue
		}
		on[i] = true
		for _, q := range results {
			if q.Status == StatusOK && q.EngineMemory <= r.EngineMemory && q.Sustainable > r.Sustainable {
				on[i] = false
				break
			}
		}
	}
	return on
}

// report prints the table, the best point and the frontier, and writes
// them (table.md, frontier.svg, best.toml) into the results folder.
func (o EngineOptions) report(results []Result, prof sim.Profile) {
	var b strings.Builder
	engine := "the engine of " + o.Config
	if o.Config == "" {
		engine = fmt.Sprintf("the simulator, profile %s (%s): the cost model's output, not a measurement of a GPU", prof.Name, prof.Description)
	}
	probes := o.Duration.String()
	if o.MinRequests > 0 {
		probes = fmt.Sprintf("%s (longer where needed to hold %d requests)", o.Duration, o.MinRequests)
	}
	fmt.Fprintf(&b, "Engine: %s. Workload: 200 prompt + 200 output tokens, streamed, Poisson arrivals; SLO p95 <= %s, errors <= %g; find-max probes of %s after %s of warm-up.\n\n",
		engine, o.SLO.Latency, o.SLO.MaxErrorRate, probes, o.Warmup)
	fmt.Fprintf(&b, "| max_num_seqs | max_num_batched_tokens | max_model_len | gpu_memory_utilization | in-flight | batch window | status | sustainable req/s | goodput | p95 | TTFT p95 | engine memory | KV tokens | |\n")
	fmt.Fprintf(&b, "|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|\n")
	front := Frontier(results)
	best, haveBest := Best(results)
	for i, r := range results {
		mark := ""
		if front[i] {
			mark = "frontier"
		}
		if haveBest && r.Key() == best.Key() {
			mark = "**best**"
		}
		kv := "-"
		switch {
		case r.EngineKVTokens > 0:
			kv = fmt.Sprintf("%d (engine)", r.EngineKVTokens)
		case r.KVTokens > 0:
			kv = fmt.Sprintf("%d (plan)", r.KVTokens)
		}
		mem := "-"
		if r.EngineMemory > 0 {
			mem = fmt.Sprintf("%.2f GiB (%s)", float64(r.EngineMemory)/(1<<30), r.MemorySource)
		}
		status := r.Status
		if r.Status != StatusOK {
			status += ": " + strings.ReplaceAll(r.Reason, "|", "/")
		}
		if r.Status == StatusOK {
			s := r.Summary
			fmt.Fprintf(&b, "| %d | %d | %d | %g | %s | %s | %s | %.2f | %.2f | %s | %s | %s | %s | %s |\n", r.MaxNumSeqs, r.MaxNumBatchedTokens, r.MaxModelLen,
				r.GPUMemoryUtilization, r.Inflight, r.BatchWindow, status, r.Sustainable, s.Goodput, s.Latency.P95.Round(10*time.Millisecond),
				s.TTFT.P95.Round(10*time.Millisecond), mem, kv, mark)
		} else {
			fmt.Fprintf(&b, "| %d | %d | %d | %g | %s | %s | %s | - | - | - | - | %s | %s | |\n", r.MaxNumSeqs, r.MaxNumBatchedTokens, r.MaxModelLen,
				r.GPUMemoryUtilization, r.Inflight, r.BatchWindow, status, mem, kv)
		}
	}
	if haveBest {
		fmt.Fprintf(&b, "\nBest: %s: %.2f req/s within the SLO (p95 %s).\n", best.Key(), best.Sustainable, best.Summary.Latency.P95.Round(10*time.Millisecond))
	} else {
		fmt.Fprintf(&b, "\nNo point met the SLO at any rate tried.\n")
	}
	fmt.Fprint(o.Out, "\n"+b.String())
	_ = os.WriteFile(filepath.Join(o.Results, "table.md"), []byte(b.String()), 0o644)
	var pts []bench.PlotPoint
	for i, r := range results {
		if r.Status != StatusOK {
			continue
		}
		pts = append(pts, bench.PlotPoint{X: float64(r.EngineMemory) / (1 << 30), Y: r.Sustainable, Frontier: front[i],
			Label: fmt.Sprintf("seqs %d, util %g", r.MaxNumSeqs, r.GPUMemoryUtilization)})
	}
	note := "measured on " + o.Config
	if o.Config == "" {
		note = "simulator " + prof.Name + ": the cost model's output, not a GPU measurement"
	}
	svg := bench.PlotFrontier("sustainable req/s within the SLO against the engine's memory", note, "engine memory (GiB)", "req/s", pts)
	_ = os.WriteFile(filepath.Join(o.Results, "frontier.svg"), []byte(svg), 0o644)
	if haveBest {
		_ = os.WriteFile(filepath.Join(o.Results, "best.toml"), []byte(bestSnippet(best, o.budget)), 0o644)
	}
	fmt.Fprintf(o.Out, "\nresults: %s (points.jsonl, table.md, frontier.svg, best.toml)\n", o.Results)
}

// settings are the llmlab.toml keys a point sets, by section.
func settings(p Point, budget uint64) map[string][][2]string {
	conc, limit := p.limit()
	gpu := [][2]string{{"memory_fraction", strconv.FormatFloat(p.GPUMemoryUtilization, 'g', -1, 64)}, {"memory_budget", `""`}}
	if budget > 0 {
		gpu = [][2]string{{"memory_budget", strconv.Quote(strconv.FormatUint(uint64(p.GPUMemoryUtilization*float64(budget)), 10))}}
	}
	return map[string][][2]string{
		"engine": {{"max_num_seqs", strconv.Itoa(p.MaxNumSeqs)}, {"max_num_batched_tokens", strconv.Itoa(p.MaxNumBatchedTokens)},
			{"max_model_len", strconv.Itoa(p.MaxModelLen)}},
		"queue": {{"concurrency", strconv.Quote(conc)}, {"max_inflight", strconv.Itoa(limit)}, {"batch_window", strconv.Quote(p.BatchWindow.String())}},
		"gpu":   gpu,
	}
}

var sectionOrder = []string{"engine", "queue", "gpu"}

func bestSnippet(r Result, budget uint64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# llmlab tune-engine's best point: %.2f req/s within the SLO on %s.\n", r.Sustainable, r.Engine)
	s := settings(r.Point, budget)
	for _, sec := range sectionOrder {
		fmt.Fprintf(&b, "[%s]\n", sec)
		for _, kv := range s[sec] {
			fmt.Fprintf(&b, "%s = %s\n", kv[0], kv[1])
		}
	}
	return b.String()
}

// tunedFlags are vLLM's flags that llmlabd now sets; the same flags in
// LLMLAB_VLLM_ARGS would win over them (llmlab-engine passes those last).
var tunedFlags = []string{"--max-num-seqs", "--max-num-batched-tokens", "--max-model-len", "--gpu-memory-utilization"}

// apply writes the best point into the operator's files, keeping backups.
func (o EngineOptions) apply(best Result) error {
	path := o.ApplyConfig
	if path == "" {
		return errors.New("--apply: name the llmlab.toml to write (--apply-config, or --config)")
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--apply: %w", err)
	}
	updated := SetKeys(string(old), settings(best.Point, o.budget), sectionOrder)
	if _, err := config.Parse(path, []byte(updated)); err != nil {
		return fmt.Errorf("--apply: the updated %s would not load, left unchanged: %w", path, err)
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	if err := writeWithBackup(path, stamp, old, []byte(updated)); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "applied to %s (backup %s.%s): %s\n", path, path, stamp, best.Key())
	if o.EngineEnv == "" {
		return nil
	}
	env, err := os.ReadFile(o.EngineEnv)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(o.Out, "%s does not exist: no engine flags there to override llmlabd's\n", o.EngineEnv)
		return nil
	}
	if err != nil {
		return err
	}
	cleaned, removed := DropEngineFlags(string(env))
	if len(removed) == 0 {
		fmt.Fprintf(o.Out, "%s sets none of %s: left unchanged\n", o.EngineEnv, strings.Join(tunedFlags, ", "))
		return nil
	}
	if err := writeWithBackup(o.EngineEnv, stamp, env, []byte(cleaned)); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "took %s out of %s's LLMLAB_VLLM_ARGS, where they would override llmlabd's (backup %s.%s)\n",
		strings.Join(removed, " "), o.EngineEnv, o.EngineEnv, stamp)
	return nil
}

func writeWithBackup(path, stamp string, old, updated []byte) error {
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+"."+stamp, old, info.Mode().Perm()); err != nil {
		return fmt.Errorf("backing up %s: %w", path, err)
	}
	tmp := path + ".tune-tmp"
	if err := os.WriteFile(tmp, updated, info.Mode().Perm()); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// SetKeys sets keys in a TOML file's text, keeping its comments and every
// other line: a key's line is replaced where the section has it, else the
// key is added after the section's last key; a missing section is added at
// the end.
func SetKeys(text string, sets map[string][][2]string, order []string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for _, sec := range order {
		header, end := -1, len(lines)
		for i, l := range lines {
			t := strings.TrimSpace(l)
			if t == "["+sec+"]" {
				header = i
				continue
			}
			if header >= 0 && strings.HasPrefix(t, "[") {
				end = i
				break
			}
		}
		if header < 0 {
			lines = append(lines, "", "["+sec+"]")
			header, end = len(lines)-1, len(lines)
		}
		for _, kv := range sets[sec] {
			line := kv[0] + " = " + kv[1]
			found, lastKey := false, header
			for i := header + 1; i < end; i++ {
				t := strings.TrimSpace(lines[i])
				if t == "" || strings.HasPrefix(t, "#") {
					continue
				}
				lastKey = i
				if k, _, ok := strings.Cut(t, "="); ok && strings.TrimSpace(k) == kv[0] {
					lines[i], found = line, true
				}
			}
			if !found {
				lines = slices.Insert(lines, lastKey+1, line)
				end++
			}
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// DropEngineFlags takes the tuned flags (and their values) out of an
// environment file's LLMLAB_VLLM_ARGS, and says which it took.
func DropEngineFlags(env string) (string, []string) {
	lines := strings.Split(env, "\n")
	var removed []string
	for i, l := range lines {
		name, value, ok := strings.Cut(l, "=")
		if !ok || strings.TrimSpace(name) != "LLMLAB_VLLM_ARGS" {
			continue
		}
		quote := ""
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			quote, value = value[:1], value[1:len(value)-1]
		}
		var kept []string
		f := strings.Fields(value)
		for j := 0; j < len(f); j++ {
			flag, _, hasValue := strings.Cut(f[j], "=")
			if slices.Contains(tunedFlags, flag) {
				removed = append(removed, f[j])
				if !hasValue && j+1 < len(f) {
					removed = append(removed, f[j+1])
					j++
				}
				continue
			}
			kept = append(kept, f[j])
		}
		lines[i] = name + "=" + quote + strings.Join(kept, " ") + quote
	}
	return strings.Join(lines, "\n"), removed
}
