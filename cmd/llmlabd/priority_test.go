package main_test

// Integration: the priority class carried into the engine.

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// With engine.scheduling_policy = "priority", llmlabd starts its engine
// with the policy (the simulator reads LLMLAB_SCHEDULING_POLICY as
// llmlab-engine turns it into vLLM's --scheduling-policy) and sends each
// request's class as its priority: an interactive request that reaches the
// engine after a batch one is served before it there. First come first
// served, the batch one goes first. llmlab's own queue is out of the way
// (a fixed limit above the engine's one running sequence, no batch
// reserve), so the order is the engine's.
func TestEnginePriorityOrdersTheEngine(t *testing.T) {
	for _, tc := range []struct {
		policy string
		want   string
	}{
		{"priority", "long interactive batch"},
		{"fcfs", "long batch interactive"},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			addr := freeAddr(t)
			host, port, _ := net.SplitHostPort(addr)
			d := start(t, nil, nil, "--config", writeConfig(t, fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
models = ["m"]
command = [%q, "sim", "--profile", "instant", "--step-fixed", "5ms", "--max-num-seqs", "1", "--startup-delay", "100ms", "--served-model-name", "m", "--host", %q, "--port", %q]
idle_timeout = "0s"
scheduling_policy = %q
[queue]
concurrency = "fixed"
max_inflight = 8
batch_share = 1
[gpu]
enabled = false
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, addr, toolBinary, host, port, tc.policy)))
			if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"warm","max_tokens":1}`); resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			engineHolds := func(running, waiting float64) {
				t.Helper()
				for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
					m := "http://" + addr + "/metrics"
					if metricSum(t, m, "vllm:num_requests_running") == running && metricSum(t, m, "vllm:num_requests_waiting") == waiting {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("the engine never held %v running and %v waiting", running, waiting)
					}
				}
			}
			var mu sync.Mutex
			var order []string
			var wg sync.WaitGroup
			send := func(label, body, class string) {
				wg.Go(func() {
					req, _ := http.NewRequest("POST", d.api+"/v1/completions", strings.NewReader(body))
					if class != "" {
						req.Header.Set("X-Llmlab-Priority", class)
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != 200 {
						t.Errorf("%s: %d", label, resp.StatusCode)
					}
					mu.Lock()
					order = append(order, label)
					mu.Unlock()
				})
			}
			send("long", `{"prompt":"long","max_tokens":200,"ignore_eos":true}`, "")
			engineHolds(1, 0)
			send("batch", `{"prompt":"b","max_tokens":3,"ignore_eos":true}`, "batch")
			engineHolds(1, 1)
			send("interactive", `{"prompt":"i","max_tokens":3,"ignore_eos":true}`, "")
			engineHolds(1, 2)
			wg.Wait()
			if got := strings.Join(order, " "); got != tc.want {
				t.Fatalf("answered in the order %s, want %s", got, tc.want)
			}
		})
	}
}
