package main_test

// Integration: in front of the simulator: admission by the engine model
// under overload, an engine whose cache is full, and the engine's context
// length.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
)

// The shipped defaults (the limit chosen from the engine model) in front
// of the simulator, at a load far past what fits the objective: every
// request is answered or refused with Retry-After, none is lost, the limit
// stays within what the engine runs (engine.max_num_seqs), the model learns
// from the answers, and what it learned survives a restart. Ratios against
// other settings are the benchmark's (llmlab tune-admission), not this
// test's.
func TestModelAdmissionOverload(t *testing.T) {
	engineAddr := startSim(t, "--step-fixed", "10ms", "--per-token", "1ms", "--max-num-seqs", "32")
	stateDir := t.TempDir()
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
state_dir = %q
[engine]
url = "http://%s"
max_num_seqs = 32
[slo]
latency = "2s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
level = "debug"
access_log = false
[gpu]
enabled = false
`, stateDir, engineAddr)
	cfgPath := writeConfig(t, cfg)
	d := start(t, nil, nil, "--config", cfgPath)
	client := bench.NewClient(512)
	o := bench.Options{Target: d.api, Model: "Qwen/Qwen2.5-0.5B-Instruct", PromptTokens: 50, MaxTokens: 50, Stream: true,
		Rate: 400, Poisson: true, Seed: 3, Duration: 10 * time.Second, Timeout: 30 * time.Second}
	samples, err := bench.Run(context.Background(), client, o)
	if err != nil {
		t.Fatal(err)
	}
	ok, refused := 0, 0
	for _, s := range samples {
		switch {
		case s.Status == 200 && s.Error == "":
			ok++
		case s.Status == 429 || s.Status == 503:
			refused++
		default:
			t.Errorf("a request ended with status %d: %s", s.Status, s.Error)
		}
	}
	st := readLimit(t, d)
	t.Logf("%d answered, %d refused; limit %d; engine model %+v", ok, refused, st.Queue.Limit, st.Queue.Model)
	if ok == 0 || refused == 0 {
		t.Errorf("%d answered and %d refused at 400 req/s: want both", ok, refused)
	}
	if st.Queue.Limit < 4 || st.Queue.Limit > 32 {
		t.Errorf("limit %d, want within [min_inflight 4, engine.max_num_seqs 32]", st.Queue.Limit)
	}
	if st.Queue.Model.Observed < ok/2 {
		t.Errorf("the engine model learned from %d requests of %d answered", st.Queue.Model.Observed, ok)
	}
	m := fetch(t, d.metrics+"/metrics")
	if counted := metricSum(t, d.metrics+"/metrics", "llmlab_requests_total"); int(counted) != len(samples) {
		t.Errorf("llmlab_requests_total sums to %v, want the %d requests sent", counted, len(samples))
	}
	if !strings.Contains(m, `llmlab_admission_decisions_total{class="interactive",decision="refuse",reason="slo"}`) {
		t.Errorf("/metrics lacks the objective's refusals:\n%s", grepLines(m, "llmlab_admission_decisions_total"))
	}
	// What the model learned is kept: a restarted daemon starts with it.
	kept := st.Queue.Model.Observed
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.exited
	d.exited <- nil
	data, err := os.ReadFile(filepath.Join(stateDir, "learned.json"))
	if err != nil || !strings.Contains(string(data), `"engine_model"`) {
		t.Fatalf("the state file: %v\n%s", err, data)
	}
	again := start(t, nil, nil, "--config", cfgPath)
	if got := readLimit(t, again).Queue.Model.Observed; got < kept {
		t.Fatalf("after a restart the model has seen %d requests, want the kept %d", got, kept)
	}
}

// An engine whose KV cache is full with requests waiting inside it gets no
// more requests while it has llmlab's work: they wait in llmlab's queue
// (counted as engine_saturated), and every one is still answered. The
// simulator's cache holds two of these requests at a time.
func TestHoldsWhileEngineSaturated(t *testing.T) {
	engineAddr := startSim(t, "--step-fixed", "2ms", "--per-token", "20us", "--num-gpu-blocks-override", "30", "--max-model-len", "450")
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
metrics_interval = "20ms"
[queue]
max_inflight = 16
max_queued = 256
max_wait = "30s"
[slo]
latency = "0s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
access_log = false
[gpu]
enabled = false
`, engineAddr)
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	var sawHold atomic.Bool
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			resp, err := http.Get(d.metrics + "/metrics")
			if err != nil {
				continue
			}
			m, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(m), "llmlab_engine_saturated 1\n") {
				sawHold.Store(true)
			}
		}
	}()
	o := bench.Options{Target: d.api, Model: "Qwen/Qwen2.5-0.5B-Instruct", PromptTokens: 100, MaxTokens: 100,
		Concurrency: 12, Requests: 48, Timeout: 60 * time.Second}
	samples, err := bench.Run(context.Background(), bench.NewClient(16), o)
	close(done)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		if s.Status != 200 {
			t.Fatalf("a request got %d %s; every one should be answered", s.Status, s.Error)
		}
	}
	if len(samples) != 48 {
		t.Fatalf("%d answers, want 48", len(samples))
	}
	m := fetch(t, d.metrics+"/metrics")
	if !sawHold.Load() || !strings.Contains(m, `llmlab_admission_decisions_total{class="interactive",decision="queue",reason="engine_saturated"}`) {
		t.Fatalf("the saturated engine was not held (seen %v):\n%s", sawHold.Load(), grepLines(m, "llmlab_admission|llmlab_engine_"))
	}
}

// startSim runs the simulator (profile instant, no start-up delay, plus
// args) on a free address and returns it once the engine answers /health.
func startSim(t *testing.T, args ...string) string {
	t.Helper()
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	argv := append([]string{"sim", "--profile", "instant", "--startup-delay", "0s", "--host", host, "--port", port}, args...)
	cmd := exec.Command(toolBinary, argv...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		if resp, err := http.Get("http://" + addr + "/health"); err == nil {
			resp.Body.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatal("the simulator did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func grepLines(s, pattern string) string {
	re := regexp.MustCompile(pattern)
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// In front of the simulator (which follows vLLM: docs/engine-contract.md),
// llmlabd adds no max_tokens, so a request without one gets the engine's
// default instead of a 400; it learns the engine's context length from
// /v1/models and refuses a max_tokens that cannot fit; a stream that did
// not ask for usage is counted as unreported, not silently left out.
func TestEngineContextLength(t *testing.T) {
	addr := startSim(t, "--max-model-len", "512")
	d := start(t, nil, nil, "--config", writeConfig(t, baseConfig("http://"+addr, "")))

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(fetch(t, d.api+"/status"), `"max_model_len":512`) {
		if time.Now().After(deadline) {
			t.Fatalf("/status never showed the engine's max_model_len 512: %s", fetch(t, d.api+"/status"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := fetch(t, d.metrics+"/metrics"); !strings.Contains(m, "llmlab_engine_max_model_len 512") {
		t.Errorf("/metrics lacks llmlab_engine_max_model_len 512:\n%s", grepLines(m, "max_model_len"))
	}

	prompt := `"Write` + strings.Repeat(" word", 199) + `"`
	// limits.max_tokens (1024 by default) is above this engine's context:
	// before, llmlabd added max_tokens 1024 and the engine refused every
	// request that named none.
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":`+prompt+`,"ignore_eos":true}`)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"completion_tokens":16`) {
		t.Fatalf("completion without max_tokens: %d %.300s, want 200 with vLLM's default 16 tokens", resp.StatusCode, body)
	}
	resp, body = post(t, d.api+"/v1/chat/completions", `{"messages":[{"role":"user","content":`+prompt+`}],"max_tokens":null}`)
	if resp.StatusCode != 200 {
		t.Fatalf("chat without a cap: %d %.300s, want 200", resp.StatusCode, body)
	}
	resp, body = post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":600}`)
	if resp.StatusCode != 400 || !strings.Contains(string(body), "maximum context length is 512") || !strings.Contains(string(body), `"param":"max_tokens"`) {
		t.Fatalf("max_tokens 600 on a 512-token engine: %d %.300s, want 400 from llmlabd naming the context length", resp.StatusCode, body)
	}
	if !strings.Contains(d.logs.String(), "limits.max_tokens does not fit the engine's context") {
		t.Errorf("no warning that limits.max_tokens (1024) exceeds the context (512)")
	}

	post(t, d.api+"/v1/completions", `{"prompt":"hi","max_tokens":3,"stream":true}`)
	post(t, d.api+"/v1/completions", `{"prompt":"hi","max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}`)
	m := fetch(t, d.metrics+"/metrics")
	if !strings.Contains(m, `llmlab_client_usage_unreported_total{client="anonymous"} 1`) {
		t.Errorf("want one unreported stream:\n%s", grepLines(m, "unreported|client_tokens"))
	}
	if !strings.Contains(d.logs.String(), "usage=unreported") {
		t.Errorf("the access log does not mark the stream without usage")
	}
}
