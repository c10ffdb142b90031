// Package tune measures llmlabd's concurrency, priority and fair-share
// settings against the engine simulator (llmlab tune):
//
//   - the sweep: for each GPU profile, an open loop at a fixed multiple of
//     the engine's capacity through llmlabd with queue.max_inflight fixed
//     at each of a list of values (queue.concurrency = "fixed"), then
//     with the shipped default, queue.concurrency = "model"; goodput
//     (answers within the SLO per second) for each, and the model's limit's
//     goodput over the best fixed setting's;
//   - the priority run: the same overload, half of it sent in the batch
//     class, with priority classes honoured and with the header dropped
//     (one class), showing what each class gets; with EnginePriority,
//     the classes with a first-come-first-served engine and with the
//     classes passed into an engine that schedules by priority (the
//     simulator's --scheduling-policy priority, llmlabd's
//     engine.scheduling_policy = "priority") instead;
//   - the fair-share run (--fair, fair.go): API keys' open loops, a light
//     key alone and beside a flooding one, with keys and without, then two
//     flooding keys of weights 1 and 3, showing what each key gets.
//
// Each setting gets a fresh llmlabd (and state directory) in front of one
// simulator per profile (a fresh one where the setting needs another
// scheduling policy), drained between runs.
package tune

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/daemonproc"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/internal/freeport"
)

// Options configure a run.
type Options struct {
	Llmlabd  string
	Profiles []string
	// Fixed are the queue.max_inflight values of the sweep; the model
	// mode chooses its limit between MinInflight and MaxNumSeqs.
	Fixed       []int
	MinInflight int
	// MaxNumSeqs is the simulated vLLM's --max-num-seqs (its default, 256).
	MaxNumSeqs int
	// Load is the offered rate as a multiple of the engine's capacity
	// (measured first, closed loop at MaxNumSeqs).
	Load     float64
	Warmup   time.Duration
	Duration time.Duration
	SLO      bench.SLO
	Stream   bool
	// Priority runs the mixed-class comparison instead of the sweep.
	Priority bool
	// EnginePriority adds to the priority run the classes passed into an
	// engine that schedules by priority.
	EnginePriority bool
	// NoSLOAdmission runs llmlabd with slo.latency = 0s: no request is
	// judged against the SLO at admission (the queue's bounds and the
	// classes still apply; goodput still counts the SLO).
	NoSLOAdmission bool
	// Inflight, in the priority run, fixes queue.max_inflight there
	// (queue.concurrency = "fixed"; 0: the model's limit). Above the
	// engine's MaxNumSeqs, the rest waits in the engine's own queue.
	Inflight int
	// TargetLatency is the model mode's queue.target_latency (0: its
	// default, the SLO).
	TargetLatency time.Duration
	// BatchShare is llmlabd's queue.batch_share in the priority run (0:
	// its default).
	BatchShare float64
	Results    string
	Out        io.Writer
	// Fair runs the fair-share comparison instead of the sweep (fair.go):
	// a key flooding at Flood times the capacity beside one at Light,
	// then two flooding keys of weights 1 and 3.
	Fair         bool
	Flood, Light float64
	// FairPhases are the fair-share phases to run (FairPhaseNames; none:
	// all), Repeat how many times each (0: once).
	FairPhases []string
	Repeat     int
	// Capacity is the engine's capacity in requests a second (0: measured).
	Capacity float64
}

// Row is one setting's figures.
type Row struct {
	Profile string `json:"profile"`
	Setting string `json:"setting"` // "fixed 32", "model", "classes", "one class", "classes + engine priority", a fair-share phase
	Class   string `json:"class,omitempty"`
	// Key and Weight are the API key's name and weight in a fair-share
	// phase.
	Key    string  `json:"key,omitempty"`
	Weight float64 `json:"weight,omitempty"`
	// EngineTokens is the key's engine work over the measured span as
	// llmlabd counts it (llmlab_client_engine_tokens_total; 0: not read).
	EngineTokens float64 `json:"engine_tokens,omitempty"`
	// Round is the fair-share phase's round (0: the rounds pooled).
	Round    int     `json:"round,omitempty"`
	Capacity float64 `json:"capacity"`
	Rate     float64 `json:"rate"`
	// Limit is llmlabd's in-flight limit at the end (the model's choice
	// with "model").
	Limit   int            `json:"final_limit"`
	Summary bench.Summary  `json:"summary"`
	Lag     bench.LagCheck `json:"sim_lag"`
}

const model = "Qwen/Qwen2.5-0.5B-Instruct"

// Run runs the sweep (or the priority comparison) and prints its table.
func Run(ctx context.Context, o Options) ([]Row, error) {
	dir, err := os.MkdirTemp("", "llmlab-tune")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	client := bench.NewClient(2048)
	var rows []Row
	for _, name := range o.Profiles {
		prof, ok := sim.Profiles[name]
		if !ok {
			return rows, fmt.Errorf("unknown profile %q (have %s)", name, sim.ProfileNames())
		}
		blocks, err := prof.KVBlocks(0.9)
		if err != nil {
			return rows, err
		}
		cfg := sim.Config{Profile: prof, MaxNumSeqs: o.MaxNumSeqs, MaxNumBatchedTokens: prof.MaxNumBatchedTokens,
			MaxModelLen: prof.MaxModelLen, KVBlocks: blocks, SchedulingPolicy: sim.PolicyFCFS}
		// The simulator, started again (fresh) for a setting that needs
		// another scheduling policy.
		var engine string
		stopSim := func() {}
		startSim := func(policy string) error {
			stopSim()
			cfg.SchedulingPolicy = policy
			sctx, cancel := context.WithCancel(ctx)
			l, err := freeport.Listen()
			if err != nil {
				cancel()
				return err
			}
			engine, stopSim = "http://"+l.Addr().String(), cancel
			go sim.NewServer(sim.Options{Engine: cfg, Model: model}).Serve(sctx, l)
			return nil
		}
		if err := startSim(sim.PolicyFCFS); err != nil {
			return rows, err
		}

		capacity := measureCapacity(ctx, o, client, engine, name)
		if o.Fair {
			fair, err := runFair(ctx, o, client, engine, name, capacity, filepath.Join(dir, name))
			rows = append(rows, fair...)
			stopSim()
			if err != nil {
				return rows, err
			}
			continue
		}
		rate := o.Load * capacity
		fmt.Fprintf(o.Out, "profile %s: capacity %.1f req/s; offering %.1f req/s (%.1fx)\n", name, capacity, rate, o.Load)

		type setting struct {
			label, conf string
			batch       float64 // share sent as batch
			classes     bool
			policy      string // the engine's scheduling policy
		}
		var settings []setting
		if o.Priority {
			limit := "concurrency = \"model\""
			if o.Inflight > 0 {
				limit = fmt.Sprintf("concurrency = \"fixed\"\nmax_inflight = %d", o.Inflight)
			}
			settings = []setting{{"classes", limit, 0.5, true, sim.PolicyFCFS}}
			if o.EnginePriority {
				// The comparison is the engine's policy, with llmlab's
				// classes either way.
				settings = append(settings, setting{"classes + engine priority", limit, 0.5, true, sim.PolicyPriority})
			} else {
				settings = append(settings, setting{"one class", limit, 0.5, false, sim.PolicyFCFS})
			}
		} else {
			for _, n := range o.Fixed {
				settings = append(settings, setting{label: fmt.Sprintf("fixed %d", n), conf: fmt.Sprintf("concurrency = \"fixed\"\nmax_inflight = %d", n)})
			}
			settings = append(settings, setting{label: "model", conf: "concurrency = \"model\""})
		}
		for i, s := range settings {
			if s.policy == "" {
				s.policy = sim.PolicyFCFS
			}
			if s.policy != cfg.SchedulingPolicy {
				if err := startSim(s.policy); err != nil {
					return rows, err
				}
			}
			conf := s.conf
			if o.Priority && o.BatchShare > 0 {
				conf += fmt.Sprintf("\nbatch_share = %g", o.BatchShare)
			}
			if strings.HasPrefix(s.conf, "concurrency = \"model\"") {
				conf += fmt.Sprintf("\nmax_inflight = %d\nmin_inflight = %d\ntarget_latency = %q", o.MaxNumSeqs, o.MinInflight, o.TargetLatency.String())
			}
			fmt.Fprintf(o.Out, "  %s ...\n", s.label)
			d, err := startLlmlabd(ctx, filepath.Join(dir, fmt.Sprintf("%s-%d", name, i)), o, engine, s.policy, conf, "", false)
			if err != nil {
				stopSim()
				return rows, err
			}
			gw, stop := d.URL, d.Stop
			opt := bench.Options{Target: gw, Model: model, Stream: o.Stream, PromptTokens: 200, MaxTokens: 200,
				Rate: rate, Poisson: true, Seed: uint64(i + 1), Warmup: o.Warmup, Duration: o.Duration, Timeout: 60 * time.Second}
			if s.classes {
				opt.BatchShare = s.batch
			}
			steps0, onTime0, _ := bench.LagSnapshot(engine + "/metrics")
			samples, _ := bench.Run(ctx, client, opt)
			steps1, onTime1, _ := bench.LagSnapshot(engine + "/metrics")
			limit := finalLimit(gw)
			stop()
			lag := bench.CheckLag(steps0, onTime0, steps1, onTime1)
			if o.Priority {
				// Which requests were batch is the same sequence either
				// way; mark them in the one-class run too.
				if !s.classes {
					markBatch(samples, s.batch)
				}
				for _, class := range []string{"interactive", "batch"} {
					rows = append(rows, Row{Profile: name, Setting: s.label, Class: class, Capacity: capacity, Rate: rate, Limit: limit,
						Summary: bench.Summarize(only(samples, class == "batch"), o.Duration, o.SLO), Lag: lag})
				}
			} else {
				rows = append(rows, Row{Profile: name, Setting: s.label, Capacity: capacity, Rate: rate, Limit: limit,
					Summary: bench.Summarize(samples, o.Duration, o.SLO), Lag: lag})
			}
			bench.Drain(ctx, engine+"/metrics", 2*time.Minute)
			if ctx.Err() != nil {
				stopSim()
				return rows, ctx.Err()
			}
		}
		stopSim()
	}
	switch {
	case o.Fair:
		printFair(o.Out, o, rows)
	case o.Priority:
		printPriority(o.Out, o, rows)
	default:
		printSweep(o.Out, o, rows)
	}
	if o.Results != "" {
		if err := os.MkdirAll(o.Results, 0o755); err != nil {
			return rows, err
		}
		data, _ := json.MarshalIndent(struct {
			Command []string `json:"command"`
			Rows    []Row    `json:"rows"`
		}{os.Args, rows}, "", "  ")
		if err := os.WriteFile(filepath.Join(o.Results, "tune.json"), data, 0o644); err != nil {
			return rows, err
		}
		fmt.Fprintf(o.Out, "\nresults: %s/tune.json\n", o.Results)
	}
	return rows, nil
}

// measureCapacity is the engine's capacity in requests a second: a closed
// loop at its own sequence limit, with a warm-up longer than one round of
// it on a slow card; or o.Capacity where that is set.
func measureCapacity(ctx context.Context, o Options, client *http.Client, engine, profile string) float64 {
	if o.Capacity > 0 {
		fmt.Fprintf(o.Out, "profile %s: capacity %.2f req/s as given (--capacity)\n", profile, o.Capacity)
		return o.Capacity
	}
	fmt.Fprintf(o.Out, "profile %s: measuring the engine's capacity (closed loop at %d, 25s + 30s) ...\n", profile, o.MaxNumSeqs)
	probe := bench.Options{Target: engine, Model: model, Stream: o.Stream, PromptTokens: 200, MaxTokens: 200,
		Concurrency: o.MaxNumSeqs, Warmup: 25 * time.Second, Duration: 30 * time.Second, Timeout: 5 * time.Minute}
	samples, _ := bench.Run(ctx, client, probe)
	capacity := bench.Summarize(samples, probe.Duration, o.SLO).RPS
	bench.Drain(ctx, engine+"/metrics", 2*time.Minute)
	return capacity
}

// markBatch marks the samples the bench would have sent as batch: by
// request number, which follows start order (samples are recorded in
// completion order).
func markBatch(samples []bench.Sample, share float64) {
	order := make([]int, len(samples))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(samples[a].Start, samples[b].Start) })
	for n, i := range order {
		samples[i].Batch = bench.IsBatch(n+1, share)
	}
}

func only(samples []bench.Sample, batch bool) []bench.Sample {
	var out []bench.Sample
	for _, s := range samples {
		if s.Batch == batch {
			out = append(out, s)
		}
	}
	return out
}

// finalLimit is llmlabd's in-flight limit, from its /status (0: not read).
func finalLimit(gw string) int {
	st, _ := fetchStatus(gw)
	return st.Queue.Limit
}

// startLlmlabd starts llmlabd in front of engine, which schedules by
// policy, with queueConf in its [queue] section and extra (whole sections)
// at the end of its configuration, and a metrics listener if metrics is
// set.
func startLlmlabd(ctx context.Context, dir string, o Options, engine, policy, queueConf, extra string, metrics bool) (*daemonproc.Proc, error) {
	metricsListen := ""
	if metrics {
		metricsListen = daemonproc.Any
	}
	return daemonproc.Run(ctx, o.Llmlabd, dir, func(listen string) string {
		return fmt.Sprintf(`[gateway]
listen = %q
state_dir = %q
[engine]
url = %q
models = [%q]
scheduling_policy = %q
[queue]
%s
max_queued = 1024
max_wait = "4s"
max_batch = 1
[slo]
latency = %q
[metrics]
listen = %q
textfile = ""
[gpu]
enabled = false
[log]
format = "text"
access_log = false
%s`, listen, dir, engine, model, policy, queueConf, admissionSLO(o).String(), metricsListen, extra)
	})
}

// admissionSLO is llmlabd's slo.latency: the SLO, or 0 (none) with
// NoSLOAdmission.
func admissionSLO(o Options) time.Duration {
	if o.NoSLOAdmission {
		return 0
	}
	return o.SLO.Latency
}

func verdict(r Row) string {
	if r.Lag.Checked && !r.Lag.Valid {
		return fmt.Sprintf("INVALID (simulator %.0f of %.0f steps late)", r.Lag.LateSteps, r.Lag.Steps)
	}
	return ""
}

func printSweep(w io.Writer, o Options, rows []Row) {
	fmt.Fprintf(w, "\nopen loop (Poisson) at %.1fx each engine's capacity, 200 prompt + 200 output tokens, SLO p95 <= %s; warm-up %s, measured %s\n\n",
		o.Load, o.SLO.Latency, o.Warmup, o.Duration)
	fmt.Fprintf(w, "| profile | setting | final limit | goodput req/s | ok/s | p95 | refused | failed | note |\n|---|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		s := r.Summary
		fmt.Fprintf(w, "| %s | %s | %d | %.2f | %.2f | %s | %d | %d | %s |\n", r.Profile, r.Setting, r.Limit, s.Goodput, s.RPS,
			s.Latency.P95.Round(10*time.Millisecond), s.Refused, s.Failed, verdict(r))
	}
	fmt.Fprintln(w)
	for _, p := range o.Profiles {
		best, bestLabel, fromModel := 0.0, "", 0.0
		for _, r := range rows {
			if r.Profile != p {
				continue
			}
			if r.Setting == "model" {
				fromModel = r.Summary.Goodput
			} else if r.Summary.Goodput > best {
				best, bestLabel = r.Summary.Goodput, r.Setting
			}
		}
		ratio := 0.0
		if best > 0 {
			ratio = fromModel / best
		}
		fmt.Fprintf(w, "- %s: the model's limit %.2f req/s of goodput, %.2fx the best fixed setting (%s, %.2f req/s); target >= 0.95x\n", p, fromModel, ratio, bestLabel, best)
	}
}

func printPriority(w io.Writer, o Options, rows []Row) {
	share := "llmlabd's default"
	if o.BatchShare > 0 {
		share = fmt.Sprintf("%g", o.BatchShare)
	}
	limit := "the model's limit"
	if o.Inflight > 0 {
		limit = fmt.Sprintf("queue.max_inflight fixed at %d (the engine runs at most %d, the rest waits in its own queue)", o.Inflight, o.MaxNumSeqs)
	}
	admission := ""
	if o.NoSLOAdmission {
		admission = " (llmlabd's slo.latency 0s: nothing judged against it at admission)"
	}
	fmt.Fprintf(w, "\nopen loop (Poisson) at %.1fx each engine's capacity, half of the requests in the batch class (X-Llmlab-Priority: batch); SLO p95 <= %s%s; %s; queue.batch_share %s; warm-up %s, measured %s\n\n",
		o.Load, o.SLO.Latency, admission, limit, share, o.Warmup, o.Duration)
	fmt.Fprintf(w, "| profile | classes | class | goodput req/s | ok/s | p95 | refused | failed | note |\n|---|---|---|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		s := r.Summary
		fmt.Fprintf(w, "| %s | %s | %s | %.2f | %.2f | %s | %d | %d | %s |\n", r.Profile, r.Setting, r.Class, s.Goodput, s.RPS,
			s.Latency.P95.Round(10*time.Millisecond), s.Refused, s.Failed, verdict(r))
	}
}
