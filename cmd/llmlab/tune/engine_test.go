package tune

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/internal/freeport"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds llmlab and llmlabd once for the tests that run them.
func binaries(t *testing.T) (tool, daemon string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "llmlab-tune-test")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"../../llmlab", "../../llmlabd"} {
			if out, err := exec.Command("go", "build", "-o", binDir, pkg).CombinedOutput(); err != nil {
				buildErr = &buildError{pkg, string(out)}
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "llmlab"), filepath.Join(binDir, "llmlabd")
}

type buildError struct{ pkg, out string }

func (e *buildError) Error() string { return "building " + e.pkg + ": " + e.out }

// A small grid on the simulator, run as an operator runs it: a point the
// memory plan refuses (never started), a point whose engine dies at start
// (the simulated card is smaller than the plan's, as a real card can hold
// less than the arithmetic says), and points measured through llmlabd,
// each engine started with its point's knobs; then the same command again
// (it resumes: nothing is measured twice), a grid past --max-time (refused
// before it starts), and --apply on copies of the shipped files.
func TestEngineSweepOnTheSimulator(t *testing.T) {
	tool, daemon := binaries(t)
	dir := t.TempDir()
	results := filepath.Join(dir, "results")
	args := []string{"tune-engine", "--llmlabd", daemon, "--profile", "instant",
		// The engine: 2 ms a step, so a request takes about 0.4 s and four
		// sequences serve about 10 a second; the card is 8 GiB where the
		// plan assumes the profile's 64.
		"--sim-args", "--gpu-memory-gib 8 --step-fixed 2ms", "--startup-delay", "300ms",
		"--max-num-seqs", "4,8", "--max-model-len", "1024,600000,5000000", "--max-num-batched-tokens", "2048",
		"--slo-p95", "1s", "--warmup", "1s", "--duration", "3s", "--precision", "0.25", "--start-rate", "4",
		"--results", results, "--quiet"}
	run := func(extra ...string) (string, error) {
		cmd := exec.Command(tool, append(append([]string{}, args...), extra...)...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run()
	if err != nil {
		t.Fatalf("the sweep failed: %v\n%s", err, out)
	}
	rows := readJSONL(t, filepath.Join(results, "points.jsonl"))
	if len(rows) != 6 {
		t.Fatalf("%d results recorded, want 6 (every point once):\n%s", len(rows), out)
	}
	measured := map[int]Result{}
	for _, r := range rows {
		switch r.MaxModelLen {
		case 5000000:
			if r.Status != StatusRefused || !strings.Contains(r.Reason, "memory plan") || r.StartSeconds != 0 || len(r.Probes) != 0 {
				t.Errorf("a point that needs more KV cache than the card: %+v, want refused by the memory plan, never started", r)
			}
		case 600000:
			if r.Status != StatusCrashed || !strings.Contains(r.Reason, "max_model_len 600000") || len(r.Probes) != 0 {
				t.Errorf("a point whose engine cannot start: %s %q, want crashed with the engine's own reason", r.Status, r.Reason)
			}
		case 1024:
			if r.Status != StatusOK || r.Sustainable <= 0 || !r.Summary.Pass || len(r.Probes) < 2 {
				t.Errorf("a measured point: %s %q, %.2f req/s sustainable after %d probes; want a rate that met the SLO", r.Status, r.Reason, r.Sustainable, len(r.Probes))
			}
			// The engine ran with the point's knobs, as it reported them:
			// its context, and the KV cache of its own (smaller) card.
			card := sim.Profiles["instant"]
			card.GPUMemory = 8 << 30
			plan, _ := card.Plan(0.9, r.MaxNumSeqs, 2048, 1024)
			if r.EngineMaxModelLen != 1024 || r.EngineKVTokens != int64(plan.KVBlocks)*sim.BlockSize || r.KVTokens <= r.EngineKVTokens {
				t.Errorf("the engine reported max_model_len %d and %d KV tokens; the point has %d, an 8 GiB card holds %d, the plan for 64 GiB %d",
					r.EngineMaxModelLen, r.EngineKVTokens, r.MaxModelLen, plan.KVBlocks*sim.BlockSize, r.KVTokens)
			}
			failed := false
			for _, p := range r.Probes {
				failed = failed || !p.Pass
			}
			if !failed {
				t.Errorf("find-max never found a rate that failed the SLO: %+v", r.Probes)
			}
			measured[r.MaxNumSeqs] = r
		}
	}
	for _, f := range []string{"table.md", "frontier.svg", "best.toml", "command.txt"} {
		if _, err := os.Stat(filepath.Join(results, f)); err != nil {
			t.Errorf("results folder: %v", err)
		}
	}
	best, _ := Best(rows)
	table, _ := os.ReadFile(filepath.Join(results, "table.md"))
	if !strings.Contains(string(table), "not a measurement of a GPU") || !strings.Contains(out, "Best: "+best.Key()) {
		t.Errorf("the table does not say the figures are the simulator's, or the best point is not %s:\n%s", best.Key(), out)
	}
	snippet, _ := os.ReadFile(filepath.Join(results, "best.toml"))
	if _, err := config.Parse("best.toml", snippet); err != nil {
		t.Errorf("best.toml does not load as llmlabd's configuration: %v\n%s", err, snippet)
	}

	// The same command again: everything resumed, nothing run.
	start := time.Now()
	out, err = run()
	if err != nil || !strings.Contains(out, "6 points: 6 resumed") || len(readJSONL(t, filepath.Join(results, "points.jsonl"))) != 6 {
		t.Fatalf("run again: %v\n%s", err, out)
	}
	t.Logf("resumed in %s", time.Since(start))

	// A grid estimated past --max-time is refused before it starts.
	out, err = run("--max-num-seqs", "16,32", "--max-time", "10s")
	if err == nil || !strings.Contains(out, "more than --max-time 10s") {
		t.Fatalf("a grid past --max-time: %v\n%s", err, out)
	}

	// --apply writes the best point into llmlab.toml and takes the tuned
	// flags out of the engine's environment file, keeping both backups.
	shipped, err := os.ReadFile("../../../etc/llmlab.toml")
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "llmlab.toml")
	env := filepath.Join(dir, "engine.env")
	envText := "# operator's settings\nLLMLAB_VLLM=/opt/vllm/bin/vllm\nLLMLAB_VLLM_ARGS=\"--max-num-seqs 99 --enforce-eager --max-model-len=4096\"\n"
	os.WriteFile(conf, shipped, 0o640)
	os.WriteFile(env, []byte(envText), 0o644)
	out, err = run("--apply", "--apply-config", conf, "--engine-env", env)
	if err != nil {
		t.Fatalf("--apply: %v\n%s", err, out)
	}
	cfg, err := config.Load(conf, true)
	if err != nil {
		t.Fatalf("the applied llmlab.toml does not load: %v", err)
	}
	if cfg.Engine.MaxNumSeqs != best.MaxNumSeqs || cfg.Engine.MaxModelLen != 1024 || cfg.Queue.MaxInflight != best.MaxNumSeqs ||
		cfg.GPU.MemoryFraction != 0.9 || cfg.Engine.Unit != "llmlab-vllm.service" {
		t.Errorf("applied: engine %+v, queue.max_inflight %d, gpu.memory_fraction %g; want the best point (%s) and the rest as shipped",
			cfg.Engine, cfg.Queue.MaxInflight, cfg.GPU.MemoryFraction, best.Key())
	}
	applied, _ := os.ReadFile(conf)
	if !bytes.Contains(applied, []byte("# llmlab configuration: /etc/llmlab/llmlab.toml")) || bytes.Count(applied, []byte("\nmax_num_seqs = ")) != 1 {
		t.Errorf("the applied file lost its comments or repeats a key:\n%s", applied)
	}
	backups, _ := filepath.Glob(conf + ".*")
	envBackups, _ := filepath.Glob(env + ".*")
	if len(backups) != 1 || len(envBackups) != 1 {
		t.Fatalf("backups: %v %v, want one of each file", backups, envBackups)
	}
	if b, _ := os.ReadFile(backups[0]); !bytes.Equal(b, shipped) {
		t.Errorf("the backup of llmlab.toml is not the file as it was")
	}
	if b, _ := os.ReadFile(envBackups[0]); string(b) != envText {
		t.Errorf("the backup of engine.env is not the file as it was")
	}
	if b, _ := os.ReadFile(env); !strings.Contains(string(b), "LLMLAB_VLLM_ARGS=\"--enforce-eager\"\n") || !strings.Contains(string(b), "# operator's settings") {
		t.Errorf("engine.env after --apply:\n%s\nwant the tuned flags gone and the rest kept", b)
	}
}

// An operator's configuration is tuned in place of the simulator's: its
// own engine (here the simulator again, as engine.command), its own
// settings, each point through llmlabd as before.
func TestEngineSweepOfAConfiguration(t *testing.T) {
	tool, daemon := binaries(t)
	dir := t.TempDir()
	engine, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(engine, ":")
	api, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "box.toml")
	os.WriteFile(conf, []byte(`# the operator's file
[gateway]
listen = "`+api+`"
[engine]
url = "http://`+engine+`"
command = ["`+tool+`", "sim", "--profile", "instant", "--step-fixed", "2ms", "--startup-delay", "300ms", "--host", "`+host+`", "--port", "`+port+`"]
[gpu]
enabled = false
[metrics]
listen = ""
`), 0o644)
	sweep := func(ctx context.Context) *exec.Cmd {
		cmd := exec.CommandContext(ctx, tool, "tune-engine", "--llmlabd", daemon, "--config", conf, "--profile", "instant", "--max-num-seqs", "4",
			"--max-model-len", "1024", "--inflight", "seqs,model", "--slo-p95", "1s", "--warmup", "1s", "--duration", "3s", "--precision", "0.5", "--start-rate", "4",
			"--results", filepath.Join(dir, "results"), "--quiet")
		cmd.Dir = dir
		// Stopped as an operator would, so that it stops its llmlabd and
		// engine.
		cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
		cmd.WaitDelay = 30 * time.Second
		return cmd
	}

	// An engine already on engine.url (the packaged service left
	// running): refused before anything starts, saying what to stop.
	running, err := net.Listen("tcp", engine)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a check that let it start ends here
	out, err := sweep(ctx).CombinedOutput()
	cancel()
	running.Close()
	if err == nil || !strings.Contains(string(out), "(engine.url) is in use") || !strings.Contains(string(out), "systemctl stop llmlab.socket llmlab.service") {
		t.Fatalf("tune-engine with the engine's address taken: %v\n%s\nwant a refusal naming what to stop", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "results", "points.jsonl")); err == nil {
		t.Fatal("the refused sweep recorded points")
	}

	out, err = sweep(context.Background()).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	rows := readJSONL(t, filepath.Join(dir, "results", "points.jsonl"))
	if len(rows) != 2 {
		t.Fatalf("%d results, want 2\n%s", len(rows), out)
	}
	for _, r := range rows {
		// llmlabd reads queue.concurrency only when it starts: the
		// model point must have run on a new llmlabd in that mode.
		want := map[string]string{"seqs": "fixed", "model": "model"}[r.Inflight]
		if r.Status != StatusOK || r.Engine != conf || r.EngineMaxModelLen != 1024 || r.Sustainable <= 0 || r.Concurrency != want {
			t.Fatalf("result %+v, want it measured with llmlabd in %s mode\n%s", r, want, out)
		}
	}
	if !strings.Contains(string(out), "Engine: the engine of "+conf) {
		t.Fatalf("the table does not name the configuration tuned:\n%s", out)
	}
}

func readJSONL(t *testing.T, path string) []Result {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []Result
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r Result
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("%s: %v in %q", path, err, line)
		}
		out = append(out, r)
	}
	return out
}

func TestSetKeysKeepsTheFile(t *testing.T) {
	in := "# top\n[engine]\n# the URL\nurl = \"x\"\nmax_num_seqs = 0 # inline\n\n[queue]\nmax_inflight = 64\n"
	got := SetKeys(in, map[string][][2]string{
		"engine": {{"max_num_seqs", "32"}, {"max_model_len", "2048"}},
		"queue":  {{"max_inflight", "32"}},
		"gpu":    {{"memory_fraction", "0.8"}},
	}, []string{"engine", "queue", "gpu"})
	want := "# top\n[engine]\n# the URL\nurl = \"x\"\nmax_num_seqs = 32\nmax_model_len = 2048\n\n[queue]\nmax_inflight = 32\n\n[gpu]\nmemory_fraction = 0.8\n"
	if got != want {
		t.Fatalf("SetKeys:\n%s\nwant:\n%s", got, want)
	}
}

func TestDropEngineFlags(t *testing.T) {
	for _, c := range []struct{ in, want, removed string }{
		{`LLMLAB_VLLM_ARGS="--max-num-seqs 64 --enforce-eager"`, `LLMLAB_VLLM_ARGS="--enforce-eager"`, "--max-num-seqs 64"},
		{`LLMLAB_VLLM_ARGS=--gpu-memory-utilization=0.5 --max-model-len 1024`, `LLMLAB_VLLM_ARGS=`, "--gpu-memory-utilization=0.5 --max-model-len 1024"},
		{"# LLMLAB_VLLM_ARGS=\"--max-num-seqs 1\"\nLLMLAB_MODEL=x", "# LLMLAB_VLLM_ARGS=\"--max-num-seqs 1\"\nLLMLAB_MODEL=x", ""},
	} {
		got, removed := DropEngineFlags(c.in)
		if got != c.want || strings.Join(removed, " ") != c.removed {
			t.Errorf("DropEngineFlags(%q) = %q, %q; want %q, %q", c.in, got, removed, c.want, c.removed)
		}
	}
}

// The starting configuration shipped for a 4 GB card loads as llmlabd's,
// sets every engine knob the sweep tunes, and keeps the in-flight limit
// within the engine's sequences.
func TestShippedStartingConfiguration(t *testing.T) {
	data, err := os.ReadFile("../../../etc/tuning/gtx1650.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("etc/tuning/gtx1650.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	e := cfg.Engine
	if e.MaxNumSeqs == 0 || e.MaxNumBatchedTokens == 0 || e.MaxModelLen == 0 || cfg.Queue.MaxInflight > e.MaxNumSeqs {
		t.Fatalf("engine %+v, queue.max_inflight %d", e, cfg.Queue.MaxInflight)
	}

	// Its own tune-engine command, run as its comment says, sweeps a grid
	// that holds the file's values (the default grid's 2048 batched
	// tokens would overwrite the 512 it calls decisive), after the
	// command that stops what tune-engine refuses to run beside.
	text := string(data)
	stop := strings.Index(text, "#     systemctl stop llmlab.socket llmlab.service llmlab-vllm.service\n")
	at := strings.Index(text, "#     llmlab tune-engine ")
	if stop < 0 || at < stop || !strings.Contains(text, "#     systemctl start llmlab.socket\n") {
		t.Fatalf("etc/tuning/gtx1650.toml: no stop, tune-engine and start commands, in that order:\n%s", text)
	}
	line, _, _ := strings.Cut(text[at+len("#     llmlab tune-engine "):], "\n")
	fs := flag.NewFlagSet("tune-engine", flag.ContinueOnError)
	tuneEngineFlags(fs)
	if err := fs.Parse(strings.Fields(line)); err != nil || fs.NArg() > 0 {
		t.Fatalf("the file's command %q: %v %q", line, err, fs.Args())
	}
	for flagName, want := range map[string]string{
		"max-num-seqs": strconv.Itoa(e.MaxNumSeqs), "max-num-batched-tokens": strconv.Itoa(e.MaxNumBatchedTokens),
		"max-model-len": strconv.Itoa(e.MaxModelLen), "gpu-memory-utilization": strconv.FormatFloat(cfg.GPU.MemoryFraction, 'g', -1, 64),
	} {
		if grid := strings.Split(fs.Lookup(flagName).Value.String(), ","); !slices.Contains(grid, want) {
			t.Errorf("the file's command sweeps --%s %v, without the file's own %s", flagName, grid, want)
		}
	}
	for _, f := range []string{"config", "apply"} {
		if v := fs.Lookup(f).Value.String(); v == "" || v == "false" {
			t.Errorf("the file's command does not set --%s", f)
		}
	}

	// Its keys, set in their sections of the shipped llmlab.toml as its
	// comment says, load with its values; appended, they are refused.
	shipped, err := os.ReadFile("../../../etc/llmlab.toml")
	if err != nil {
		t.Fatal(err)
	}
	sets, order := map[string][][2]string{}, []string(nil)
	sec := ""
	for _, l := range strings.Split(text, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "["):
			sec = strings.Trim(l, "[]")
			order = append(order, sec)
		case l != "" && !strings.HasPrefix(l, "#"):
			k, v, _ := strings.Cut(l, "=")
			sets[sec] = append(sets[sec], [2]string{strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	set, err := config.Parse("/etc/llmlab/llmlab.toml", []byte(SetKeys(string(shipped), sets, order)))
	if err != nil {
		t.Fatalf("the shipped llmlab.toml with the file's keys set in place: %v", err)
	}
	if set.Engine.MaxNumSeqs != e.MaxNumSeqs || set.Engine.MaxNumBatchedTokens != e.MaxNumBatchedTokens || set.Engine.MaxModelLen != e.MaxModelLen ||
		set.Queue.MaxInflight != cfg.Queue.MaxInflight || set.GPU.MemoryFraction != cfg.GPU.MemoryFraction || set.Engine.Unit != "llmlab-vllm.service" {
		t.Errorf("the shipped llmlab.toml with the file's keys set: engine %+v, queue.max_inflight %d, gpu.memory_fraction %g; want the file's", set.Engine, set.Queue.MaxInflight, set.GPU.MemoryFraction)
	}
	if _, err := config.Parse("/etc/llmlab/llmlab.toml", append(append(shipped, '\n'), data...)); err == nil || !strings.Contains(err.Error(), "Key 'engine' has already been defined") {
		t.Errorf("the shipped llmlab.toml with the file appended: %v, want the refusal the file's comment quotes", err)
	}
	if !strings.Contains(text, "Key 'engine' has already been defined") {
		t.Errorf("the file no longer says why it must not be appended")
	}
}

// The peak GPU memory comes from llmlabd's NVML gauge, one series per GPU
// (summed), as Prometheus' parser reads it; no such series is no reading.
func TestMetricValue(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# TYPE llmlab_gpu_memory_used_bytes gauge\n"+
			"llmlab_gpu_memory_used_bytes{gpu=\"0\"} 1.5e+09\n"+
			"llmlab_gpu_memory_used_bytes{gpu=\"1\"} 5e+08 1764556800000\n"+
			"# TYPE llmlab_gpu_memory_used_bytes_other gauge\nllmlab_gpu_memory_used_bytes_other 7\n")
	}))
	defer srv.Close()
	if v, ok := metricValue(srv.URL, "llmlab_gpu_memory_used_bytes"); !ok || v != 2e9 {
		t.Errorf("llmlab_gpu_memory_used_bytes: %v %v, want 2e9 (two GPUs, one with a timestamp)", v, ok)
	}
	if v, ok := metricValue(srv.URL, "llmlab_gpu_utilization"); ok {
		t.Errorf("an absent metric read as %v", v)
	}
}
