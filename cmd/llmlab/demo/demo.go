// Package demo runs llmlab's main job on a laptop: two identical engine
// simulators, llmlabd in front of one of them, and the fixed workload at
// rising offered load against both at once, so that "through llmlab" and
// "the engine alone" are measured side by side without one side's
// overload spilling into the other's numbers.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/daemonproc"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/internal/freeport"
)

// Options configure a demo run.
type Options struct {
	Llmlabd  string
	Profile  string
	Capacity float64   // the engine's sustainable rate, req/s (the load unit)
	Loads    []float64 // multiples of Capacity
	Warmup   time.Duration
	Duration time.Duration
	Timeout  time.Duration
	SLO      bench.SLO
	// MaxInflight and MaxWait configure llmlabd's admission.
	MaxInflight int
	MaxWait     time.Duration
	// BatchWindow and Coalesce configure llmlabd's micro-batching.
	BatchWindow time.Duration
	Coalesce    bool
	// NoStream sends non-streamed requests (coalescing needs them).
	NoStream bool
	Results  string // folder for results; "" skips writing them
	Out      io.Writer
}

// Row is one phase's figures for one target.
type Row struct {
	bench.Phase
	Load float64 `json:"load"` // multiple of capacity
}

// Valid reports whether the simulator kept up with its model.
func (r Row) Valid() bool { return !r.Lag.Checked || r.Lag.Valid }

// Run runs the demo and prints its table.
func Run(ctx context.Context, o Options) ([]Row, error) {
	prof, ok := sim.Profiles[o.Profile]
	if !ok {
		return nil, fmt.Errorf("unknown profile %q", o.Profile)
	}
	blocks, err := prof.KVBlocks(0.9)
	if err != nil {
		return nil, err
	}
	cfg := sim.Config{Profile: prof, MaxNumSeqs: prof.MaxNumSeqs, MaxNumBatchedTokens: prof.MaxNumBatchedTokens,
		MaxModelLen: prof.MaxModelLen, KVBlocks: blocks}
	const model = "Qwen/Qwen2.5-0.5B-Instruct"

	dir, err := os.MkdirTemp("", "llmlab-demo")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	sctx, stopSims := context.WithCancel(ctx)
	defer stopSims()
	startSim := func() (string, error) {
		l, err := freeport.Listen()
		if err != nil {
			return "", err
		}
		srv := sim.NewServer(sim.Options{Engine: cfg, Model: model})
		go srv.Serve(sctx, l)
		return "http://" + l.Addr().String(), nil
	}
	direct, err := startSim()
	if err != nil {
		return nil, err
	}
	behind, err := startSim()
	if err != nil {
		return nil, err
	}

	gw, stopGw, err := startLlmlabd(ctx, dir, o, behind, model)
	if err != nil {
		return nil, err
	}
	defer stopGw()

	fmt.Fprintf(o.Out, "llmlab demo: profile %s (%s)\n", prof.Name, prof.Description)
	mode := "streamed"
	if o.NoStream {
		mode = "not streamed"
	}
	fmt.Fprintf(o.Out, "workload: 200 prompt + 200 output tokens, %s, Poisson arrivals; SLO p95 <= %s, error rate <= %g\n",
		mode, o.SLO.Latency, o.SLO.MaxErrorRate)
	fmt.Fprintf(o.Out, "two identical simulators; llmlabd (max_inflight %d, max_wait %s, batch_window %s, coalesce %t) in front of one; each load runs against both at once\n\n",
		o.MaxInflight, o.MaxWait, o.BatchWindow, o.Coalesce)

	client := bench.NewClient(1024)
	var rows []Row
	for i, load := range o.Loads {
		rate := load * o.Capacity
		fmt.Fprintf(o.Out, "  load %.1fx (%.1f req/s) ...\n", load, rate)
		targets := []struct{ name, url, sim string }{{"llmlab", gw, behind}, {"direct", direct, direct}}
		res := make([]Row, len(targets))
		var wg sync.WaitGroup
		for j, t := range targets {
			wg.Go(func() {
				opt := bench.Options{Target: t.url, Model: model, Stream: !o.NoStream, PromptTokens: 200, MaxTokens: 200,
					Rate: rate, Poisson: true, Seed: uint64(i + 1), Warmup: o.Warmup, Duration: o.Duration, Timeout: o.Timeout}
				steps0, onTime0, _ := bench.LagSnapshot(t.sim + "/metrics")
				samples, _ := bench.Run(ctx, client, opt)
				steps1, onTime1, _ := bench.LagSnapshot(t.sim + "/metrics")
				res[j] = Row{Load: load, Phase: bench.Phase{Label: t.name, Target: t.url, Rate: rate, Samples: samples,
					Summary: bench.Summarize(samples, o.Duration, o.SLO), Lag: bench.CheckLag(steps0, onTime0, steps1, onTime1)}}
			})
		}
		wg.Wait()
		if ctx.Err() != nil {
			return rows, ctx.Err()
		}
		rows = append(rows, res...)
		// Let both engines drain before the next load.
		for _, u := range []string{direct, behind} {
			bench.Drain(ctx, u+"/metrics", 2*time.Minute)
		}
		if ctx.Err() != nil {
			return rows, ctx.Err()
		}
	}
	printTable(o.Out, o, rows)
	if o.Results != "" {
		if err := writeResults(o.Results, o, rows); err != nil {
			return rows, err
		}
		fmt.Fprintf(o.Out, "\nresults (every sample, the table as CSV, the latency-versus-load plot): %s\n", o.Results)
	}
	return rows, nil
}

func startLlmlabd(ctx context.Context, dir string, o Options, engine, model string) (string, func(), error) {
	return daemonproc.Start(ctx, o.Llmlabd, dir, func(listen string) string {
		return fmt.Sprintf(`[gateway]
listen = %q
[engine]
url = %q
models = [%q]
[queue]
max_inflight = %d
max_queued = %d
max_wait = %q
batch_window = %q
max_batch = %d
coalesce = %t
[metrics]
listen = ""
textfile = ""
[log]
format = "text"
access_log = false
`, listen, engine, model, o.MaxInflight, 4*o.MaxInflight, o.MaxWait.String(),
			o.BatchWindow.String(), min(16, o.MaxInflight), o.Coalesce)
	})
}

func printTable(w io.Writer, o Options, rows []Row) {
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-6s %-8s %-8s %9s %9s %9s %9s %8s %8s %8s  %s\n",
		"load", "rate", "target", "goodput", "ok/s", "p95", "ttft p95", "ok", "refused", "failed", "SLO")
	for _, r := range rows {
		s := r.Summary
		verdict := "fail"
		if s.Pass {
			verdict = "pass"
		}
		if !r.Valid() {
			verdict += fmt.Sprintf(" (INVALID: the simulator ran %.0f of %.0f steps late)", r.Lag.LateSteps, r.Lag.Steps)
		}
		fmt.Fprintf(w, "%-6s %-8s %-8s %9.1f %9.1f %9s %9s %8d %8d %8d  %s\n",
			fmt.Sprintf("%.1fx", r.Load), fmt.Sprintf("%.1f/s", r.Rate), r.Label, s.Goodput, s.RPS,
			s.Latency.P95.Round(10*time.Millisecond), s.TTFT.P95.Round(10*time.Millisecond), s.OK, s.Refused, s.Failed, verdict)
	}
	peak := 0.0
	for _, r := range rows {
		if r.Label == "direct" {
			peak = max(peak, r.Summary.Goodput)
		}
	}
	fmt.Fprintf(w, "\ngoodput = requests/s answered within %s; the engine alone's best in this run: %.1f req/s.\n", o.SLO.Latency, peak)
	for _, r := range rows {
		if r.Label == "llmlab" && r.Load > 1 {
			d := direct(rows, r.Load)
			fmt.Fprintf(w, "at %.1fx load: through llmlab %.1f req/s of goodput (p95 %s, %d refused at once); the engine alone %.1f req/s (p95 %s).\n",
				r.Load, r.Summary.Goodput, r.Summary.Latency.P95.Round(10*time.Millisecond), r.Summary.Refused,
				d.Summary.Goodput, d.Summary.Latency.P95.Round(10*time.Millisecond))
		}
	}
}

func direct(rows []Row, load float64) Row {
	for _, r := range rows {
		if r.Label == "direct" && r.Load == load {
			return r
		}
	}
	return Row{}
}

func writeResults(dir string, o Options, rows []Row) error {
	phases := make([]bench.Phase, len(rows))
	for i, r := range rows {
		phases[i] = r.Phase
	}
	return bench.WriteResults(dir, os.Args, o, phases, o.SLO)
}

// MarshalJSON leaves out the output writer.
func (o Options) MarshalJSON() ([]byte, error) {
	type plain Options
	p := plain(o)
	p.Out = nil
	return json.Marshal(p)
}
