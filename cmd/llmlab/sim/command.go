package sim

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
)

// Command is llmlab sim: the simulator served on vLLM's flags, with
// llmlabd's engine.* knobs read from the environment as llmlab-engine
// passes them.
func Command() command.Command {
	return command.Command{Name: "sim", Summary: "simulate a vLLM engine on a GPU profile (vLLM's API and metrics)", Flags: simFlags}
}

func simFlags(fs *flag.FlagSet) command.Run {
	profile := fs.String("profile", "gtx1650", "GPU and model profile: "+ProfileNames())
	host := fs.String("host", "127.0.0.1", "address to listen on (as vLLM's --host)")
	port := fs.Int("port", 8000, "port to listen on (as vLLM's --port)")
	model := fs.String("served-model-name", "Qwen/Qwen2.5-0.5B-Instruct", "model name the engine serves")
	// llmlabd passes its engine.* knobs as these variables (llmlab-engine
	// turns them into vLLM's flags); a flag given here wins.
	envInt := func(name string) int {
		n, _ := strconv.Atoi(os.Getenv(name))
		return max(n, 0)
	}
	envOr := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	maxSeqs := fs.Int("max-num-seqs", envInt("LLMLAB_MAX_NUM_SEQS"), "most sequences running at once (0: the profile's; default $LLMLAB_MAX_NUM_SEQS)")
	maxBatched := fs.Int("max-num-batched-tokens", envInt("LLMLAB_MAX_NUM_BATCHED_TOKENS"), "token budget of one engine step (0: the profile's; default $LLMLAB_MAX_NUM_BATCHED_TOKENS)")
	maxLen := fs.Int("max-model-len", envInt("LLMLAB_MAX_MODEL_LEN"), "context length (0: the profile's; default $LLMLAB_MAX_MODEL_LEN)")
	defUtil := 0.9
	if v, err := strconv.ParseFloat(os.Getenv("LLMLAB_GPU_MEMORY_UTILIZATION"), 64); err == nil && v > 0 && v <= 1 {
		defUtil = v // as llmlab-engine passes llmlabd's share to vLLM
	}
	util := fs.Float64("gpu-memory-utilization", defUtil, "fraction of the card's memory the engine takes (default: $LLMLAB_GPU_MEMORY_UTILIZATION, else 0.9)")
	blocks := fs.Int("num-gpu-blocks-override", 0, "KV-cache blocks of 16 tokens (0: from the memory budget)")
	policy := fs.String("scheduling-policy", envOr("LLMLAB_SCHEDULING_POLICY", PolicyFCFS), `the waiting queue's order and the preemption victim: "fcfs" or "priority" (each request's "priority", lower first; default $LLMLAB_SCHEDULING_POLICY, else fcfs)`)
	queued := fs.Int("max-num-queued-reqs", envInt("LLMLAB_MAX_NUM_QUEUED_REQS"), "most sequences in flight, waiting and running, before 503 (0: unbounded, as vLLM's default; default $LLMLAB_MAX_NUM_QUEUED_REQS)")
	stepFixed := fs.Duration("step-fixed", -1, "fixed cost of an engine step (default: the profile's)")
	perToken := fs.Duration("per-token", -1, "cost per token processed in a step (default: the profile's)")
	perKV := fs.Duration("per-kv-token", -1, "cost per KV-cache token read in a step (default: the profile's)")
	startup := fs.Duration("startup-delay", -1, "time before the port opens (default: the profile's)")
	wake := fs.Duration("wake-time", -1, "time POST /wake_up takes after POST /sleep?level=1 (default: the profile's)")
	diskRate := fs.Float64("disk-read-rate", DefaultDiskReadRate/(1<<30), "GiB/s the weights are read back from disk at after POST /sleep?level=2 (POST /collective_rpc reload_weights)")
	gpuMem := fs.Float64("gpu-memory-gib", 0, "the card's memory in GiB (default: the profile's)")
	errRate := fs.Float64("error-rate", 0, "fraction of requests answered 500 (failure injection)")
	crashAfter := fs.Int("crash-after", 0, "exit with status 1 when this many requests have been served (0: never)")
	genCfg := fs.String("override-generation-config", "", `JSON generation settings, as vLLM's; "max_new_tokens" caps every request's output`)
	sleepMode := fs.Bool("enable-sleep-mode", false, "serve /sleep (levels 1 and 2), /wake_up, /is_sleeping and /collective_rpc's reload_weights (only with VLLM_SERVER_DEV_MODE=1 in the environment, as vLLM)")
	forceUsage := fs.Bool("enable-force-include-usage", false, "report usage in every stream, as if each asked with stream_options.include_usage")
	prefixCaching := fs.Bool("enable-prefix-caching", true, "reuse computed prompt blocks (vLLM's default)")
	noPrefixCaching := fs.Bool("no-enable-prefix-caching", false, "turn prefix caching off")
	show := fs.Bool("show-profile", false, "print the profile and exit")
	fitFile := fs.String("fit", "", "fit the cost model to a measurement file of docs/calibration/measure.py, print each step's error, and exit")
	return func(ctx context.Context, _ []string) int {
		if *fitFile != "" {
			if err := printFit(os.Stdout, *fitFile); err != nil {
				fmt.Fprintln(os.Stderr, "llmlab sim:", err)
				return 1
			}
			return 0
		}

		if *policy != PolicyFCFS && *policy != PolicyPriority {
			fmt.Fprintf(os.Stderr, "llmlab sim: --scheduling-policy %q: want %q or %q (as vLLM's)\n", *policy, PolicyFCFS, PolicyPriority)
			return 2
		}
		p, ok := Profiles[*profile]
		if !ok {
			fmt.Fprintf(os.Stderr, "llmlab sim: --profile %q: want one of %s\n", *profile, ProfileNames())
			return 2
		}
		if *stepFixed >= 0 {
			p.StepFixed = *stepFixed
		}
		if *perToken >= 0 {
			p.PerToken = *perToken
		}
		if *perKV >= 0 {
			p.PerKVToken = *perKV
		}
		if *startup >= 0 {
			p.StartupDelay = *startup
		}
		if *wake >= 0 {
			p.WakeTime = *wake
		}
		if *diskRate <= 0 {
			fmt.Fprintf(os.Stderr, "llmlab sim: --disk-read-rate %g: want GiB/s above 0\n", *diskRate)
			return 2
		}
		p.DiskReadRate = *diskRate * (1 << 30)
		if *gpuMem > 0 {
			p.GPUMemory = int64(*gpuMem * (1 << 30))
		}
		cfg := Config{Profile: p, MaxNumSeqs: p.MaxNumSeqs, MaxNumBatchedTokens: p.MaxNumBatchedTokens,
			MaxModelLen: p.MaxModelLen, MaxNumQueuedReqs: *queued, PrefixCaching: *prefixCaching && !*noPrefixCaching,
			SchedulingPolicy: *policy}
		maxNew := 0
		if *genCfg != "" {
			var g struct {
				MaxNewTokens int `json:"max_new_tokens"`
			}
			if err := json.Unmarshal([]byte(*genCfg), &g); err != nil || g.MaxNewTokens < 0 {
				fmt.Fprintf(os.Stderr, "llmlab sim: --override-generation-config %q: want a JSON object such as {\"max_new_tokens\": 1024}\n", *genCfg)
				return 2
			}
			maxNew = g.MaxNewTokens
		}
		if *maxSeqs > 0 {
			cfg.MaxNumSeqs = *maxSeqs
		}
		if *maxBatched > 0 {
			cfg.MaxNumBatchedTokens = *maxBatched
		}
		if *maxLen > 0 {
			cfg.MaxModelLen = *maxLen
		}
		if *blocks > 0 {
			cfg.KVBlocks = *blocks
		} else {
			// As vLLM at start: the memory plan, or the reason it
			// cannot serve (exit 1, as vLLM's failed start).
			plan, err := p.Plan(*util, cfg.MaxNumSeqs, cfg.MaxNumBatchedTokens, cfg.MaxModelLen)
			if err != nil {
				fmt.Fprintln(os.Stderr, "llmlab sim:", err)
				return 1
			}
			cfg.KVBlocks = plan.KVBlocks
		}
		if cfg.KVBlocks*BlockSize < cfg.MaxModelLen {
			fmt.Fprintf(os.Stderr, "llmlab sim: %d KV blocks hold %d tokens, less than --max-model-len %d\n", cfg.KVBlocks, cfg.KVBlocks*BlockSize, cfg.MaxModelLen)
			return 2
		}
		if *show {
			fmt.Printf("profile %s: %s\nsource: %s\nstep = %s + %s/token + %s/KV token + %g ns/prompt attention pair\nmax_num_seqs %d, max_num_batched_tokens %d, max_model_len %d, KV blocks %d (%d tokens), startup %s, wake %s from sleep level 1, %s from level 2 (%s of weights reloaded from disk)\n",
				p.Name, p.Description, p.Source, p.StepFixed, p.PerToken, p.PerKVToken, p.PerPair, cfg.MaxNumSeqs, cfg.MaxNumBatchedTokens, cfg.MaxModelLen,
				cfg.KVBlocks, cfg.KVBlocks*BlockSize, p.StartupDelay, p.WakeTime, p.DeepWakeTime().Round(time.Millisecond), p.ReloadTime().Round(time.Millisecond))
			return 0
		}
		srv := NewServer(Options{
			Engine: cfg, Model: *model, GPUMemoryUtilization: *util, StartupDelay: p.StartupDelay, ErrorRate: *errRate, CrashAfter: *crashAfter,
			MaxNewTokens: maxNew, ForceIncludeUsage: *forceUsage,
			// vLLM serves the sleep endpoints only in development mode
			// (docs/features/sleep_mode.md).
			SleepMode: *sleepMode && os.Getenv("VLLM_SERVER_DEV_MODE") == "1",
			Crash: func() {
				fmt.Fprintln(os.Stderr, "llmlab sim: crashing as --crash-after asks")
				os.Exit(1)
			},
			Ready: func(addr string) { fmt.Printf("llmlab sim (%s) listening on %s\n", p.Name, addr) },
		})
		if err := srv.Run(ctx, fmt.Sprintf("%s:%d", *host, *port)); err != nil {
			fmt.Fprintln(os.Stderr, "llmlab sim:", err)
			return 1
		}
		return 0
	}
}
