//go:build realengine

package main_test

// In front of a real engine nobody here wrote: Ollama, built from the Go
// module proxy with a random-weight model (testdata/ollama). `make
// test-engines` (part of `make test`) builds them and runs this file; the
// ratios belong to `make bench-engines`, not here.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ollamaDaemon starts llmlabd managing Ollama (testdata/ollama/serve.sh)
// as its engine, pinned to CPU 1 when the machine has two.
func ollamaDaemon(t *testing.T, queue string) *daemon {
	t.Helper()
	dir := os.Getenv("LLMLAB_OLLAMA_DIR")
	if dir == "" {
		t.Fatal("LLMLAB_OLLAMA_DIR is not set: run make test-engines, which builds Ollama and the model (cmd/llmlabd/testdata/ollama/build.sh)")
	}
	serve, err := filepath.Abs("testdata/ollama/serve.sh")
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
models = ["llmlab-tiny"]
command = ["env", "OLLAMA_HOST=%s", "LLMLAB_OLLAMA_DIR=%s", "LLMLAB_ENGINE_CPUS=1", %q]
ready_path = "/api/ps"
ready_match = "llmlab-tiny"
start_timeout = "60s"
expected_start_time = "2s"
[queue]
%s
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[gpu]
enabled = false
[log]
format = "text"
access_log = false
[slo]
latency = "2s"
`, addr, addr, dir, serve, queue)
	return start(t, nil, []string{"taskset", "-c", "0"}, "--config", writeConfig(t, cfg))
}

type answer struct {
	status     int
	retryAfter string
	tokens     int
	errType    string
	err        error
}

// ask sends one completion of maxTokens tokens (streamed or not) and
// reads the whole answer.
func ask(client *http.Client, api string, i, maxTokens int, stream bool) answer {
	prompt := fmt.Sprintf("Write %s", strings.Repeat([]string{" apple", " river", " stone", " cloud"}[i%4], 1+i%7)) + strings.Repeat(" word", 150)
	body, _ := json.Marshal(map[string]any{"model": "llmlab-tiny", "prompt": prompt, "max_tokens": maxTokens, "temperature": 0,
		"stream": stream, "stream_options": map[string]bool{"include_usage": true}})
	if !stream {
		body, _ = json.Marshal(map[string]any{"model": "llmlab-tiny", "prompt": prompt, "max_tokens": maxTokens, "temperature": 0})
	}
	resp, err := client.Post(api+"/v1/completions", "application/json", strings.NewReader(string(body)))
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error struct{ Type string } }
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			a.err = fmt.Errorf("a %d without an OpenAI error body: %v", resp.StatusCode, err)
		}
		a.errType = e.Error.Type
		return a
	}
	var usage struct {
		Usage *struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if !stream {
		if err := json.NewDecoder(resp.Body).Decode(&usage); err != nil || usage.Usage == nil {
			a.err = fmt.Errorf("answer without usage: %v", err)
			return a
		}
		a.tokens = usage.Usage.CompletionTokens
		return a
	}
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			done = true
			continue
		}
		if strings.Contains(line, `"error"`) {
			a.err = fmt.Errorf("stream ended with an error: %s", line)
		}
		usage.Usage = nil
		if json.Unmarshal([]byte(line), &usage) == nil && usage.Usage != nil {
			a.tokens = usage.Usage.CompletionTokens
		}
	}
	if !done && a.err == nil {
		a.err = fmt.Errorf("stream without [DONE]: %v", sc.Err())
	}
	return a
}

// The first request starts Ollama through llmlabd (readiness from /api/ps,
// no /metrics to read) and is answered; under a load of twice what the
// engine serves (measured first, on this machine as it is now), every request is answered in full or refused with
// Retry-After and an OpenAI error, none is lost (llmlabd counts as many as
// were sent), and the limit llmlabd's defaults choose from the engine model
// stays near what the 4-slot engine can run rather than wandering up to
// max_inflight. The queue's keys are the shipped defaults.
func TestRealEngineOllama(t *testing.T) {
	d := ollamaDaemon(t, "")
	client := &http.Client{Timeout: 60 * time.Second}
	if a := ask(client, d.api, 0, 20, false); a.err != nil || a.status != 200 || a.tokens != 20 {
		t.Fatalf("the first request (cold start): %+v", a)
	}
	if a := ask(client, d.api, 1, 20, true); a.err != nil || a.status != 200 || a.tokens != 20 {
		t.Fatalf("a streamed request: %+v", a)
	}
	waitLog(t, d, "the engine serves no metrics")

	// The engine's pace on this machine now (one CPU's Ollama with 4 slots
	// served 12 to 24 req/s of these in different runs: it depends on what
	// else the machine runs): 4 clients, one per slot, for 4 s.
	const maxTokens, seconds = 60, 12
	var served, calibration atomic.Int64
	calEnd := time.Now().Add(4 * time.Second)
	var cwg sync.WaitGroup
	for c := range 4 {
		cwg.Go(func() {
			for i := c; time.Now().Before(calEnd); i += 4 {
				calibration.Add(1)
				if a := ask(client, d.api, i, maxTokens, false); a.status == 200 && a.err == nil {
					served.Add(1)
				}
			}
		})
	}
	cwg.Wait()
	capacity := float64(served.Load()) / 4
	// Then an open loop at twice that for 12 s.
	rate := max(4, int(math.Round(2*capacity)))
	t.Logf("the engine served %.1f req/s with 4 clients; offering %d req/s", capacity, rate)
	var (
		mu      sync.Mutex
		answers []answer
		limits  []int
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
				l := readLimit(t, d).Queue.Limit
				mu.Lock()
				limits = append(limits, l)
				mu.Unlock()
			}
		}
	}()
	startAt := time.Now()
	for i := range rate * seconds {
		time.Sleep(time.Until(startAt.Add(time.Duration(i) * time.Second / time.Duration(rate))))
		wg.Go(func() {
			a := ask(client, d.api, i, maxTokens, i%2 == 0)
			mu.Lock()
			answers = append(answers, a)
			mu.Unlock()
		})
	}
	wg.Wait()
	close(stop)

	ok, refused := 0, 0
	for _, a := range answers {
		switch {
		case a.err != nil:
			t.Errorf("request failed: %v (status %d)", a.err, a.status)
		case a.status == 200:
			if a.tokens != maxTokens {
				t.Errorf("an answer of %d tokens, want %d (EOS is unreachable in the model)", a.tokens, maxTokens)
			}
			ok++
		case a.status == 429 || a.status == 503:
			if a.retryAfter == "" {
				t.Errorf("a %d (%s) without Retry-After", a.status, a.errType)
			}
			refused++
		default:
			t.Errorf("status %d (%s)", a.status, a.errType)
		}
	}
	t.Logf("%d answered, %d refused; the limit every 250 ms: %v", ok, refused, limits)
	if ok == 0 || refused == 0 {
		t.Errorf("%d answered and %d refused at twice the engine's capacity: want both", ok, refused)
	}
	// llmlabd counted every request it was sent: none lost.
	counted := metricSum(t, d.metrics+"/metrics", "llmlab_requests_total")
	if want := float64(len(answers) + 2 + int(calibration.Load())); math.Abs(counted-want) > 0 {
		t.Errorf("llmlab_requests_total sums to %v, want the %v requests sent", counted, want)
	}
	// The limit stays near what the engine turns into throughput, far
	// from max_inflight's 256: its 4 slots and a request or two ready
	// beyond them once the model has seen requests wait inside it (the
	// knee), or, before, what the objective allows; past 32 the limit
	// would be filling the engine's own queue.
	for _, l := range limits {
		if l > 32 {
			t.Fatalf("limit %d on a 4-slot engine (all: %v)", l, limits)
		}
	}
	t.Logf("the engine model: %+v", readLimit(t, d).Queue.Model)
}
