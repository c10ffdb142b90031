package main_test

// Integration: the sleep ladder, llmlabd managing the real simulator in
// vLLM's sleep mode.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// engineSleep reads the simulator's vllm:engine_sleep_state as
// "awake/weights_offloaded/discard_all", and its count of answers computed
// on discarded weights.
func engineSleep(t *testing.T, engineURL string) (state, withoutWeights string) {
	t.Helper()
	v := map[string]string{}
	for _, l := range strings.Split(fetch(t, engineURL+"/metrics"), "\n") {
		val := l[strings.LastIndex(l, " ")+1:]
		switch {
		case strings.HasPrefix(l, "llmlab_sim_answers_without_weights_total "):
			withoutWeights = val
		case strings.HasPrefix(l, "vllm:engine_sleep_state{"):
			for _, s := range []string{"awake", "weights_offloaded", "discard_all"} {
				if strings.Contains(l, `sleep_state="`+s+`"`) {
					v[s] = val
				}
			}
		}
	}
	return v["awake"] + "/" + v["weights_offloaded"] + "/" + v["discard_all"], withoutWeights
}

// The ladder's rungs in order, against the simulator: ready, then vLLM's
// sleep level 1 after sleep_after, level 2 after deep_sleep_after, stopped
// after idle_timeout; a request wakes the engine from each rung, in about
// that rung's wake time (level 1: the 300 ms wake; level 2: the wake plus
// the weights reloaded from disk, with none of the answers computed on
// discarded weights; stopped: a start). While it wakes, a request whose
// own deadline cannot survive the wake is refused at once.
func TestSleepLadder(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	engineURL := "http://" + engineAddr
	// 988 MiB of weights at 1.3 GiB/s: a 742 ms reload.
	const wake1, reload = 300 * time.Millisecond, 742 * time.Millisecond
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = %q
command = [%q, "sim", "--profile", "instant", "--startup-delay", "500ms", "--enable-sleep-mode",
  "--wake-time", "300ms", "--disk-read-rate", "1.3", "--host", %q, "--port", %q]
sleep_after = "500ms"
deep_sleep_after = "2s"
idle_timeout = "4s"
expected_start_time = "1s"
max_cold_start_wait = "20s"
stop_grace = "2s"
[gpu]
enabled = false
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, engineURL, toolBinary, host, port)
	d := start(t, []string{"VLLM_SERVER_DEV_MODE=1"}, nil, "--config", writeConfig(t, cfg))
	ask := func(what string) time.Duration {
		t.Helper()
		t0 := time.Now()
		resp, body := post(t, d.api+"/v1/completions", `{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":2}`)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", what, resp.StatusCode, body)
		}
		return time.Since(t0)
	}
	sleepLevel := func() int {
		r, err := http.Get(d.metrics + "/status")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		var st struct {
			Engine struct {
				SleepLevel int `json:"sleep_level"`
			}
		}
		json.NewDecoder(r.Body).Decode(&st)
		return st.Engine.SleepLevel
	}

	ask("the first request (a cold start)")
	waitState(t, d, "sleeping")
	if s, _ := engineSleep(t, engineURL); s != "0/1/0" || sleepLevel() != 1 {
		t.Fatalf("sleeping: the engine's sleep state %s, /status sleep_level %d; want level 1 (0/1/0)", s, sleepLevel())
	}
	if took := ask("a request to the engine at level 1"); took < wake1 || took > wake1+time.Second {
		t.Errorf("a request woke the engine from level 1 in %s, want the 300ms wake and little more", took)
	}
	if s := engineState(t, d); s != "ready" {
		t.Fatalf("after the wake from level 1: %s, want ready", s)
	}

	waitState(t, d, "sleeping")
	waitState(t, d, "deep_sleeping")
	if s, _ := engineSleep(t, engineURL); s != "0/0/1" || sleepLevel() != 2 {
		t.Fatalf("deep_sleeping: the engine's sleep state %s, /status sleep_level %d; want level 2 (0/0/1)", s, sleepLevel())
	}
	if took := ask("a request to the engine at level 2"); took < wake1+reload || took > wake1+reload+time.Second {
		t.Errorf("a request woke the engine from level 2 in %s, want the 300ms wake plus the 742ms reload and little more", took)
	}
	if s, n := engineSleep(t, engineURL); s != "1/0/0" || n != "0" {
		t.Fatalf("after the wake from level 2: sleep state %s, %s answers on discarded weights; want awake and none", s, n)
	}

	// At level 2 again, with the wake measured (about 1.04 s): a request
	// whose own deadline cannot survive the wake is refused at once; one
	// whose deadline can is held through the wake and served.
	waitState(t, d, "deep_sleeping")
	withDeadline := func(deadline string) (int, string, time.Duration) {
		req, _ := http.NewRequest(http.MethodPost, d.api+"/v1/completions", strings.NewReader(`{"prompt":"x","max_tokens":2}`))
		req.Header.Set("X-Llmlab-Deadline", deadline)
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return 0, "", 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), time.Since(t0)
	}
	held := make(chan int, 1)
	go func() { code, _, _ := withDeadline("5s"); held <- code }()
	if code, body, took := withDeadline("600ms"); code == 200 || took > 300*time.Millisecond || !strings.Contains(body, "deadline of 600ms") {
		t.Errorf("a 600ms deadline at level 2: %d after %s (%s), want refused at once", code, took, body)
	}
	if code := <-held; code != 200 {
		t.Errorf("a 5s deadline at level 2: %d, want held through the wake and served", code)
	}

	waitState(t, d, "deep_sleeping")
	waitState(t, d, "stopped")
	if _, err := http.Get(engineURL + "/health"); err == nil {
		t.Fatal("the engine still answers after idle_timeout")
	}
	if took := ask("a request to the stopped engine"); took < 500*time.Millisecond {
		t.Errorf("a request to the stopped engine answered in %s, want a start (500ms) first", took)
	}
	logs := d.logs.String()
	for _, want := range []string{"sleep_level=1 reason=\"idle for 500ms\"", `msg="engine woke up" component=supervisor sleep_level=1`, "sleep_level=2 reason=\"idle for 2s\"", `msg="engine woke up" component=supervisor sleep_level=2`} {
		if !strings.Contains(logs, want) {
			t.Errorf("llmlabd's log has no %q", want)
		}
	}
}
