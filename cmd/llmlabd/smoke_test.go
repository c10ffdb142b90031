package main_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

type smokeResult struct {
	OK    bool `json:"ok"`
	Steps []struct {
		Name    string        `json:"name"`
		Took    time.Duration `json:"took_ns"`
		Skipped string        `json:"skipped"`
	} `json:"steps"`
	Reason           string `json:"reason"`
	Text             string `json:"text"`
	PromptTokens     int    `json:"prompt_tokens"`
	CompletionTokens int    `json:"completion_tokens"`
}

func runSmoke(t *testing.T, args ...string) (smokeResult, int) {
	t.Helper()
	out, err := exec.Command(toolBinary, append([]string{"smoke", "--json", "--timeout", "20s"}, args...)...).Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("llmlab smoke: %v", err)
	}
	var r smokeResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("llmlab smoke --json: %v\n%s", err, out)
	}
	return r, code
}

func (r smokeResult) step(name string) (time.Duration, string, bool) {
	for _, s := range r.Steps {
		if s.Name == name {
			return s.Took, s.Skipped, true
		}
	}
	return 0, "", false
}

// llmlab smoke through a real llmlabd managing the simulator: the first
// run waits through the engine's cold start (0.5 s) and times it, the
// answer has text and usage within max_tokens; the second finds the engine
// ready. Each failure an operator meets first gets its own reason: nothing
// listening, an unknown model, an engine that cannot start.
func TestSmokeCommand(t *testing.T) {
	engineAddr, api, metrics := freeAddr(t), freeAddr(t), freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	cfgPath := writeConfig(t, fmt.Sprintf(`[gateway]
listen = %q
[engine]
url = "http://%s"
models = ["Qwen/Qwen2.5-0.5B-Instruct"]
command = [%q, "sim", "--profile", "instant", "--startup-delay", "500ms", "--host", %q, "--port", %q]
[metrics]
listen = %q
textfile = ""
[log]
format = "text"
`, api, engineAddr, toolBinary, host, port, metrics))

	r, code := runSmoke(t, "--config", cfgPath)
	if code != 1 || !strings.Contains(r.Reason, "the socket is not listening") {
		t.Fatalf("with no llmlabd: exit %d, %q; want 1 and the socket named", code, r.Reason)
	}
	start(t, nil, nil, "--config", cfgPath)
	r, code = runSmoke(t, "--config", cfgPath, "--max-tokens", "5")
	if code != 0 || !r.OK || r.Text == "" || r.PromptTokens <= 0 || r.CompletionTokens != 5 {
		t.Fatalf("cold: exit %d, %+v", code, r)
	}
	ready, _, ok := r.step("engine ready")
	first, _, _ := r.step("first token")
	done, _, _ := r.step("done")
	if !ok || ready < 500*time.Millisecond || first < ready || done < first {
		t.Fatalf("cold steps %+v: want the engine ready after its 0.5 s, then the first token, then done", r.Steps)
	}
	r, _ = runSmoke(t, "--config", cfgPath)
	if _, skipped, _ := r.step("engine start"); !r.OK || !strings.Contains(skipped, "already ready") {
		t.Fatalf("warm: %+v; want ok with the engine already ready", r)
	}
	r, code = runSmoke(t, "--config", cfgPath, "--model", "no-such-model")
	if code != 1 || !strings.Contains(r.Reason, "404") || !strings.Contains(r.Reason, "--model") {
		t.Fatalf("unknown model: exit %d, %q", code, r.Reason)
	}

	broken := writeConfig(t, fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = ["/bin/false"]
max_cold_start_wait = "5s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, freeAddr(t)))
	d := start(t, nil, nil, "--config", broken)
	r, code = runSmoke(t, "--config", broken, "--api", d.api)
	if code != 1 || !strings.Contains(r.Reason, "503") || !strings.Contains(r.Reason, "engine") {
		t.Fatalf("an engine that cannot start: exit %d, %q", code, r.Reason)
	}
}
