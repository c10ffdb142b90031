package sim

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
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
		o.Engine.MaxNumQueuedReqs = 1
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
	// One request runs, then one waits: the queue (of one) is full.
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

func TestSleepMode(t *testing.T) {
	srv := newTestServer(t, func(o *Options) { o.Engine.Profile.WakeTime = 30 * time.Millisecond })
	post(t, srv.URL+"/sleep", "")
	if code, _ := post(t, srv.URL+"/v1/completions", `{"prompt":"a","max_tokens":1}`); code != 503 {
		t.Fatalf("while sleeping: %d, want 503", code)
	}
	resp, _ := http.Get(srv.URL + "/is_sleeping")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "true") {
		t.Fatalf("/is_sleeping = %s", b)
	}
	start := time.Now()
	post(t, srv.URL+"/wake_up", "")
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("wake_up took %s, want the modelled 30ms", d)
	}
	if code, _ := post(t, srv.URL+"/v1/completions", `{"prompt":"a","max_tokens":1}`); code != 200 {
		t.Fatalf("after wake_up: %d", code)
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
