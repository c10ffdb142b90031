package sim

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func newTestServer(t *testing.T, mod func(*Options)) *httptest.Server {
	t.Helper()
	p := Profiles["instant"]
	o := Options{Model: "qwen", Engine: Config{Profile: p, MaxNumSeqs: 64, MaxNumBatchedTokens: 4096, MaxModelLen: 1024, KVBlocks: 10000}}
	if mod != nil {
		mod(&o)
	}
	s := NewServer(o)
	stop := make(chan struct{})
	go s.engine.Loop(stop)
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() { srv.Close(); close(stop) })
	return srv
}

func post(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// The shapes follow vLLM's OpenAI-compatible server (its docs' examples):
// the fields a client reads, with usage counting the prompt and output.
func TestCompletionShape(t *testing.T) {
	srv := newTestServer(t, nil)
	prompt := "Write" + strings.Repeat(" word", 199)
	code, body := post(t, srv.URL+"/v1/completions", `{"model":"qwen","prompt":"`+prompt+`","max_tokens":200,"ignore_eos":true,"temperature":0}`)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var r struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		Model   string `json:"model"`
		Choices []struct {
			Index        int     `json:"index"`
			Text         string  `json:"text"`
			FinishReason string  `json:"finish_reason"`
			Logprobs     *string `json:"logprobs"`
		} `json:"choices"`
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if !strings.HasPrefix(r.ID, "cmpl-") || r.Object != "text_completion" || r.Model != "qwen" || r.Created == 0 {
		t.Errorf("header fields = %+v", r)
	}
	if len(r.Choices) != 1 || r.Choices[0].FinishReason != "length" || CountTokens(r.Choices[0].Text) != 200 {
		t.Errorf("choices = %+v", r.Choices)
	}
	if r.Usage.PromptTokens != 200 || r.Usage.CompletionTokens != 200 || r.Usage.TotalTokens != 400 {
		t.Errorf("usage = %+v, want 200 + 200", r.Usage)
	}
}

func TestPromptListAndN(t *testing.T) {
	srv := newTestServer(t, nil)
	code, body := post(t, srv.URL+"/v1/completions", `{"prompt":["a b","c d e"],"n":2,"max_tokens":3,"ignore_eos":true,"return_token_ids":true}`)
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var r struct {
		Choices []struct {
			Index          int   `json:"index"`
			PromptTokenIDs []int `json:"prompt_token_ids"`
			TokenIDs       []int `json:"token_ids"`
		} `json:"choices"`
		Usage struct {
			PromptTokens, CompletionTokens int
		} `json:"usage"`
	}
	json.Unmarshal(body, &r)
	if len(r.Choices) != 4 {
		t.Fatalf("%d choices, want 2 prompts x n=2", len(r.Choices))
	}
	for i, c := range r.Choices {
		wantPrompt := []int{2, 2, 3, 3}[i]
		if c.Index != i || len(c.PromptTokenIDs) != wantPrompt || len(c.TokenIDs) != 3 {
			t.Errorf("choice %d = %+v", i, c)
		}
	}
}

func TestChatStream(t *testing.T) {
	srv := newTestServer(t, nil)
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("Content-Type %q", resp.Header.Get("Content-Type"))
	}
	var events []map[string]any
	sc := bufio.NewScanner(resp.Body)
	done := false
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			done = true
			break
		}
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("event %q: %v", line, err)
		}
		events = append(events, ev)
	}
	// role chunk, 5 content chunks (the last with finish_reason), usage.
	if !done || len(events) != 7 {
		t.Fatalf("%d events (done %v), want 7 and [DONE]", len(events), done)
	}
	first := events[0]["choices"].([]any)[0].(map[string]any)["delta"].(map[string]any)
	if first["role"] != "assistant" || events[0]["object"] != "chat.completion.chunk" {
		t.Errorf("first chunk %v", events[0])
	}
	last := events[5]["choices"].([]any)[0].(map[string]any)
	if last["finish_reason"] != "length" {
		t.Errorf("last token chunk %v, want finish_reason length", last)
	}
	u := events[6]["usage"].(map[string]any)
	if u["completion_tokens"] != float64(5) || u["prompt_tokens"].(float64) < 2 {
		t.Errorf("usage %v", u)
	}
}

func TestErrors(t *testing.T) {
	srv := newTestServer(t, nil)
	for _, tt := range []struct {
		body string
		code int
	}{
		{`{"model":"other","prompt":"x"}`, 404},
		{`{"prompt":"x","max_tokens":2000}`, 400}, // beyond max_model_len
		{`{"prompt":{"a":1}}`, 400},
		{`{"prompt":`, 400},
	} {
		code, body := post(t, srv.URL+"/v1/completions", tt.body)
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if code != tt.code || json.Unmarshal(body, &e) != nil || e.Error.Message == "" {
			t.Errorf("%s: %d %s, want %d with an error message", tt.body, code, body, tt.code)
		}
	}
}

func TestNaturalLengthWithoutIgnoreEOS(t *testing.T) {
	srv := newTestServer(t, nil)
	var lens []int
	for range 2 {
		_, body := post(t, srv.URL+"/v1/completions", `{"prompt":"tell me a story","max_tokens":500,"temperature":0}`)
		var r struct {
			Usage struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		json.Unmarshal(body, &r)
		lens = append(lens, r.Usage.CompletionTokens)
	}
	if lens[0] != lens[1] || lens[0] < 16 || lens[0] >= 256 {
		t.Fatalf("completion lengths %v: want the same natural length (16-255) twice at temperature 0", lens)
	}
	_, body := post(t, srv.URL+"/v1/completions", `{"prompt":"tell me a story","max_tokens":300,"min_tokens":300}`)
	if !strings.Contains(string(body), `"completion_tokens":300`) {
		t.Fatalf("min_tokens not honoured: %s", body)
	}
}

func TestQueueLimitAndFailureInjection(t *testing.T) {
	srv := newTestServer(t, func(o *Options) {
		o.Engine.MaxNumQueuedReqs = 2
		o.Engine.MaxNumSeqs = 1
		o.Engine.Profile.StepFixed = 200 * time.Millisecond
	})
	// A client of its own: a kept-alive connection to an earlier test's
	// server on a reused port would fail these requests silently.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	waitMetric := func(line string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := http.Get(srv.URL + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			m, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(m), line) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("/metrics never showed %s:\n%s", line, m)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// One request runs, then one waits: with two in flight, as many as
	// --max-num-queued-reqs allows (it counts running ones too), a third
	// is refused.
	go client.Post(srv.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"a","max_tokens":8,"ignore_eos":true}`))
	waitMetric(`vllm:num_requests_running{engine="0",model_name="qwen"} 1`)
	go client.Post(srv.URL+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"b","max_tokens":8,"ignore_eos":true}`))
	waitMetric(`vllm:num_requests_waiting{engine="0",model_name="qwen"} 1`)
	if code, body := post(t, srv.URL+"/v1/completions", `{"prompt":"c","max_tokens":1}`); code != 503 {
		t.Fatalf("beyond max_num_queued_reqs: %d %s, want 503", code, body)
	}

	failing := newTestServer(t, func(o *Options) { o.ErrorRate = 1 })
	if code, _ := post(t, failing.URL+"/v1/completions", `{"prompt":"a","max_tokens":1}`); code != 500 {
		t.Fatalf("error rate 1: %d, want 500", code)
	}
	crashed := make(chan struct{}, 1)
	crashing := newTestServer(t, func(o *Options) { o.CrashAfter = 1; o.Crash = func() { crashed <- struct{}{} } })
	post(t, crashing.URL+"/v1/completions", `{"prompt":"a","max_tokens":1}`)
	select {
	case <-crashed:
		t.Fatal("crashed on the first request, want after it")
	default:
	}
	post(t, crashing.URL+"/v1/completions", `{"prompt":"a","max_tokens":1}`)
	select {
	case <-crashed:
	default:
		t.Fatal("did not crash on the second request")
	}
}

// postAsync posts from another goroutine and sends the answer on the
// returned channel (status -1 when the request failed).
func postAsync(url, body string) <-chan string {
	ch := make(chan string, 1)
	go func() {
		resp, err := http.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			ch <- "-1 " + err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- strconv.Itoa(resp.StatusCode) + " " + string(b)
	}()
	return ch
}

// Sleep mode follows vLLM's: the endpoints exist only when enabled (with
// VLLM_SERVER_DEV_MODE=1, which llmlab sim's flags check); mode=wait lets
// the request in the engine finish, mode=abort (the default) ends it with
// finish_reason "abort"; a request that arrives while asleep queues until
// wake_up (vllm/v1/engine/core.py, pause_scheduler).
func TestSleepMode(t *testing.T) {
	off := newTestServer(t, nil)
	if code, _ := post(t, off.URL+"/sleep", ""); code != http.StatusNotFound {
		t.Fatalf("POST /sleep without sleep mode: %d, want 404", code)
	}
	srv := newTestServer(t, func(o *Options) {
		o.SleepMode = true
		o.Engine.Profile.WakeTime = 30 * time.Millisecond
		o.Engine.Profile.StepFixed = 5 * time.Millisecond
	})
	const long = `{"prompt":"a","max_tokens":40,"ignore_eos":true}`
	inflight := postAsync(srv.URL+"/v1/completions", long)
	time.Sleep(30 * time.Millisecond)
	if code, _ := post(t, srv.URL+"/sleep?level=1&mode=wait", ""); code != 200 {
		t.Fatalf("POST /sleep?mode=wait: %d", code)
	}
	if got := <-inflight; !strings.HasPrefix(got, "200 ") || !strings.Contains(got, `"finish_reason":"length"`) || !strings.Contains(got, `"completion_tokens":40`) {
		t.Fatalf("the request in the engine during sleep mode=wait: %.300s, want it finished whole", got)
	}
	resp, _ := http.Get(srv.URL + "/is_sleeping")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "true") {
		t.Fatalf("/is_sleeping = %s", b)
	}
	queued := postAsync(srv.URL+"/v1/completions", `{"prompt":"a","max_tokens":1}`)
	select {
	case got := <-queued:
		t.Fatalf("a request while asleep was answered before wake_up: %.200s", got)
	case <-time.After(150 * time.Millisecond):
	}
	start := time.Now()
	post(t, srv.URL+"/wake_up", "")
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("wake_up took %s, want the modelled 30ms", d)
	}
	if got := <-queued; !strings.HasPrefix(got, "200 ") {
		t.Fatalf("the request queued while asleep, after wake_up: %.200s", got)
	}

	inflight = postAsync(srv.URL+"/v1/completions", long)
	time.Sleep(30 * time.Millisecond)
	post(t, srv.URL+"/sleep", "")
	if got := <-inflight; !strings.Contains(got, `"finish_reason":"abort"`) {
		t.Fatalf("the request in the engine during sleep (mode abort, the default): %.300s, want finish_reason abort", got)
	}
	post(t, srv.URL+"/wake_up", "")
}

// The output cap as vLLM reads it (docs/engine-contract.md): completions
// default to 16 tokens (also for null) and ignore max_completion_tokens;
// chat prefers max_completion_tokens, else max_tokens, else what fits; a
// named cap that does not fit beside the prompt is a 400; the server-wide
// max_new_tokens caps without refusing.
func TestOutputCapAsVLLM(t *testing.T) {
	srv := newTestServer(t, nil)
	prompt200 := `"Write` + strings.Repeat(" word", 199) + `"`
	chat200 := `"messages":[{"role":"user","content":` + prompt200 + `}]`
	tests := []struct {
		name, path, body string
		status           int
		completion       int // completion tokens, for 200s
	}{
		{"completions default", "/v1/completions", `{"prompt":` + prompt200 + `,"ignore_eos":true}`, 200, 16},
		{"completions null", "/v1/completions", `{"prompt":` + prompt200 + `,"max_tokens":null,"ignore_eos":true}`, 200, 16},
		{"completions ignore max_completion_tokens", "/v1/completions", `{"prompt":` + prompt200 + `,"max_tokens":30,"max_completion_tokens":5,"ignore_eos":true}`, 200, 30},
		{"completions duplicate key, last wins", "/v1/completions", `{"prompt":` + prompt200 + `,"max_tokens":5,"max_tokens":7,"ignore_eos":true}`, 200, 7},
		{"completions over the context", "/v1/completions", `{"prompt":` + prompt200 + `,"max_tokens":1000}`, 400, 0},
		{"chat max_completion_tokens first", "/v1/chat/completions", `{` + chat200 + `,"max_tokens":30,"max_completion_tokens":5,"ignore_eos":true}`, 200, 5},
		{"chat max_tokens", "/v1/chat/completions", `{` + chat200 + `,"max_tokens":30,"ignore_eos":true}`, 200, 30},
		{"chat null max_completion_tokens", "/v1/chat/completions", `{` + chat200 + `,"max_completion_tokens":null,"max_tokens":9,"ignore_eos":true}`, 200, 9},
		{"chat none: what fits", "/v1/chat/completions", `{` + chat200 + `,"ignore_eos":true}`, 200, -1},
	}
	for _, tt := range tests {
		code, body := post(t, srv.URL+tt.path, tt.body)
		if code != tt.status {
			t.Errorf("%s: %d %.200s, want %d", tt.name, code, body, tt.status)
			continue
		}
		if code == 400 && !strings.Contains(string(body), "maximum context length is 1024 tokens") {
			t.Errorf("%s: %.300s, want vLLM's context-length message", tt.name, body)
		}
		if code != 200 {
			continue
		}
		var r struct {
			Usage struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		want := tt.completion
		if want < 0 {
			want = 1024 - r.Usage.PromptTokens
		}
		if r.Usage.CompletionTokens != want {
			t.Errorf("%s: %d completion tokens, want %d", tt.name, r.Usage.CompletionTokens, want)
		}
	}

	capped := newTestServer(t, func(o *Options) { o.MaxNewTokens = 12 })
	code, body := post(t, capped.URL+"/v1/chat/completions", `{`+chat200+`,"ignore_eos":true}`)
	if code != 200 || !strings.Contains(string(body), `"completion_tokens":12`) {
		t.Errorf("max_new_tokens 12, chat without a cap: %d %.300s, want 12 tokens", code, body)
	}
	code, body = post(t, capped.URL+"/v1/completions", `{"prompt":`+prompt200+`,"max_tokens":800,"ignore_eos":true}`)
	if code != 200 || !strings.Contains(string(body), `"completion_tokens":12`) {
		t.Errorf("max_new_tokens 12, max_tokens 800: %d %.300s, want 12 tokens and no refusal", code, body)
	}
}

// Prefix caching (on by default in vLLM): a prompt whose 16-token blocks
// an earlier one computed is not prefilled again, which vLLM's
// prefix_cache_hits counter shows; a prompt that differs in its first
// block hits nothing.
func TestPrefixCaching(t *testing.T) {
	srv := newTestServer(t, func(o *Options) { o.Engine.PrefixCaching = true })
	hits := func() string {
		resp, err := http.Get(srv.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "vllm:prefix_cache_hits{") {
				return l[strings.LastIndexByte(l, ' ')+1:]
			}
		}
		return "missing"
	}
	same := `{"prompt":"Write` + strings.Repeat(" word", 199) + `","max_tokens":1}`
	post(t, srv.URL+"/v1/completions", same)
	if h := hits(); h != "0" {
		t.Fatalf("hits after the first prompt: %s, want 0", h)
	}
	post(t, srv.URL+"/v1/completions", same)
	if h := hits(); h != "192" {
		t.Fatalf("hits after the same prompt again: %s, want 192 (12 full blocks of 16)", h)
	}
	post(t, srv.URL+"/v1/completions", `{"prompt":"Write apple river stone cloud`+strings.Repeat(" word", 195)+`","max_tokens":1}`)
	if h := hits(); h != "192" {
		t.Fatalf("hits after a prompt that differs in its first block: %s, want still 192", h)
	}
}

func TestTokenizeAndMetrics(t *testing.T) {
	srv := newTestServer(t, nil)
	_, body := post(t, srv.URL+"/tokenize", `{"prompt":"Write`+strings.Repeat(" word", 199)+`"}`)
	if !strings.Contains(string(body), `"count":200`) {
		t.Fatalf("/tokenize = %.80s", body)
	}
	post(t, srv.URL+"/v1/completions", `{"prompt":"a","max_tokens":2}`)
	resp, _ := http.Get(srv.URL + "/metrics")
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
		"vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
		"vllm:iteration_tokens_total", "vllm:request_success_total", "llmlab_sim_step_lag_seconds"} {
		if !strings.Contains(string(m), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// A request waiting in the engine (past max_num_seqs) shows no byte of its
// answer until it runs: vLLM sends a stream's first event, the role chunk,
// with the engine's first output, and admission reads a slot engine's queue
// from that first byte's delay.
func TestStreamFirstEventWaitsForTheEngine(t *testing.T) {
	srv := newTestServer(t, func(o *Options) {
		o.Engine.Profile.StepFixed = 2 * time.Millisecond
		o.Engine.MaxNumSeqs = 1
	})
	body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":100,"ignore_eos":true,"stream":true}`
	firstByte := func(start time.Time, done chan<- time.Duration) {
		resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Error(err)
			done <- 0
			return
		}
		defer resp.Body.Close()
		b := make([]byte, 1)
		if _, err := io.ReadFull(resp.Body, b); err != nil {
			t.Error(err)
		}
		got := time.Since(start)
		io.Copy(io.Discard, resp.Body)
		done <- got
	}
	start := time.Now()
	a, b := make(chan time.Duration, 1), make(chan time.Duration, 1)
	go firstByte(start, a)
	time.Sleep(20 * time.Millisecond) // a is running
	go firstByte(start, b)
	ta, tb := <-a, <-b
	// a's 100 tokens take 100 steps of at least 2 ms; b runs only after.
	if tb < ta+150*time.Millisecond {
		t.Errorf("second request's first byte after %v, first's after %v: it should wait for the first's 100 steps", tb, ta)
	}
}
