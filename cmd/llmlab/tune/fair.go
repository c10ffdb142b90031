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
// --phases runs some of them; --repeat runs each that many times (new
// arrivals each round), and pools the rounds for the comparisons.
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
	"slices"
	"sync"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
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
	// name is what --phases calls it, label what the table does.
	name, label string
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
		{"alone", phaseAlone, true, []fairKey{light}},
		{"flood", phaseFlood, true, []fairKey{light, flood}},
		{"nokeys", phaseOneFlow, false, []fairKey{light, flood}},
		{"weights", phaseWeights, true, []fairKey{w1, w3}},
	}
}

// FairPhaseNames are the phases --phases may name, in the order they run.
var FairPhaseNames = []string{"alone", "flood", "nokeys", "weights"}

// selectPhases keeps the phases o.FairPhases names (all when none).
func selectPhases(o Options) []fairPhase {
	all := fairPhases(o)
	if len(o.FairPhases) == 0 {
		return all
	}
	var out []fairPhase
	for _, p := range all {
		if slices.Contains(o.FairPhases, p.name) {
			out = append(out, p)
		}
	}
	return out
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
	phases := selectPhases(o)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	keys := filepath.Join(dir, "keys")
	if err := os.WriteFile(keys, []byte(keysFile(fairPhases(o))), 0o600); err != nil {
		return nil, err
	}
	rounds := max(1, o.Repeat)
	var rows []Row
	// Every round's samples and engine tokens, by phase and key.
	type pooled struct {
		samples []bench.Sample
		tokens  float64
	}
	pool := map[[2]string]*pooled{}
	for round := 1; round <= rounds; round++ {
		r, err := runFairRound(ctx, o, client, engine, profile, capacity, dir, keys, phases, round)
		rows = append(rows, r.rows...)
		for k, v := range r.samples {
			if pool[k] == nil {
				pool[k] = &pooled{}
			}
			pool[k].samples = append(pool[k].samples, v...)
			pool[k].tokens += r.tokens[k]
		}
		if err != nil {
			return rows, err
		}
	}
	if rounds > 1 {
		for _, p := range phases {
			for _, c := range p.clients {
				k := [2]string{p.label, c.name}
				rows = append(rows, Row{Profile: profile, Setting: p.label, Key: c.name, Weight: c.weight, Capacity: capacity,
					Rate: c.load * capacity, Summary: bench.Summarize(pool[k].samples, time.Duration(rounds)*o.Duration, o.SLO),
					EngineTokens: pool[k].tokens})
			}
		}
	}
	return rows, nil
}

// fairRound is one round's rows, and its samples and engine tokens by
// phase label and key.
type fairRound struct {
	rows    []Row
	samples map[[2]string][]bench.Sample
	tokens  map[[2]string]float64
}

// runFairRound runs the phases once, as round round.
func runFairRound(ctx context.Context, o Options, client *http.Client, engine, profile string, capacity float64, dir, keys string,
	phases []fairPhase, round int) (fairRound, error) {
	out := fairRound{samples: map[[2]string][]bench.Sample{}, tokens: map[[2]string]float64{}}
	for _, p := range phases {
		fmt.Fprintf(o.Out, "  %s (round %d) ...\n", p.label, round)
		extra := ""
		if p.keys {
			extra = fmt.Sprintf("[auth]\nkeys_file = %q\n", keys)
		}
		d, err := startLlmlabd(ctx, filepath.Join(dir, fmt.Sprintf("%s-%d", p.name, round)), o, engine, sim.PolicyFCFS,
			fmt.Sprintf("concurrency = \"model\"\nmax_inflight = %d\nmin_inflight = %d", o.MaxNumSeqs, o.MinInflight), extra, true)
		if err != nil {
			return out, err
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
				Rate: c.load * capacity, Poisson: true, Seed: c.seed + 100*uint64(round-1), Warmup: o.Warmup, Duration: o.Duration, Timeout: 60 * time.Second,
				Header: http.Header{"Authorization": {"Bearer " + c.key}}}
			wg.Go(func() { samples[j], _ = bench.Run(ctx, client, opt) })
		}
		wg.Wait()
		steps1, onTime1, _ := bench.LagSnapshot(engine + "/metrics")
		limit := finalLimit(gw)
		d.Stop()
		lag := bench.CheckLag(steps0, onTime0, steps1, onTime1)
		for j, c := range p.clients {
			row := Row{Profile: profile, Setting: p.label, Key: c.name, Weight: c.weight, Round: round, Capacity: capacity,
				Rate: c.load * capacity, Limit: limit, Summary: bench.Summarize(samples[j], o.Duration, o.SLO), Lag: lag}
			if p.keys && served[0] != nil && served[1] != nil {
				row.EngineTokens = served[1][c.name] - served[0][c.name]
			}
			out.rows = append(out.rows, row)
			k := [2]string{p.label, c.name}
			out.samples[k] = samples[j]
			out.tokens[k] = row.EngineTokens
		}
		bench.Drain(ctx, engine+"/metrics", 2*time.Minute)
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
	}
	return out, nil
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

// findRow is the row of profile, phase and key (nil: none): the rounds
// pooled where there are several, else the one round's.
func findRow(rows []Row, profile, phase, key string) *Row {
	var found *Row
	for i := range rows {
		if r := &rows[i]; r.Profile == profile && r.Setting == phase && r.Key == key && (found == nil || r.Round == 0) {
			found = r
		}
	}
	return found
}

// roundLabel is a row's round in the table: "all" for the rounds pooled.
func roundLabel(r Row) string {
	if r.Round == 0 {
		return "all"
	}
	return fmt.Sprint(r.Round)
}

func printFair(w io.Writer, o Options, rows []Row) {
	fmt.Fprintf(w, "\nopen loops (Poisson) per API key, 200 prompt + 200 output tokens, SLO p95 <= %s; the model's limit; warm-up %s, measured %s\n\n",
		o.SLO.Latency, o.Warmup, o.Duration)
	fmt.Fprintf(w, "| profile | phase | round | key | weight | offered req/s | goodput req/s | ok/s | p95 | queue wait p95 | answered tokens/s | engine tokens/s | refused | final limit | note |\n")
	fmt.Fprintf(w, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		s := r.Summary
		engine := "-"
		if r.EngineTokens > 0 {
			engine = fmt.Sprintf("%.0f", r.EngineTokens/s.Seconds)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %g | %.2f | %.2f | %.2f | %s | %s | %.0f | %s | %d | %d | %s |\n", r.Profile, r.Setting, roundLabel(r), r.Key, r.Weight,
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
