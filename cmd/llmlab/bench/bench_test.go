package bench

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/sim"
)

func TestPercentile(t *testing.T) {
	var v []time.Duration
	for i := 1; i <= 100; i++ {
		v = append(v, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 95: 95 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond, 0.1: time.Millisecond} {
		if got := Percentile(v, p); got != want {
			t.Errorf("Percentile(1..100ms, %v) = %s, want %s", p, got, want)
		}
	}
	if got := Percentile([]time.Duration{7}, 95); got != 7 {
		t.Errorf("one sample: %s", got)
	}
}

func TestSummarize(t *testing.T) {
	slo := SLO{Latency: 5 * time.Second, MaxErrorRate: 0.1}
	var samples []Sample
	// 10 warm-up samples that must not count.
	for range 10 {
		samples = append(samples, Sample{Warmup: true, Status: 500})
	}
	// 8 successes: 6 within the SLO, 2 beyond; 1 refusal; 1 failure.
	for i := range 8 {
		lat := time.Second
		if i >= 6 {
			lat = 6 * time.Second
		}
		samples = append(samples, Sample{Status: 200, Latency: lat, TTFT: 100 * time.Millisecond, OutputTokens: 201})
	}
	samples = append(samples, Sample{Status: 429}, Sample{Error: "timeout"})
	s := Summarize(samples, 2*time.Second, slo)
	if s.Requests != 10 || s.OK != 8 || s.Refused != 1 || s.Failed != 1 {
		t.Fatalf("counts = %d/%d/%d/%d, want 10/8/1/1", s.Requests, s.OK, s.Refused, s.Failed)
	}
	if s.RPS != 4 || s.Goodput != 3 {
		t.Errorf("RPS %v goodput %v, want 4 and 3 (6 within SLO over 2 s)", s.RPS, s.Goodput)
	}
	if s.ErrorRate != 0.2 || s.FailureRate != 0.1 {
		t.Errorf("error rate %v failure rate %v, want 0.2 and 0.1", s.ErrorRate, s.FailureRate)
	}
	if s.Latency.P50 != time.Second || s.Latency.P95 != 6*time.Second {
		t.Errorf("latency %+v", s.Latency)
	}
	if s.TPOT.P50 != 4500*time.Microsecond {
		t.Errorf("TPOT p50 %s, want (1s-100ms)/200 = 4.5ms", s.TPOT.P50)
	}
	if s.Pass {
		t.Error("Pass with p95 6s > 5s and error rate 0.2 > 0.1")
	}
	if s.ByCode["200"] != 8 || s.ByCode["429"] != 1 || s.ByCode["timeout"] != 1 {
		t.Errorf("ByCode = %v", s.ByCode)
	}
}

// End to end against the simulator: the fixed workload is exactly 200
// prompt and 200 output tokens, as the engine's usage reports.
func TestRunAgainstSimulator(t *testing.T) {
	p := sim.Profiles["instant"]
	srv := sim.NewServer(sim.Options{Model: "m", Engine: sim.Config{Profile: p, MaxNumSeqs: 64, MaxNumBatchedTokens: 8192, MaxModelLen: 1024, KVBlocks: 10000}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx, l)
	for _, o := range []Options{
		{Concurrency: 4, Stream: true},
		{Rate: 50, Poisson: true, Seed: 3, Chat: false},
		{Concurrency: 2, Chat: true, Stream: true},
	} {
		o.Target, o.Model, o.PromptTokens, o.MaxTokens = "http://"+l.Addr().String(), "m", 200, 200
		o.Duration, o.Warmup = 500*time.Millisecond, 100*time.Millisecond
		samples, err := Run(ctx, NewClient(8), o)
		if err != nil {
			t.Fatal(err)
		}
		s := Summarize(samples, o.Duration, SLO{Latency: 5 * time.Second, MaxErrorRate: 0.001})
		if s.OK == 0 || s.Failed != 0 || !s.Pass {
			t.Fatalf("%+v: %+v", o, s)
		}
		for _, x := range samples {
			wantPrompt := 200
			if o.Chat {
				wantPrompt = 200 + 33 // Qwen's chat template around one user message
			}
			if x.PromptTokens != wantPrompt || x.OutputTokens != 200 {
				t.Fatalf("%+v: sample with %d prompt and %d output tokens, want %d and 200", o, x.PromptTokens, x.OutputTokens, wantPrompt)
			}
			if o.Stream && (x.TTFT <= 0 || x.TTFT > x.Latency) {
				t.Fatalf("TTFT %s with latency %s", x.TTFT, x.Latency)
			}
		}
	}
}

// Each request's body carries its own prompt, of the same length, and two
// requests' prompts differ within their first 16 tokens (vLLM's
// prefix-cache block), so no request's prefill is served from the cache.
func TestBodiesVaryThePrompt(t *testing.T) {
	for _, chat := range []bool{false, true} {
		o := Options{PromptTokens: 200, MaxTokens: 200, Chat: chat, Stream: true, Model: "m"}
		body := o.bodies()
		first := map[string]int{}
		for _, i := range []int{0, 1, 15, 16, 255, 4096, 65535} {
			var r struct {
				Prompt   string `json:"prompt"`
				Messages []struct {
					Content string `json:"content"`
				} `json:"messages"`
				MaxTokens     int `json:"max_tokens"`
				StreamOptions *struct {
					IncludeUsage bool `json:"include_usage"`
				} `json:"stream_options"`
			}
			if err := json.Unmarshal(body(i), &r); err != nil {
				t.Fatalf("body(%d) = %s: %v", i, body(i), err)
			}
			p := r.Prompt
			if chat {
				p = r.Messages[0].Content
			}
			if p != Prompt(200, i) || r.MaxTokens != 200 || r.StreamOptions == nil || !r.StreamOptions.IncludeUsage {
				t.Fatalf("chat %v, body(%d) = %s, want prompt %q", chat, i, body(i), Prompt(200, i))
			}
			if n := sim.CountTokens(p); n != 200 {
				t.Fatalf("prompt %d is %d tokens, want 200", i, n)
			}
			words := strings.Fields(p)
			key := strings.Join(words[:16], " ")
			if j, seen := first[key]; seen {
				t.Fatalf("requests %d and %d share their first 16 tokens", j, i)
			}
			first[key] = i
		}
	}
}

// --find-max brackets and bisects to a rate near the engine's capacity.
func TestFindMax(t *testing.T) {
	var tried []float64
	got := FindMax(1, 1000, 0.05, func(r float64) bool { tried = append(tried, r); return r <= 37 })
	if got > 37 || got < 37*0.95 {
		t.Fatalf("FindMax = %.2f (tried %v), want within 5%% below 37", got, tried)
	}
	if got := FindMax(1, 10, 0.05, func(float64) bool { return true }); got != 8 {
		t.Fatalf("FindMax capped at 10 = %v, want 8 (the last rate tried below the cap)", got)
	}
	if got := FindMax(4, 100, 0.05, func(float64) bool { return false }); got != 0 {
		t.Fatalf("FindMax where nothing passes = %v, want 0", got)
	}
}

// Options.Header goes with every request, the batch class's header added
// where a request is batch; an answer's X-Llmlab-Queue-Wait is recorded
// and summarised, and the tokens of the answers are counted.
func TestHeaderSentAndQueueWaitRead(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.Header.Get("Authorization")+"|"+r.Header.Get(PriorityHeader)]++
		mu.Unlock()
		w.Header().Set(QueueWaitHeader, "0.250")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"choices":[],"usage":{"prompt_tokens":200,"completion_tokens":5}}`)
	}))
	defer srv.Close()
	o := Options{Target: srv.URL, PromptTokens: 200, MaxTokens: 5, Concurrency: 1, Requests: 10, BatchShare: 0.5,
		Header: http.Header{"Authorization": {"Bearer sk-test"}}}
	samples, err := Run(context.Background(), NewClient(1), o)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if seen["Bearer sk-test|"] != 5 || seen["Bearer sk-test|batch"] != 5 {
		t.Errorf("requests by Authorization|priority = %v, want 5 interactive and 5 batch, each with the key", seen)
	}
	mu.Unlock()
	s := Summarize(samples, time.Second, SLO{Latency: time.Second})
	if s.QueueWait.P50 != 250*time.Millisecond || s.Tokens != 10*205 {
		t.Errorf("queue wait p50 %s, tokens %d; want 250ms and %d", s.QueueWait.P50, s.Tokens, 10*205)
	}
	if data, _ := json.Marshal(o); strings.Contains(string(data), "sk-test") {
		t.Errorf("the options' JSON holds the key: %s", data)
	}
}
