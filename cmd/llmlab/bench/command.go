package bench

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/internal/progressline"
)

// Command is llmlab bench: the fixed workload against a server, in a
// closed or an open loop, a sweep of rates or find-max, with results and
// plots (Run, FindMax, WriteResults).
func Command() command.Command {
	return command.Command{Name: "bench", Summary: "send the fixed workload and report throughput, goodput and latency", Flags: benchFlagSet}
}

// side is one server measured in turn with the others at each rate.
type side struct{ label, url, metrics string }

// parseSides reads "label=URL,label=URL" and, from metrics, the same form
// for the /metrics URLs to drain by (default: URL/metrics).
func parseSides(spec, metrics string) ([]side, error) {
	var out []side
	m := map[string]string{}
	for _, kv := range strings.Split(metrics, ",") {
		if l, u, ok := strings.Cut(strings.TrimSpace(kv), "="); ok {
			m[l] = u
		} else if strings.TrimSpace(kv) != "" {
			return nil, fmt.Errorf("--sides-metrics %q: want label=URL pairs separated by commas", metrics)
		}
	}
	for _, kv := range strings.Split(spec, ",") {
		l, u, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || l == "" || !strings.HasPrefix(u, "http") {
			return nil, fmt.Errorf("--sides %q: want label=URL pairs separated by commas", spec)
		}
		s := side{label: l, url: u, metrics: m[l]}
		if s.metrics == "" {
			s.metrics = strings.TrimRight(u, "/") + "/metrics"
		}
		out = append(out, s)
	}
	return out, nil
}

// benchFlags are llmlab bench's options beyond one load run's.
type benchFlags struct {
	o             Options
	rates         []float64
	baseline      string
	findMax       bool
	maxRate       float64
	precision     float64
	targetMetrics string
	baseMetrics   string
	results       string
	sides         []side
	progress      bool
	slo           SLO
	drainTimeout  time.Duration
}

func benchFlagSet(fs *flag.FlagSet) command.Run {
	var f benchFlags
	o := &f.o
	fs.StringVar(&o.Target, "target", "http://127.0.0.1:8080", "base URL of the OpenAI-compatible server under test")
	fs.StringVar(&f.baseline, "baseline", "", "a second server to measure side by side (alternating phases), e.g. the engine alone")
	sides := fs.String("sides", "", "instead of --target and --baseline: label=URL,label=URL,... measured in turn at each rate")
	sidesMetrics := fs.String("sides-metrics", "", "label=URL,... : the /metrics to drain each side by (default: its URL/metrics)")
	fs.StringVar(&o.Model, "model", "Qwen/Qwen2.5-0.5B-Instruct", "model name (empty: the server's default)")
	fs.BoolVar(&o.Chat, "chat", false, "use /v1/chat/completions")
	fs.BoolVar(&o.Stream, "stream", true, "stream the answer (measures time to first token)")
	fs.BoolVar(&o.Retry, "retry", false, "send each refusal (429, 503) again once, after its Retry-After, and report how many were then answered (the retries add load; they are not in the other figures)")
	fs.IntVar(&o.PromptTokens, "prompt-tokens", 200, "prompt length in tokens")
	fs.IntVar(&o.MaxTokens, "max-tokens", 200, "output tokens (sent with ignore_eos and min_tokens)")
	fs.IntVar(&o.Concurrency, "concurrency", 0, "closed loop: this many clients")
	fs.Float64Var(&o.Rate, "rate", 0, "open loop: requests per second (the start of --find-max)")
	rates := fs.String("rates", "", "open loop: a sweep of rates, comma-separated")
	fs.BoolVar(&o.Poisson, "poisson", true, "open loop: Poisson arrivals (else constant)")
	fs.DurationVar(&o.BurstOn, "burst-on", 0, "open loop: bursts of this length at --rate ...")
	fs.DurationVar(&o.BurstOff, "burst-off", 0, "... separated by this much silence")
	trace := fs.String("trace", "", "open loop: replay arrival times (seconds, one a line) from this file")
	fs.IntVar(&o.Requests, "requests", 0, "stop after this many requests instead of --duration")
	fs.DurationVar(&o.Duration, "duration", 30*time.Second, "measurement time per phase")
	fs.DurationVar(&o.Warmup, "warmup", 5*time.Second, "warm-up time per phase, excluded")
	fs.DurationVar(&o.Timeout, "timeout", 60*time.Second, "per-request timeout")
	fs.Uint64Var(&o.Seed, "seed", 1, "seed of the Poisson arrivals")
	fs.DurationVar(&f.slo.Latency, "slo-p95", 5*time.Second, "SLO latency (p95 bound, and the goodput bound)")
	fs.Float64Var(&f.slo.MaxErrorRate, "max-error-rate", 0.001, "SLO error rate (refusals and failures)")
	fs.BoolVar(&f.findMax, "find-max", false, "search the highest rate that meets the SLO (starts at --rate, default 1)")
	fs.Float64Var(&f.maxRate, "max-rate", 1000, "--find-max: never offer more than this")
	fs.Float64Var(&f.precision, "precision", 0.05, "--find-max: stop when the bracket is this narrow (relative)")
	fs.StringVar(&f.targetMetrics, "target-engine-metrics", "", "the engine behind --target: its /metrics URL, to drain between phases and check simulator lag (default: --target's own /metrics)")
	fs.StringVar(&f.baseMetrics, "baseline-engine-metrics", "", "the same for --baseline (default: --baseline's own /metrics)")
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 2*time.Minute, "most time to wait for an engine to go idle between phases")
	fs.StringVar(&f.results, "results", "auto", "results folder (auto: results/bench-<UTC time>; \"\" writes none)")
	progress := fs.String("progress", "auto", "progress line on stderr: auto (when a terminal), on (plain lines where not a terminal), off")
	keyFile := fs.String("api-key-file", "", "send the API key this file holds as Authorization: Bearer KEY (a file, so that the key is in neither the process list nor the results)")
	return func(ctx context.Context, _ []string) int {
		if *keyFile != "" {
			data, err := os.ReadFile(*keyFile)
			key := strings.TrimSpace(string(data))
			if err != nil || key == "" {
				fmt.Fprintf(os.Stderr, "llmlab bench: --api-key-file %s: want a file holding an API key (%v)\n", *keyFile, err)
				return 2
			}
			f.o.Header = http.Header{"Authorization": {"Bearer " + key}}
		}
		if *sides != "" {
			var err error
			if f.sides, err = parseSides(*sides, *sidesMetrics); err != nil {
				fmt.Fprintln(os.Stderr, "llmlab bench:", err)
				return 2
			}
			if f.baseline != "" || f.findMax {
				fmt.Fprintln(os.Stderr, "llmlab bench: --sides replaces --target and --baseline, and does not go with --find-max")
				return 2
			}
			f.o.Target = f.sides[0].url
		}
		return benchCmd(ctx, f, *rates, *trace, *progress)
	}
}

func benchCmd(ctx context.Context, f benchFlags, rates, trace, progress string) int {
	o := &f.o
	if f.results == "auto" {
		f.results = command.ResultsDir("bench")
	}

	for _, r := range strings.Split(rates, ",") {
		if strings.TrimSpace(r) == "" {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(r), 64)
		if err != nil || v <= 0 {
			fmt.Fprintf(os.Stderr, "llmlab bench: --rates %q: want positive numbers separated by commas\n", rates)
			return 2
		}
		f.rates = append(f.rates, v)
	}
	if trace != "" {
		fh, err := os.Open(trace)
		if err != nil {
			fmt.Fprintln(os.Stderr, "llmlab bench:", err)
			return 2
		}
		o.Trace, err = ParseTrace(fh)
		fh.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "llmlab bench: --trace %s: %v\n", trace, err)
			return 2
		}
	}
	if f.findMax && o.Rate == 0 {
		o.Rate = 1
	}
	open := o.Rate > 0 || len(f.rates) > 0 || len(o.Trace) > 0
	if (o.Concurrency > 0) == open {
		fmt.Fprintln(os.Stderr, "llmlab bench: choose a closed loop (--concurrency) or an open loop (--rate, --rates, --trace, --find-max)")
		return 2
	}
	if (o.BurstOn > 0) != (o.BurstOff > 0) {
		fmt.Fprintln(os.Stderr, "llmlab bench: --burst-on and --burst-off go together")
		return 2
	}
	switch progress {
	case "on":
		f.progress = true
	case "auto":
		f.progress = progressline.IsTerminal(os.Stderr)
	}
	if f.targetMetrics == "" {
		f.targetMetrics = strings.TrimRight(o.Target, "/") + "/metrics"
	}
	if f.baseMetrics == "" && f.baseline != "" {
		f.baseMetrics = strings.TrimRight(f.baseline, "/") + "/metrics"
	}
	return runBench(ctx, f, os.Stdout)
}

func runBench(ctx context.Context, f benchFlags, out io.Writer) int {
	client := NewClient(max(f.o.Concurrency, 256))
	var phases []Phase
	phase := func(label, url, metrics string, o Options) Phase {
		o.Target = url
		steps0, ok0, lagOK := LagSnapshot(metrics)
		var line *progressline.Line
		if f.progress {
			line = progressline.New(os.Stderr, plainProgressEvery)
			o.Progress = newProgress(o, line).add
		}
		samples, _ := Run(ctx, client, o)
		if line != nil {
			line.Clear()
		}
		p := Phase{Target: url, Label: label, Rate: o.Rate, Samples: samples,
			Summary: Summarize(samples, Window(samples, o), f.slo)}
		if lagOK {
			steps1, ok1, _ := LagSnapshot(metrics)
			p.Lag = CheckLag(steps0, ok0, steps1, ok1)
		}
		Drain(ctx, metrics, f.drainTimeout)
		printPhase(out, p)
		phases = append(phases, p)
		return p
	}

	fmt.Fprintf(out, "%-8s %-9s %8s %8s %8s %8s %9s %9s %9s %7s %7s  %s\n",
		"side", "rate", "ok/s", "goodput", "out tok/s", "err", "p50", "p95", "ttft p95", "refused", "failed", "SLO")
	code := 0
	switch {
	case f.findMax:
		best := FindMax(f.o.Rate, f.maxRate, f.precision, func(rate float64) bool {
			o := f.o
			o.Rate = rate
			p := phase("target", f.o.Target, f.targetMetrics, o)
			return p.Summary.Pass && (!p.Lag.Checked || p.Lag.Valid)
		})
		fmt.Fprintf(out, "\nsustainable rate within the SLO (p95 <= %s, error rate <= %g): %.2f req/s\n", f.slo.Latency, f.slo.MaxErrorRate, best)
	default:
		rates := f.rates
		if len(rates) == 0 {
			rates = []float64{f.o.Rate}
		}
		for _, r := range rates {
			o := f.o
			o.Rate = r
			if len(f.sides) > 0 {
				for _, s := range f.sides {
					if p := phase(s.label, s.url, s.metrics, o); !p.Summary.Pass {
						code = 3
					}
				}
				continue
			}
			p := phase("target", f.o.Target, f.targetMetrics, o)
			if !p.Summary.Pass {
				code = 3
			}
			if f.baseline != "" {
				phase("baseline", f.baseline, f.baseMetrics, o)
			}
		}
	}
	if f.results != "" {
		if err := WriteResults(f.results, os.Args, f.o, phases, f.slo); err != nil {
			fmt.Fprintln(os.Stderr, "llmlab bench: writing results:", err)
			return 1
		}
		fmt.Fprintf(out, "\nresults: %s (command.txt, results.json with every sample, results.csv, latency-vs-load.svg, latency-distribution.svg)\n", f.results)
	}
	if ctx.Err() != nil {
		return 1
	}
	return code
}

func printPhase(out io.Writer, p Phase) {
	s := p.Summary
	verdict := "fail"
	if s.Pass {
		verdict = "pass"
	}
	if p.Lag.Checked && !p.Lag.Valid {
		verdict += fmt.Sprintf(" INVALID: the simulator ran %.0f of %.0f steps late", p.Lag.LateSteps, p.Lag.Steps)
	}
	rate := "closed"
	if p.Rate > 0 {
		rate = fmt.Sprintf("%.2f/s", p.Rate)
	}
	fmt.Fprintf(out, "%-8s %-9s %8.2f %8.2f %8.0f %8.4f %9s %9s %9s %7d %7d  %s\n", p.Label, rate, s.RPS, s.Goodput, s.OutputTPS, s.ErrorRate,
		s.Latency.P50.Round(time.Millisecond), s.Latency.P95.Round(time.Millisecond), s.TTFT.P95.Round(time.Millisecond), s.Refused, s.Failed, verdict)
	if s.Retried > 0 {
		fmt.Fprintf(out, "%-8s %-9s retried after Retry-After (p50 %s, p95 %s): %d, answered %d (%.0f%%)\n", "", "",
			s.RetryAfter.P50, s.RetryAfter.P95, s.Retried, s.RetriedOK, 100*float64(s.RetriedOK)/float64(s.Retried))
	}
}
