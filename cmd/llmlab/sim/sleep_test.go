package sim

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// sleepServer is a simulator in sleep mode whose level-1 wake takes 40 ms
// and whose weights reload from disk in 100 ms.
func sleepServer(t *testing.T) string {
	t.Helper()
	srv := newTestServer(t, func(o *Options) {
		o.SleepMode = true
		o.Engine.Profile.WakeTime = 40 * time.Millisecond
		o.Engine.Profile.DiskReadRate = float64(o.Engine.Profile.Weights) * 10
	})
	return srv.URL
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// sleepGauge reads vllm:engine_sleep_state as "awake/weights_offloaded/discard_all".
func sleepGauge(t *testing.T, url string) string {
	t.Helper()
	v := map[string]string{}
	for _, l := range strings.Split(get(t, url+"/metrics"), "\n") {
		if !strings.HasPrefix(l, "vllm:engine_sleep_state{") {
			continue
		}
		for _, s := range []string{"awake", "weights_offloaded", "discard_all"} {
			if strings.Contains(l, `sleep_state="`+s+`"`) {
				v[s] = l[strings.LastIndex(l, " ")+1:]
			}
		}
	}
	return v["awake"] + "/" + v["weights_offloaded"] + "/" + v["discard_all"]
}

func withoutWeights(t *testing.T, url string) string {
	t.Helper()
	for _, l := range strings.Split(get(t, url+"/metrics"), "\n") {
		if strings.HasPrefix(l, "llmlab_sim_answers_without_weights_total ") {
			return strings.TrimPrefix(l, "llmlab_sim_answers_without_weights_total ")
		}
	}
	return "missing"
}

// timedPost posts and returns the status and how long it took.
func timedPost(t *testing.T, url string) (int, time.Duration) {
	t.Helper()
	t0 := time.Now()
	code, _ := post(t, url, "")
	return code, time.Since(t0)
}

// Level 2 as vLLM's source has it (sleep.go): the weights are discarded,
// so a wake-up is wake_up?tags=weights, reload_weights (read from disk),
// wake_up?tags=kv_cache; the scheduler resumes only at the last, and the
// wake as a whole takes WakeTime plus the reload.
func TestSleepLevel2(t *testing.T) {
	url := sleepServer(t)
	if g := sleepGauge(t, url); g != "1/0/0" {
		t.Fatalf("awake: vllm:engine_sleep_state awake/weights_offloaded/discard_all = %s, want 1/0/0", g)
	}
	if code, _ := timedPost(t, url+"/sleep?level=2&mode=wait"); code != 200 {
		t.Fatal("POST /sleep?level=2 refused")
	}
	if g := sleepGauge(t, url); g != "0/0/1" {
		t.Fatalf("after level 2: sleep state %s, want 0/0/1", g)
	}
	queued := postAsync(url+"/v1/completions", `{"prompt":"a","max_tokens":1}`)
	start := time.Now()
	if code, took := timedPost(t, url+"/wake_up?tags=weights"); code != 200 || took < 20*time.Millisecond {
		t.Fatalf("wake_up?tags=weights: %d in %s, want 200 in half the 40ms wake", code, took)
	}
	if !strings.Contains(get(t, url+"/is_sleeping"), "true") {
		t.Fatal("with the KV cache still asleep, /is_sleeping is false")
	}
	select {
	case got := <-queued:
		t.Fatalf("a request was served before the KV cache woke: %.200s", got)
	case <-time.After(50 * time.Millisecond):
	}
	if code, _ := timedPost(t, url+"/collective_rpc"); code != http.StatusBadRequest {
		t.Errorf("collective_rpc without a body: %d, want 400 (JSON decode error)", code)
	}
	t0 := time.Now()
	if code, body := post(t, url+"/collective_rpc", `{"method":"reload_weights"}`); code != 200 || !strings.Contains(string(body), "results") {
		t.Fatalf("reload_weights: %d %s", code, body)
	}
	if took := time.Since(t0); took < 100*time.Millisecond {
		t.Fatalf("reload_weights took %s, want the weights over the disk rate, 100ms", took)
	}
	if code, _ := timedPost(t, url+"/wake_up?tags=kv_cache"); code != 200 {
		t.Fatal("wake_up?tags=kv_cache refused")
	}
	if got := <-queued; !strings.HasPrefix(got, "200 ") {
		t.Fatalf("the request queued across the level-2 sleep: %.200s", got)
	}
	if d := time.Since(start); d < 140*time.Millisecond-20*time.Millisecond || d > time.Second {
		t.Errorf("the level-2 wake-up took %s, want about the 40ms wake plus the 100ms reload (and a 50ms check)", d)
	}
	if n := withoutWeights(t, url); n != "0" {
		t.Errorf("answers without weights after a proper level-2 wake: %s, want 0", n)
	}
	if g := sleepGauge(t, url); g != "1/0/0" {
		t.Errorf("awake again: sleep state %s, want 1/0/0", g)
	}
}

// A bare wake_up after level 2 resumes the scheduler on discarded weights:
// vLLM serves garbage then, the simulator counts the answers; a reload
// makes them whole again.
func TestBareWakeAfterLevel2(t *testing.T) {
	url := sleepServer(t)
	timedPost(t, url+"/sleep?level=2")
	if code, took := timedPost(t, url+"/wake_up"); code != 200 || took > 90*time.Millisecond {
		t.Fatalf("bare wake_up after level 2: %d in %s, want 200 in the 40ms of mapping memory, no reload", code, took)
	}
	if code, _ := post(t, url+"/v1/completions", `{"prompt":"a","max_tokens":1}`); code != 200 {
		t.Fatal("completion refused")
	}
	if n := withoutWeights(t, url); n != "1" {
		t.Fatalf("answers without weights after a bare wake from level 2: %s, want 1", n)
	}
	post(t, url+"/collective_rpc", `{"method":"reload_weights"}`)
	post(t, url+"/v1/completions", `{"prompt":"a","max_tokens":1}`)
	if n := withoutWeights(t, url); n != "1" {
		t.Fatalf("after reload_weights: %s answers without weights, want still 1", n)
	}
}

// A sleep cannot be deepened in place: /sleep?level=2 on an engine asleep
// at level 1 is ignored by vLLM's executor (the gauge says level 2 all the
// same), so the weights are still in host memory and a plain wake_up
// restores them.
func TestSleepDeepenIgnored(t *testing.T) {
	url := sleepServer(t)
	timedPost(t, url+"/sleep?level=1")
	if g := sleepGauge(t, url); g != "0/1/0" {
		t.Fatalf("after level 1: sleep state %s, want 0/1/0", g)
	}
	timedPost(t, url+"/sleep?level=2")
	if g := sleepGauge(t, url); g != "0/0/1" {
		t.Fatalf("after level 2 on level 1: sleep state %s, want vLLM's 0/0/1", g)
	}
	if code, took := timedPost(t, url+"/wake_up"); code != 200 || took < 40*time.Millisecond {
		t.Fatalf("wake_up: %d in %s", code, took)
	}
	post(t, url+"/v1/completions", `{"prompt":"a","max_tokens":1}`)
	if n := withoutWeights(t, url); n != "0" {
		t.Fatalf("answers without weights after level 2 asked on level 1: %s, want 0 (the level-1 copy was kept)", n)
	}
}

// The rest of the endpoints' edges, as vLLM's: reload_weights into
// weights that are asleep fails, a wake_up naming a tag that is not asleep
// is ignored, an unknown method and a level that is not a number are
// errors.
func TestSleepEdges(t *testing.T) {
	url := sleepServer(t)
	if code, _ := timedPost(t, url+"/sleep?level=two"); code != http.StatusInternalServerError {
		t.Errorf("sleep?level=two: %d, want 500 (int() raises)", code)
	}
	timedPost(t, url+"/sleep?level=2")
	if code, _ := post(t, url+"/collective_rpc", `{"method":"reload_weights"}`); code != http.StatusInternalServerError {
		t.Errorf("reload_weights with the weights asleep: %d, want 500", code)
	}
	if code, _ := post(t, url+"/collective_rpc", `{"method":"shutdown"}`); code != http.StatusInternalServerError {
		t.Errorf("an unmodelled method: %d, want 500", code)
	}
	if code, _ := post(t, url+"/collective_rpc", `{"args":[]}`); code != http.StatusBadRequest {
		t.Errorf("no method: %d, want 400", code)
	}
	timedPost(t, url+"/wake_up?tags=weights")
	if code, took := timedPost(t, url+"/wake_up?tags=weights&tags=kv_cache"); code != 200 || took > 15*time.Millisecond {
		t.Errorf("wake_up naming a tag already awake: %d in %s, want ignored at once", code, took)
	}
	if !strings.Contains(get(t, url+"/is_sleeping"), "true") {
		t.Error("an ignored wake_up woke the KV cache")
	}
}
