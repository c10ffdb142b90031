package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
)

func benchCmd(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("llmlab bench", flag.ExitOnError)
	var o bench.Options
	fs.StringVar(&o.Target, "target", "http://127.0.0.1:8080", "base URL of the OpenAI-compatible server")
	fs.StringVar(&o.Model, "model", "Qwen/Qwen2.5-0.5B-Instruct", "model name (empty: the server's default)")
	fs.BoolVar(&o.Chat, "chat", false, "use /v1/chat/completions")
	fs.BoolVar(&o.Stream, "stream", true, "stream the answer (measures time to first token)")
	fs.IntVar(&o.PromptTokens, "prompt-tokens", 200, "prompt length in tokens")
	fs.IntVar(&o.MaxTokens, "max-tokens", 200, "output tokens (sent with ignore_eos)")
	fs.IntVar(&o.Concurrency, "concurrency", 0, "closed loop: this many clients")
	fs.Float64Var(&o.Rate, "rate", 0, "open loop: requests per second")
	fs.BoolVar(&o.Poisson, "poisson", true, "open loop: Poisson arrivals (else constant)")
	fs.DurationVar(&o.Duration, "duration", 30*time.Second, "measurement time")
	fs.DurationVar(&o.Warmup, "warmup", 5*time.Second, "warm-up time, excluded")
	fs.DurationVar(&o.Timeout, "timeout", 60*time.Second, "per-request timeout")
	slo := fs.Duration("slo-p95", 5*time.Second, "SLO latency (p95 bound, and the goodput bound)")
	maxErr := fs.Float64("max-error-rate", 0.001, "SLO error rate")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	_ = fs.Parse(args)
	if (o.Concurrency > 0) == (o.Rate > 0) {
		fmt.Fprintln(os.Stderr, "llmlab bench: set one of --concurrency and --rate")
		return 2
	}
	samples, err := bench.Run(ctx, bench.NewClient(max(o.Concurrency, 64)), o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmlab bench:", err)
		return 1
	}
	s := bench.Summarize(samples, o.Duration, bench.SLO{Latency: *slo, MaxErrorRate: *maxErr})
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s)
	} else {
		fmt.Printf("requests %d  ok %d  refused %d  failed %d  by status %v\n", s.Requests, s.OK, s.Refused, s.Failed, s.ByCode)
		fmt.Printf("throughput %.1f req/s  goodput %.1f req/s  output %.0f tok/s  error rate %.4f\n", s.RPS, s.Goodput, s.OutputTPS, s.ErrorRate)
		fmt.Printf("latency p50 %s p90 %s p95 %s p99 %s\n", s.Latency.P50, s.Latency.P90, s.Latency.P95, s.Latency.P99)
		fmt.Printf("ttft    p50 %s p90 %s p95 %s p99 %s\n", s.TTFT.P50, s.TTFT.P90, s.TTFT.P95, s.TTFT.P99)
		verdict := "FAIL"
		if s.Pass {
			verdict = "PASS"
		}
		fmt.Printf("SLO (p95 <= %s, error rate <= %g): %s\n", *slo, *maxErr, verdict)
	}
	if !s.Pass {
		return 3
	}
	return 0
}
