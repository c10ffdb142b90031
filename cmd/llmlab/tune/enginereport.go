// The report: the table, the best point and the frontier.

package tune

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/sim"
)

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
