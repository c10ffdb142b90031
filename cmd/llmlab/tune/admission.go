package tune

// The admission benchmark (llmlab tune-admission): the shipped llmlabd,
// untouched but for the engine's URL, its model and the objective, side by
// side with a sweep of fixed in-flight limits and with a bare proxy that
// only answers 429 past N in flight (llama-swap's rule), in front of one
// engine, at 1x, 2x and 3x the engine's own sustainable rate; then the
// sustainable rate through the shipped llmlabd, and a step from idle to 3x.

import (
	"context"
	"encoding/json"
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
	"github.com/llmlab/llmlab/internal/freeport"
)

// AdmissionOptions configure a run.
type AdmissionOptions struct {
	Llmlabd string
	// Profile is the simulated engine's; Engine, when set, is an engine
	// already running at that URL instead (Ollama), with Model its name.
	Profile string
	Engine  string
	Model   string
	// GPUMemoryGiB replaces the profile's card size (0: the profile's):
	// the H200 profile on a 4 GiB budget.
	GPUMemoryGiB float64
	// MaxNumSeqs and MaxNumBatchedTokens replace the profile's defaults
	// for the simulated vLLM (0: the profile's).
	MaxNumSeqs, MaxNumBatchedTokens int
	// Fixed are llmlabd's fixed in-flight limits, Proxy the bare proxy's.
	Fixed, Proxy []int
	Loads        []float64
	// Workload: prompt and output tokens, streamed or not.
	PromptTokens, MaxTokens int
	Stream                  bool
	Warmup, Duration        time.Duration
	SLO                     bench.SLO
	// Capacity is the engine's sustainable rate (0: measured first with
	// find-max, directly).
	Capacity float64
	// FindMax measures the sustainable rate through the shipped llmlabd.
	FindMax bool
	Results string
	Out     io.Writer
}

// AdmissionRow is one setting at one load.
type AdmissionRow struct {
	Setting string  `json:"setting"` // "llmlabd (shipped)", "fixed 16", "proxy 10", "engine alone"
	Load    float64 `json:"load"`
	Rate    float64 `json:"rate"`
	// Limit is llmlabd's in-flight limit at the end (0: not llmlabd).
	Limit int `json:"final_limit"`
	// Reasons are llmlabd's refusals by reason during the phase.
	Reasons map[string]float64 `json:"refusals_by_reason,omitempty"`
	Summary bench.Summary      `json:"summary"`
}

// AdmissionResult is a whole run.
type AdmissionResult struct {
	Command  []string       `json:"command"`
	Engine   string         `json:"engine"`
	Capacity float64        `json:"engine_capacity"`
	Rows     []AdmissionRow `json:"rows"`
	// ThroughLlmlabd is the sustainable rate through the shipped llmlabd.
	ThroughLlmlabd float64 `json:"sustainable_through_llmlabd,omitempty"`
	// Step is the first 10 s from idle to 3x: answers, and those late.
	StepAnswers int `json:"step_answers"`
	StepLate    int `json:"step_late"`
	StepRefused int `json:"step_refused"`
}

// RunAdmission runs the benchmark and prints its tables.
func RunAdmission(ctx context.Context, o AdmissionOptions) (AdmissionResult, error) {
	res := AdmissionResult{Command: os.Args}
	dir, err := os.MkdirTemp("", "llmlab-admission")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	if o.Model == "" {
		o.Model = model
	}
	engine := o.Engine
	if engine == "" {
		prof, ok := sim.Profiles[o.Profile]
		if !ok {
			return res, fmt.Errorf("unknown profile %q (have %s)", o.Profile, sim.ProfileNames())
		}
		if o.GPUMemoryGiB > 0 {
			prof.GPUMemory = int64(o.GPUMemoryGiB * (1 << 30))
		}
		seqs, batched := prof.MaxNumSeqs, prof.MaxNumBatchedTokens
		if o.MaxNumSeqs > 0 {
			seqs = o.MaxNumSeqs
		}
		if o.MaxNumBatchedTokens > 0 {
			batched = o.MaxNumBatchedTokens
		}
		m, err := prof.Plan(0.9, seqs, batched, prof.MaxModelLen)
		if err != nil {
			return res, err
		}
		cfg := sim.Config{Profile: prof, MaxNumSeqs: seqs, MaxNumBatchedTokens: batched,
			MaxModelLen: prof.MaxModelLen, KVBlocks: m.KVBlocks}
		sctx, stopSim := context.WithCancel(ctx)
		defer stopSim()
		l, err := freeport.Listen()
		if err != nil {
			return res, err
		}
		engine = "http://" + l.Addr().String()
		go sim.NewServer(sim.Options{Engine: cfg, Model: o.Model}).Serve(sctx, l)
		res.Engine = fmt.Sprintf("simulator %s (%d sequences, %d batched tokens, %d KV blocks)", o.Profile, seqs, batched, m.KVBlocks)
	} else {
		res.Engine = engine
	}
	client := bench.NewClient(4096)
	phase := func(target string, rate float64, seed uint64, warmup time.Duration) []bench.Sample {
		opt := bench.Options{Target: target, Model: o.Model, Stream: o.Stream, PromptTokens: o.PromptTokens, MaxTokens: o.MaxTokens,
			Rate: rate, Poisson: true, Seed: seed, Warmup: warmup, Duration: o.Duration, Timeout: 2 * time.Minute}
		samples, _ := bench.Run(ctx, client, opt)
		bench.Drain(ctx, engine+"/metrics", 2*time.Minute)
		return samples
	}
	passes := func(target string) func(float64) bool {
		return func(r float64) bool {
			s := bench.Summarize(phase(target, r, 1, o.Warmup), o.Duration, o.SLO)
			fmt.Fprintf(o.Out, "    %.2f req/s: p95 %s, %d refused of %d: %v\n", r, s.Latency.P95.Round(10*time.Millisecond), s.Refused+s.Failed, s.Requests, s.Pass)
			return s.Pass
		}
	}
	capacity := o.Capacity
	if capacity == 0 {
		fmt.Fprintf(o.Out, "%s: the engine's sustainable rate, alone (find-max) ...\n", res.Engine)
		capacity = bench.FindMax(1, 1000, 0.05, passes(engine))
	}
	res.Capacity = capacity
	fmt.Fprintf(o.Out, "%s: %.2f req/s within p95 %s\n", res.Engine, capacity, o.SLO.Latency)

	type setting struct {
		label string
		// start returns the API's URL, the metrics' URL ("": none) and
		// a function that stops it.
		start func(dir string) (string, string, func(), error)
	}
	shipped := func(extra string) func(string) (string, string, func(), error) {
		return func(d string) (string, string, func(), error) {
			return startShipped(ctx, o.Llmlabd, d, engine, o.Model, o.SLO.Latency, extra)
		}
	}
	settings := []setting{{"llmlabd (shipped)", shipped("")}}
	for _, n := range o.Fixed {
		settings = append(settings, setting{fmt.Sprintf("llmlabd fixed %d", n),
			shipped(fmt.Sprintf("[queue]\nconcurrency = \"fixed\"\nmax_inflight = %d\n", n))})
	}
	for _, n := range o.Proxy {
		settings = append(settings, setting{fmt.Sprintf("proxy 429 past %d", n), func(string) (string, string, func(), error) {
			url, stop, err := startBareProxy(engine, n)
			return url, "", stop, err
		}})
	}
	for li, load := range o.Loads {
		rate := load * capacity
		for si, s := range settings {
			fmt.Fprintf(o.Out, "  %.1fx (%.2f req/s): %s ...\n", load, rate, s.label)
			d := filepath.Join(dir, fmt.Sprintf("%d-%d", li, si))
			url, metrics, stop, err := s.start(d)
			if err != nil {
				return res, err
			}
			before := refusalReasons(metrics)
			samples := phase(url, rate, uint64(li*100+1), o.Warmup)
			row := AdmissionRow{Setting: s.label, Load: load, Rate: rate, Summary: bench.Summarize(samples, o.Duration, o.SLO)}
			if metrics != "" {
				row.Limit = finalLimit(metrics)
			}
			if before != nil {
				row.Reasons = map[string]float64{}
				for k, v := range refusalReasons(metrics) {
					if d := v - before[k]; d > 0 {
						row.Reasons[k] = d
					}
				}
			}
			stop()
			keepLog(o.Results, d, fmt.Sprintf("%.0fx-%d", load, si))
			res.Rows = append(res.Rows, row)
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
		}
	}
	// From idle to 3x: a fresh llmlabd, whose model knows nothing yet.
	fmt.Fprintf(o.Out, "  a step from idle to 3x (%.2f req/s), fresh llmlabd ...\n", 3*capacity)
	stepDir := filepath.Join(dir, "step")
	url, _, stop, err := shipped("")(stepDir)
	if err != nil {
		return res, err
	}
	opt := bench.Options{Target: url, Model: o.Model, Stream: o.Stream, PromptTokens: o.PromptTokens, MaxTokens: o.MaxTokens,
		Rate: 3 * capacity, Poisson: true, Seed: 7, Duration: 10 * time.Second, Timeout: 2 * time.Minute}
	samples, _ := bench.Run(ctx, client, opt)
	stop()
	keepLog(o.Results, stepDir, "step")
	bench.Drain(ctx, engine+"/metrics", 2*time.Minute)
	for _, s := range samples {
		switch {
		case s.Status == http.StatusOK && s.Error == "":
			res.StepAnswers++
			if s.Latency > o.SLO.Latency {
				res.StepLate++
			}
		case s.Status == http.StatusTooManyRequests || s.Status == http.StatusServiceUnavailable:
			res.StepRefused++
		}
	}
	if o.FindMax {
		fmt.Fprintf(o.Out, "  the sustainable rate through the shipped llmlabd (find-max) ...\n")
		url, _, stop, err := shipped("")(filepath.Join(dir, "findmax"))
		if err != nil {
			return res, err
		}
		res.ThroughLlmlabd = bench.FindMax(max(capacity/2, 0.5), 1000, 0.05, passes(url))
		stop()
	}
	printAdmission(o.Out, o, res)
	if o.Results != "" {
		if err := os.MkdirAll(o.Results, 0o755); err != nil {
			return res, err
		}
		data, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(filepath.Join(o.Results, "admission.json"), data, 0o644); err != nil {
			return res, err
		}
		fmt.Fprintf(o.Out, "\nresults: %s/admission.json\n", o.Results)
	}
	return res, nil
}

// startShipped starts llmlabd with the built-in defaults (the shipped
// llmlab.toml's values) but for the engine's URL, its model and the
// objective, plus what the harness itself needs: its own listen address,
// metrics port and state folder, and no engine unit. extra overrides more.
func startShipped(ctx context.Context, bin, dir, engine, modelName string, slo time.Duration, extra string) (string, string, func(), error) {
	p, err := daemonproc.Run(ctx, bin, dir, func(listen string) string {
		return fmt.Sprintf(`[gateway]
listen = %q
state_dir = %q
[engine]
url = %q
models = [%q]
[slo]
latency = %q
[metrics]
listen = %q
textfile = ""
[log]
format = "text"
level = "debug"
access_log = false
%s`, listen, dir, engine, modelName, slo.String(), daemonproc.Any, extra)
	})
	if err != nil {
		return "", "", nil, err
	}
	return p.URL, "http://" + p.Metrics, p.Stop, nil
}

// keepLog copies the llmlabd log in dir, if any, into results as
// llmlabd-<name>.log.
func keepLog(results, dir, name string) {
	data, err := os.ReadFile(filepath.Join(dir, "llmlabd.log"))
	if results == "" || err != nil {
		return
	}
	if os.MkdirAll(results, 0o755) == nil {
		_ = os.WriteFile(filepath.Join(results, "llmlabd-"+name+".log"), data, 0o644)
	}
}

// refusalReasons reads llmlabd's refusals by reason from its metrics
// listener (nil: none given, or none served).
func refusalReasons(metrics string) map[string]float64 {
	if metrics == "" {
		return nil
	}
	fams, err := bench.Scrape(metrics + "/metrics")
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	if f, ok := fams["llmlab_admission_decisions_total"]; ok {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["decision"] == "refuse" {
				out[labels["reason"]] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// startBareProxy serves a reverse proxy to engine that answers 429 with
// Retry-After: 1 past n requests in flight and does nothing else
// (llama-swap's concurrencyLimit).
func startBareProxy(engine string, n int) (string, func(), error) {
	l, err := freeport.Listen()
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: bareProxy(engine, n)}
	go srv.Serve(l)
	return "http://" + l.Addr().String(), func() { srv.Close() }, nil
}

func printAdmission(w io.Writer, o AdmissionOptions, r AdmissionResult) {
	stream := "not streamed"
	if o.Stream {
		stream = "streamed"
	}
	fmt.Fprintf(w, "\n%s, %d prompt + %d output tokens, %s, objective p95 <= %s; engine alone sustains %.2f req/s (find-max); Poisson, warm-up %s, measured %s\n\n",
		r.Engine, o.PromptTokens, o.MaxTokens, stream, o.SLO.Latency, r.Capacity, o.Warmup, o.Duration)
	fmt.Fprintf(w, "| load | setting | goodput req/s | ok/s | admitted p95 | refused | of which queue_timeout | failed | final limit |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, row := range r.Rows {
		s := row.Summary
		fmt.Fprintf(w, "| %.0fx | %s | %.2f | %.2f | %s | %d | %.0f | %d | %d |\n", row.Load, row.Setting, s.Goodput, s.RPS,
			s.Latency.P95.Round(10*time.Millisecond), s.Refused, row.Reasons["queue_timeout"], s.Failed, row.Limit)
	}
	fmt.Fprintln(w)
	for _, load := range o.Loads {
		var shipped, bestFixed, bestProxy float64
		var fixedLabel, proxyLabel string
		for _, row := range r.Rows {
			if row.Load != load {
				continue
			}
			g := row.Summary.Goodput
			switch {
			case row.Setting == "llmlabd (shipped)":
				shipped = g
			case strings.HasPrefix(row.Setting, "llmlabd fixed") && g > bestFixed:
				bestFixed, fixedLabel = g, row.Setting
			case strings.HasPrefix(row.Setting, "proxy") && g > bestProxy:
				bestProxy, proxyLabel = g, row.Setting
			}
		}
		line := fmt.Sprintf("- %.0fx: shipped %.2f req/s", load, shipped)
		if fixedLabel != "" {
			line += fmt.Sprintf(" = %.2fx the best fixed (%s, %.2f)", ratio(shipped, bestFixed), fixedLabel, bestFixed)
		}
		if proxyLabel != "" {
			line += fmt.Sprintf("; %.2fx the best bare proxy (%s, %.2f)", ratio(shipped, bestProxy), proxyLabel, bestProxy)
		}
		fmt.Fprintln(w, line)
	}
	late := 0.0
	if r.StepAnswers > 0 {
		late = float64(r.StepLate) / float64(r.StepAnswers)
	}
	fmt.Fprintf(w, "- a step from idle to 3x, first 10 s through a fresh llmlabd: %d answered, %d late (%.1f%%), %d refused\n",
		r.StepAnswers, r.StepLate, 100*late, r.StepRefused)
	if r.ThroughLlmlabd > 0 {
		fmt.Fprintf(w, "- sustainable through the shipped llmlabd: %.2f req/s = %.2fx the engine alone\n", r.ThroughLlmlabd, ratio(r.ThroughLlmlabd, r.Capacity))
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
