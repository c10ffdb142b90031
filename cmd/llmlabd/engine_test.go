package main_test

// Integration: the engine process llmlabd runs: scale to zero, a failed
// start, reloads that restart it, its settings, and its GPU share.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func engineState(t *testing.T, d *daemon) string {
	t.Helper()
	r, err := http.Get(d.metrics + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var st struct{ Engine struct{ State string } }
	json.NewDecoder(r.Body).Decode(&st)
	return st.Engine.State
}

func waitState(t *testing.T, d *daemon, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for engineState(t, d) != want {
		if time.Now().After(deadline) {
			t.Fatalf("engine state %q, want %q\n%s", engineState(t, d), want, d.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Scale to zero with the exec backend: the first requests start the
// engine (the real simulator, with a start-up delay) and are all answered,
// none refused for concurrency; after the idle timeout the engine process
// is gone; the next request starts it again.
func TestScaleToZeroExec(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	stateDir := t.TempDir()
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
state_dir = %q
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "1s", "--host", %q, "--port", %q]
idle_timeout = "1s"
expected_start_time = "2s"
max_cold_start_wait = "20s"
stop_grace = "2s"
[queue]
max_inflight = 4
max_batch = 4
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, stateDir, engineAddr, toolBinary, host, port)
	cfgPath := writeConfig(t, cfg)
	d := start(t, nil, nil, "--config", cfgPath)
	if s := engineState(t, d); s != "stopped" {
		t.Fatalf("before any request the engine is %q, want stopped", s)
	}
	// A health check and a scrape do not start it.
	http.Get(d.api + "/healthz")
	http.Get(d.metrics + "/metrics")
	http.Get(d.api + "/v1/models")
	time.Sleep(300 * time.Millisecond)
	if s := engineState(t, d); s != "stopped" {
		t.Fatalf("after /healthz, /metrics and /v1/models the engine is %q, want stopped", s)
	}

	const burst = 12 // three times max_inflight, all during the cold start
	codes := make(chan int, burst)
	for range burst {
		go func() {
			resp, _ := post(t, d.api+"/v1/completions", `{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":3,"ignore_eos":true}`)
			codes <- resp.StatusCode
		}()
	}
	for range burst {
		if c := <-codes; c != 200 {
			t.Fatalf("a request during the cold start got %d, want 200\n%s", c, d.logs.String())
		}
	}
	waitState(t, d, "stopped")
	if _, err := http.Get("http://" + engineAddr + "/health"); err == nil {
		t.Fatal("the engine still answers after the idle stop")
	}
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":"again","max_tokens":2}`)
	if resp.StatusCode != 200 {
		t.Fatalf("after scale to zero: %d %s", resp.StatusCode, body)
	}

	// What it learned survives a restart: the measured start time (about
	// 1 s, not the configured 2 s) is kept in the state directory.
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-d.exited; err != nil {
		t.Fatalf("exit: %v", err)
	}
	d.exited <- nil
	data, err := os.ReadFile(filepath.Join(stateDir, "learned.json"))
	if err != nil {
		t.Fatal(err)
	}
	var kept struct {
		EngineStartSeconds float64 `json:"engine_start_seconds"`
	}
	json.Unmarshal(data, &kept)
	if kept.EngineStartSeconds < 1 || kept.EngineStartSeconds > 1.9 {
		t.Fatalf("kept start time %.2fs (%s), want the average of 2s and two starts of about 1s", kept.EngineStartSeconds, data)
	}
	d2 := start(t, nil, nil, "--config", cfgPath)
	r, err := http.Get(d2.metrics + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Engine struct {
			ExpectedStartSeconds float64 `json:"expected_start_seconds"`
		}
	}
	json.NewDecoder(r.Body).Decode(&st)
	r.Body.Close()
	// Kept in seconds, restored in nanoseconds: equal to the nanosecond.
	if d := st.Engine.ExpectedStartSeconds - kept.EngineStartSeconds; d > 1e-6 || d < -1e-6 {
		t.Fatalf("after a restart the expected start is %.3fs, want the kept %.3fs", st.Engine.ExpectedStartSeconds, kept.EngineStartSeconds)
	}
}

// An engine that cannot start: waiting requests get 503 with Retry-After
// and a clear message, and the failure is logged.
func TestEngineStartFailure(t *testing.T) {
	cfg := `[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://127.0.0.1:9"
command = ["sh", "-c", "echo no model here >&2; exit 1"]
max_cold_start_wait = "20s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	start := time.Now()
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "engine") {
		t.Fatalf("engine failing to start: %d %s (Retry-After %q), want 503 naming the engine with Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("the refusal took %s; it should come when the engine fails, not at the deadline", time.Since(start))
	}
	waitLog(t, d, "engine exited")
}

// A reload that changes the engine's settings drains the engine and
// restarts it once, without refusing the requests that arrive meanwhile.
func TestReloadRestartsEngine(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	conf := func(maxSeqs string) string {
		return fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "500ms", "--max-num-seqs", %q, "--host", %q, "--port", %q]
idle_timeout = "0s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, engineAddr, toolBinary, maxSeqs, host, port)
	}
	path := writeConfig(t, conf("64"))
	d := start(t, nil, nil, "--config", path)
	req := `{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":2}`
	if resp, body := post(t, d.api+"/v1/completions", req); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	os.WriteFile(path, []byte(conf("32")), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "engine.command:")
	codes := make(chan int, 6)
	for range 6 {
		go func() {
			resp, _ := post(t, d.api+"/v1/completions", req)
			codes <- resp.StatusCode
		}()
	}
	for range 6 {
		if c := <-codes; c != 200 {
			t.Fatalf("a request during the engine restart got %d\n%s", c, d.logs.String())
		}
	}
	waitLog(t, d, "restarting the engine with its new settings")
	waitState(t, d, "ready")
}

// vLLM's knobs are llmlabd's settings: the engine gets them (and its
// memory share) at each start, and a reload that changes one restarts the
// engine with the new values, which the engine then reports as vLLM does
// (max_model_len in /v1/models, the share in vllm:cache_config_info).
func TestReloadChangesEngineKnobs(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	envFile := filepath.Join(t.TempDir(), "engine.env")
	conf := func(maxLen int, share float64) string {
		return fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "300ms", "--host", %q, "--port", %q]
idle_timeout = "0s"
runtime_env = %q
max_num_seqs = 32
max_num_batched_tokens = 4096
max_model_len = %d
[gpu]
enabled = false
memory_fraction = %g
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, engineAddr, toolBinary, host, port, envFile, maxLen, share)
	}
	engineSays := func(maxLen int, share float64) {
		t.Helper()
		req := `{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":2}`
		deadline := time.Now().Add(15 * time.Second)
		for {
			resp, body := post(t, "http://"+engineAddr+"/v1/completions", req)
			models := ""
			if resp.StatusCode == 200 {
				models = fetch(t, "http://"+engineAddr+"/v1/models") + fetch(t, "http://"+engineAddr+"/metrics")
			}
			if strings.Contains(models, fmt.Sprintf(`"max_model_len":%d`, maxLen)) && strings.Contains(models, fmt.Sprintf(`gpu_memory_utilization="%g"`, share)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the engine never reported max_model_len %d and share %g (last answer %d %s):\n%s", maxLen, share, resp.StatusCode, body, models)
			}
			time.Sleep(100 * time.Millisecond)
		}
		env, err := os.ReadFile(envFile)
		want := fmt.Sprintf("LLMLAB_GPU_MEMORY_UTILIZATION=%g\nLLMLAB_MAX_NEW_TOKENS=1024\nLLMLAB_MAX_NUM_QUEUED_REQS=512\nLLMLAB_MAX_NUM_SEQS=32\nLLMLAB_MAX_NUM_BATCHED_TOKENS=4096\nLLMLAB_MAX_MODEL_LEN=%d\n", share, maxLen)
		if err != nil || !strings.HasSuffix(string(env), want) {
			t.Fatalf("engine.runtime_env = %q (%v), want it to end with %q", env, err, want)
		}
	}
	path := writeConfig(t, conf(2048, 0.5))
	d := start(t, nil, nil, "--config", path)
	if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s\n%s", resp.StatusCode, body, d.logs.String())
	}
	engineSays(2048, 0.5)

	os.WriteFile(path, []byte(conf(1024, 0.6)), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "restarting the engine with its new settings")
	if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s\n%s", resp.StatusCode, body, d.logs.String())
	}
	engineSays(1024, 0.6)
	if strings.Contains(d.logs.String(), "needs a restart") {
		t.Fatalf("a knob or the share was logged as needing a restart of llmlabd:\n%s", d.logs.String())
	}
}

// On a machine without an NVIDIA driver (as CI's): NVML's failure is
// logged once and reported as "no GPU" in /status and /metrics, the engine
// still starts, and its GPU share (gpu.memory_fraction) reaches it through
// its environment and engine.runtime_env.
func TestGPUReadingsAndEngineShare(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	envFile := filepath.Join(t.TempDir(), "run", "engine.env")
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "200ms", "--host", %q, "--port", %q]
runtime_env = %q
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
[gpu]
poll_interval = "50ms"
memory_fraction = 0.55
`, engineAddr, toolBinary, host, port, envFile)
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s\n%s", resp.StatusCode, body, d.logs.String())
	}
	_, driver := os.Stat("/dev/nvidiactl")
	hasGPU := driver == nil

	sresp, err := http.Get(d.api + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		GPU struct {
			Available bool   `json:"available"`
			Reason    string `json:"reason"`
			Devices   []struct {
				MemoryTotal uint64 `json:"memory_total_bytes"`
			} `json:"devices"`
		} `json:"gpu"`
	}
	json.NewDecoder(sresp.Body).Decode(&st)
	sresp.Body.Close()
	if st.GPU.Available != hasGPU || (!hasGPU && !strings.Contains(st.GPU.Reason, "no GPU")) || (hasGPU && len(st.GPU.Devices) == 0) {
		t.Fatalf("/status gpu = %+v (an NVIDIA driver here: %v)", st.GPU, hasGPU)
	}
	metrics := fetch(t, d.metrics+"/metrics")
	wantUp := "llmlab_gpu_up 0\n"
	if hasGPU {
		wantUp = "llmlab_gpu_up 1\n"
	}
	if !strings.Contains(metrics, wantUp) || !strings.Contains(metrics, `llmlab_engine_start_refusals_total{reason="gpu_memory"} 0`) {
		t.Fatalf("/metrics lacks %q or the refusal counter:\n%s", wantUp, metrics)
	}
	if !hasGPU {
		time.Sleep(200 * time.Millisecond) // several polls
		if n := strings.Count(d.logs.String(), "GPU readings unavailable"); n != 1 {
			t.Fatalf("the missing GPU was logged %d times, want once:\n%s", n, d.logs.String())
		}
	}

	// The engine got its share: in its environment (the simulator shows it
	// as vLLM does, in vllm:cache_config_info) and in the runtime file.
	em := fetch(t, "http://"+engineAddr+"/metrics")
	if !hasGPU && !strings.Contains(em, `gpu_memory_utilization="0.55"`) {
		t.Fatalf("the engine did not get its share:\n%s", em)
	}
	env, err := os.ReadFile(envFile)
	if err != nil || (!hasGPU && !strings.Contains(string(env), "LLMLAB_GPU_MEMORY_UTILIZATION=0.55\n")) ||
		!strings.Contains(string(env), "LLMLAB_MAX_NEW_TOKENS=1024\n") {
		t.Fatalf("engine.runtime_env: %v %q, want the share and limits.max_tokens as LLMLAB_MAX_NEW_TOKENS", err, env)
	}
}
