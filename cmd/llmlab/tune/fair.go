package tune

// llmlab tune --fair: fair shares among API keys on the simulator. Each
// phase gets a fresh llmlabd with a keys file, and each key its own open
// loop (Poisson) with its own Authorization:
//
//  1. light alone: one key at Light times the capacity;
//  2. light beside a flood: the same arrivals (the same seed), with a
//     second key flooding at Flood times the capacity;
//  3. the same without keys: llmlabd sees one flow, as before fair shares;
//  4. weights 1 and 3: two keys, each at Flood/2 times the capacity.
//
// The light key's goodput and p95 beside the flood are compared with
// what it got alone, and the tokens the two weighted keys were served
// with their weights.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
)

// fairKey is one API key of a fair-share phase: its name, key, weight,
// load (a multiple of the capacity) and arrivals' seed.
type fairKey struct {
	name, key string
	weight    float64
	load      float64
	seed      uint64
}

type fairPhase struct {
	label string
	// keys: llmlabd has the keys file; otherwise every request is
	// anonymous, of one flow (the keys still send their headers).
	keys    bool
	clients []fairKey
}

// Fair-share phases' labels.
const (
	phaseAlone   = "light alone"
	phaseFlood   = "light + flood"
	phaseOneFlow = "light + flood, no keys"
	phaseWeights = "weights 1:3"
)

func fairPhases(o Options) []fairPhase {
	light := fairKey{"light", "sk-llmlab-tune-light-0001", 1, o.Light, 1}
	flood := fairKey{"flood", "sk-llmlab-tune-flood-0002", 1, o.Flood, 2}
	w1 := fairKey{"w1", "sk-llmlab-tune-w1-000003", 1, o.Flood / 2, 3}
	w3 := fairKey{"w3", "sk-llmlab-tune-w3-000004", 3, o.Flood / 2, 4}
	return []fairPhase{
		{phaseAlone, true, []fairKey{light}},
		{phaseFlood, true, []fairKey{light, flood}},
		{phaseOneFlow, false, []fairKey{light, flood}},
		{phaseWeights, true, []fairKey{w1, w3}},
	}
}

// keysFile is the keys file of every phase's keys.
func keysFile(phases []fairPhase) string {
	seen := map[string]bool{}
	out := "# name key options\n"
	for _, p := range phases {
		for _, c := range p.clients {
			if !seen[c.name] {
				seen[c.name] = true
				out += fmt.Sprintf("%s %s weight=%g\n", c.name, c.key, c.weight)
			}
		}
	}
	return out
}

// runFair runs the phases against the engine, of capacity requests a
// second, in dir.
func runFair(ctx context.Context, o Options, client *http.Client, engine, profile string, capacity float64, dir string) ([]Row, error) {
	phases := fairPhases(o)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	keys := filepath.Join(dir, "keys")
	if err := os.WriteFile(keys, []byte(keysFile(phases)), 0o600); err != nil {
		return nil, err
	}
	var rows []Row
	for i, p := range phases {
		fmt.Fprintf(o.Out, "  %s ...\n", p.label)
		extra := ""
		if p.keys {
			extra = fmt.Sprintf("[auth]\nkeys_file = %q\n", keys)
		}
		d, err := startLlmlabd(ctx, filepath.Join(dir, fmt.Sprintf("phase-%d", i)), o, engine,
			fmt.Sprintf("concurrency = \"model\"\nmax_inflight = %d\nmin_inflight = %d", o.MaxNumSeqs, o.MinInflight), extra, true)
		if err != nil {
			return rows, err
		}
		gw := d.URL
		steps0, onTime0, _ := bench.LagSnapshot(engine + "/metrics")
		samples := make([][]bench.Sample, len(p.clients))
		var wg sync.WaitGroup
		// The engine's work by key as llmlabd counts it, over the measured
		// span: read at its start and at its end.
		var served [2]map[string]float64
		start := time.Now()
		wg.Go(func() {
			for k, at := range []time.Duration{o.Warmup, o.Warmup + o.Duration} {
				select {
				case <-time.After(time.Until(start.Add(at))):
				case <-ctx.Done():
					return
				}
				served[k] = engineTokens("http://" + d.Metrics + "/metrics")
			}
		})
		for j, c := range p.clients {
			opt := bench.Options{Target: gw, Model: model, Stream: o.Stream, PromptTokens: 200, MaxTokens: 200,
				Rate: c.load * capacity, Poisson: true, Seed: c.seed, Warmup: o.Warmup, Duration: o.Duration, Timeout: 60 * time.Second,
				Header: http.Header{"Authorization": {"Bearer " + c.key}}}
			wg.Go(func() { samples[j], _ = bench.Run(ctx, client, opt) })
		}
		wg.Wait()
		steps1, onTime1, _ := bench.LagSnapshot(engine + "/metrics")
		limit := finalLimit(gw)
		d.Stop()
		lag := bench.CheckLag(steps0, onTime0, steps1, onTime1)
		for j, c := range p.clients {
			row := Row{Profile: profile, Setting: p.label, Key: c.name, Weight: c.weight, Capacity: capacity,
				Rate: c.load * capacity, Limit: limit, Summary: bench.Summarize(samples[j], o.Duration, o.SLO), Lag: lag}
			if p.keys && served[0] != nil && served[1] != nil {
				row.EngineTokens = served[1][c.name] - served[0][c.name]
			}
			rows = append(rows, row)
		}
		bench.Drain(ctx, engine+"/metrics", 2*time.Minute)
		if ctx.Err() != nil {
			return rows, ctx.Err()
		}
	}
	return rows, nil
}

// engineTokens reads llmlab_client_engine_tokens_total by key from
// llmlabd's metrics (nil: not read).
func engineTokens(url string) map[string]float64 {
	fams, err := bench.Scrape(url)
	if err != nil {
		return nil
	}
	out := map[string]float64{}
	if f := fams["llmlab_client_engine_tokens_total"]; f != nil {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "client" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// findRow is the row of profile, phase and key (nil: none).
func findRow(rows []Row, profile, phase, key string) *Row {
	for i := range rows {
		if r := &rows[i]; r.Profile == profile && r.Setting == phase && r.Key == key {
			return r
		}
	}
	return nil
}

func printFair(w io.Writer, o Options, rows []Row) {
	fmt.Fprintf(w, "\nopen loops (Poisson) per API key, 200 prompt + 200 output tokens, SLO p95 <= %s; the model's limit; warm-up %s, measured %s\n\n",
		o.SLO.Latency, o.Warmup, o.Duration)
	fmt.Fprintf(w, "| profile | phase | key | weight | offered req/s | goodput req/s | ok/s | p95 | queue wait p95 | answered tokens/s | engine tokens/s | refused | final limit | note |\n")
	fmt.Fprintf(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		s := r.Summary
		engine := "-"
		if r.EngineTokens > 0 {
			engine = fmt.Sprintf("%.0f", r.EngineTokens/s.Seconds)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %g | %.2f | %.2f | %.2f | %s | %s | %.0f | %s | %d | %d | %s |\n", r.Profile, r.Setting, r.Key, r.Weight,
			r.Rate, s.Goodput, s.RPS, s.Latency.P95.Round(10*time.Millisecond), s.QueueWait.P95.Round(10*time.Millisecond),
			float64(s.Tokens)/s.Seconds, engine, s.Refused, r.Limit, verdict(r))
	}
	fmt.Fprintln(w)
	for _, p := range o.Profiles {
		alone, beside, oneFlow := findRow(rows, p, phaseAlone, "light"), findRow(rows, p, phaseFlood, "light"), findRow(rows, p, phaseOneFlow, "light")
		if alone != nil && beside != nil && alone.Summary.Goodput > 0 && alone.Summary.Latency.P95 > 0 {
			a, b := alone.Summary, beside.Summary
			fmt.Fprintf(w, "- %s: the light key beside the flood gets %.2fx its goodput alone (%.2f of %.2f req/s) and %.2fx its p95 (%s against %s; %d answers against %d); target within 5%%\n",
				p, b.Goodput/a.Goodput, b.Goodput, a.Goodput, float64(b.Latency.P95)/float64(a.Latency.P95),
				b.Latency.P95.Round(10*time.Millisecond), a.Latency.P95.Round(10*time.Millisecond), b.OK, a.OK)
			if oneFlow != nil {
				c := oneFlow.Summary
				fmt.Fprintf(w, "- %s: without keys (one flow) the same light requests get %.2fx their goodput alone (%.2f req/s), p95 %s, %d refused\n",
					p, c.Goodput/a.Goodput, c.Goodput, c.Latency.P95.Round(10*time.Millisecond), c.Refused)
			}
		}
		w1, w3 := findRow(rows, p, phaseWeights, "w1"), findRow(rows, p, phaseWeights, "w3")
		if w1 != nil && w3 != nil && w1.Summary.Tokens > 0 {
			ratio := float64(w3.Summary.Tokens) / float64(w1.Summary.Tokens)
			fmt.Fprintf(w, "- %s: weights 1 and 3 were answered tokens in the ratio 1:%.2f (%d and %d tokens, the answers to the requests sent in the measured span); target 1:3 within 10%% (2.70-3.30)\n",
				p, ratio, w1.Summary.Tokens, w3.Summary.Tokens)
			if w1.EngineTokens > 0 {
				fmt.Fprintf(w, "- %s: llmlabd counted the engine's work in the ratio 1:%.2f (llmlab_client_engine_tokens_total over the measured span: %.0f and %.0f tokens)\n",
					p, w3.EngineTokens/w1.EngineTokens, w1.EngineTokens, w3.EngineTokens)
			}
		}
	}
}
