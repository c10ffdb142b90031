// llmlab tune-engine: its options and the run, from the grid to the
// report. The steps are beside it: the grid's points and their results
// (enginepoint.go), the sweep through one llmlabd (enginesweep.go), what is
// read from llmlabd and the engine (enginereadings.go), the generated
// configurations (engineconfig.go), the results store (engineresults.go),
// the report (enginereport.go) and --apply (engineapply.go, fileedit.go).

package tune

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
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
	// Progress gets the progress bar: redrawn in place on a terminal,
	// plain lines otherwise (nil: none).
	Progress io.Writer

	budget uint64 // the tuned configuration's gpu.memory_budget
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
		o.report(all, measuredProfile(o.Results, prof))
		return all, nil
	}
	if o.Config == "" {
		if err := recordProfile(o.Results, prof); err != nil {
			return nil, err
		}
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
