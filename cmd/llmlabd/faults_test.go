package main_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricSum scrapes url and sums the samples of family name whose labels
// include match (name=value pairs).
func metricSum(t *testing.T, url, name string, match ...string) float64 {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(fetch(t, url)))
	if err != nil {
		t.Fatal(err)
	}
	f, ok := fams[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for _, kv := range match {
			k, v, _ := strings.Cut(kv, "=")
			ok = ok && labels[k] == v
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		}
	}
	return sum
}

// childPIDs lists a process's children.
func childPIDs(t *testing.T, pid int) []int {
	t.Helper()
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		data, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// The engine llmlabd manages (the simulator, gtx1650 profile) is killed
// with SIGKILL while two requests run in it and three wait in llmlabd's
// queue. The streamed one, whose answer had begun, ends with an
// OpenAI-shaped SSE error event; the non-streamed one, of which the client
// had received nothing, is sent once more to the restarted engine and
// answered; llmlabd restarts the engine at once and the three waiting
// requests are served by the new one, none refused. Slots are freed, and
// the counters add up: every request sent is counted once.
func TestEngineCrashMidStream(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
models = ["m"]
command = [%q, "sim", "--profile", "gtx1650", "--startup-delay", "1s", "--served-model-name", "m", "--host", %q, "--port", %q]
idle_timeout = "0s"
max_cold_start_wait = "30s"
[queue]
max_inflight = 2
max_queued = 8
max_wait = "30s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, engineAddr, toolBinary, host, port)
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	// Warm: the engine starts with the first request.
	if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
	}
	enginePIDs := childPIDs(t, d.cmd.Process.Pid)
	if len(enginePIDs) != 1 {
		t.Fatalf("llmlabd's children: %v, want the engine alone", enginePIDs)
	}

	// The streamed request: read its first event, then keep reading.
	streamed := make(chan string, 1)
	resp, err := http.Post(d.api+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"x","max_tokens":400,"stream":true,"ignore_eos":true}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("streamed request: %v %v", err, resp)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first event: %q %v", line, err)
	}
	go func() {
		rest, _ := io.ReadAll(br)
		resp.Body.Close()
		streamed <- string(rest)
	}()
	type answer struct {
		code int
		body string
	}
	send := func(c chan<- answer, body string) {
		resp, b := post(t, d.api+"/v1/completions", body)
		c <- answer{resp.StatusCode, string(b)}
	}
	inflight := make(chan answer, 1)
	go send(inflight, `{"prompt":"x","max_tokens":400,"ignore_eos":true}`)
	waiting := make(chan answer, 3)
	deadline := time.Now().Add(10 * time.Second)
	for metricSum(t, d.metrics+"/metrics", "llmlab_inflight_sequences") != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the two requests did not reach the engine")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 3 {
		go send(waiting, `{"prompt":"x","max_tokens":8}`)
	}
	for metricSum(t, d.metrics+"/metrics", "llmlab_queue_depth") != 3 {
		if time.Now().After(deadline) {
			t.Fatal("the three requests did not queue")
		}
		time.Sleep(10 * time.Millisecond)
	}

	crashed := time.Now()
	syscall.Kill(enginePIDs[0], syscall.SIGKILL)

	select {
	case rest := <-streamed:
		if !strings.Contains(rest, `"code":"engine_error"`) || !strings.Contains(rest, `"type":"server_error"`) {
			t.Fatalf("the stream ended without an OpenAI-shaped error event:\n%.2000s", rest)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the streamed request did not end after the crash")
	}
	select {
	case a := <-inflight:
		if a.code != 200 {
			t.Fatalf("the non-streamed request in the engine: %d %s, want it sent again to the restarted engine and answered", a.code, a.body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the non-streamed request in the engine did not end after the crash")
	}
	for range 3 {
		select {
		case a := <-waiting:
			if a.code != 200 {
				t.Fatalf("a request waiting in the queue during the crash: %d %s, want it served after the restart\n%s", a.code, a.body, d.logs.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a waiting request was not answered within 30 s of the crash")
		}
	}
	t.Logf("the three waiting requests were served %s after the crash", time.Since(crashed).Round(time.Millisecond))

	m := d.metrics + "/metrics"
	if n := metricSum(t, m, "llmlab_engine_crashes_total"); n != 1 {
		t.Errorf("llmlab_engine_crashes_total = %v, want 1", n)
	}
	if n := metricSum(t, m, "llmlab_engine_starts_total", "result=ready"); n != 2 {
		t.Errorf("llmlab_engine_starts_total{result=ready} = %v, want 2 (the restart)", n)
	}
	deadline = time.Now().Add(5 * time.Second)
	for metricSum(t, m, "llmlab_inflight_sequences")+metricSum(t, m, "llmlab_queue_depth") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("slots still held after every request ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// 1 warm-up + 1 streamed + 1 in the engine + 3 waiting, each counted once.
	if n := metricSum(t, m, "llmlab_requests_total"); n != 6 {
		t.Errorf("llmlab_requests_total = %v, want 6: every request counted once", n)
	}
	if n := metricSum(t, m, "llmlab_requests_total", "outcome=engine_unavailable"); n != 0 {
		t.Errorf("%v requests refused as engine_unavailable during the restart", n)
	}
}
