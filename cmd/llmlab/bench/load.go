// Package bench is llmlab's load generator and statistics: it sends the
// fixed workload (a prompt of 200 tokens, max_tokens output) to an
// OpenAI-compatible target in a closed loop (fixed concurrency) or an open
// loop (constant or Poisson arrivals at a rate, on/off bursts, or a replayed
// trace), and records every request.
package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Options describe one load run.
type Options struct {
	// Target is the base URL (http://host:port).
	Target string
	// Chat uses /v1/chat/completions instead of /v1/completions.
	Chat   bool
	Stream bool
	Model  string
	// PromptTokens is the prompt length in tokens of Qwen2.5's tokenizer:
	// "Write" followed by PromptTokens-1 times " word".
	PromptTokens int
	MaxTokens    int
	// Concurrency > 0 runs a closed loop with that many clients.
	Concurrency int
	// Rate > 0 runs an open loop at that many requests per second.
	Rate    float64
	Poisson bool
	// BurstOn and BurstOff make the open loop bursty: arrivals at Rate for
	// BurstOn, then none for BurstOff, repeated.
	BurstOn, BurstOff time.Duration
	// Trace replays these arrival times instead (open loop).
	Trace []time.Duration `json:"-"`
	// Requests > 0 stops after that many requests instead of Duration.
	Requests int
	// Duration is how long requests are started, after Warmup.
	Duration time.Duration
	Warmup   time.Duration
	// Timeout bounds each request.
	Timeout time.Duration
	// Seed makes Poisson arrivals repeatable.
	Seed uint64
	// BatchShare is the share of requests sent in the batch priority class
	// (header X-Llmlab-Priority: batch), spread evenly over the run.
	BatchShare float64
	// Progress, when set, is called with every finished sample.
	Progress func(Sample) `json:"-"`
	// Header is sent with every request (an API key's Authorization, for
	// one): never written to results, since it may hold a secret.
	Header http.Header `json:"-"`
	// Retry sends each refusal (429 or 503) again, once, after its
	// Retry-After, as a client that honours it would: the retries add
	// load, and are summarised apart (Summary.Retried) to show how
	// honest Retry-After was.
	Retry bool
}

// Sample is one request's record. Times are from the run's start.
type Sample struct {
	Start        time.Duration `json:"start"`
	Latency      time.Duration `json:"latency"`
	TTFT         time.Duration `json:"ttft"`
	Status       int           `json:"status"`
	Error        string        `json:"error,omitempty"`
	PromptTokens int           `json:"prompt_tokens"`
	OutputTokens int           `json:"output_tokens"`
	Warmup       bool          `json:"warmup,omitempty"`
	// Batch says the request was sent in the batch priority class.
	Batch bool `json:"batch,omitempty"`
	// RetryAfter is a refusal's Retry-After; Retry says the request is the
	// retry of a refusal, sent that long after it (Options.Retry).
	RetryAfter time.Duration `json:"retry_after,omitempty"`
	Retry      bool          `json:"retry,omitempty"`
	// QueueWait is the time the request waited in llmlabd's queue, as its
	// X-Llmlab-Queue-Wait header says (0: none, or no llmlabd).
	QueueWait time.Duration `json:"queue_wait,omitempty"`
}

// IsBatch says whether request number n (from 1, in start order) of a run
// with BatchShare share goes in the batch class: a low-discrepancy
// sequence (the golden ratio's multiples), so the share holds over any
// stretch of the run.
func IsBatch(n int, share float64) bool {
	_, frac := math.Modf(float64(n) * 0.6180339887498949)
	return frac < share
}

// PriorityHeader is llmlabd's priority-class request header.
const PriorityHeader = "X-Llmlab-Priority"

// QueueWaitHeader is llmlabd's answer header that says how long the
// request waited in its queue, in seconds.
const QueueWaitHeader = "X-Llmlab-Queue-Wait"

// varyWords are sixteen words that are each one token in Qwen2.5's
// vocabulary (checked against its tokenizer.json: " apple" is id 23268,
// and so on), so a prompt spells a request's number in base 16 with them
// without changing its length.
var varyWords = [16]string{" apple", " river", " stone", " cloud", " green", " paper", " music", " light",
	" table", " water", " house", " night", " bread", " chair", " glass", " field"}

// varyTokens is how many of a prompt's first tokens tell requests apart.
const varyTokens = 4

// Prompt returns the benchmark prompt of n tokens for request number i:
// "Write", four words that spell i in base 16, then " word" up to n
// tokens. vLLM caches prompt prefixes in blocks of 16 tokens and enables
// that by default (CacheConfig.enable_prefix_caching), so an identical
// prompt would be prefilled once and then nearly free; requests whose
// first block differs (65,536 of them in a row) are each prefilled whole,
// as distinct users' prompts are.
func Prompt(n, i int) string {
	vary := min(varyTokens, max(0, n-1))
	return string(appendVary([]byte("Write"), i, vary)) + strings.Repeat(" word", max(0, n-1-vary))
}

// appendVary appends the vary words that spell i in base 16, most
// significant first.
func appendVary(b []byte, i, vary int) []byte {
	for d := vary - 1; d >= 0; d-- {
		b = append(b, varyWords[(i>>(4*d))&15]...)
	}
	return b
}

// bodies returns o's request body by request number. The JSON is made
// once; a request's body is that text with its vary words in place.
func (o Options) bodies() func(i int) []byte {
	m := map[string]any{
		"model":       o.Model,
		"max_tokens":  o.MaxTokens,
		"temperature": 0,
		"ignore_eos":  true,
		"min_tokens":  o.MaxTokens,
	}
	if o.Model == "" {
		delete(m, "model")
	}
	// \x01 marks where the vary words go: JSON writes it as \u0001, which
	// no other part of the body contains.
	vary := min(varyTokens, max(0, o.PromptTokens-1))
	prompt := "Write\x01" + strings.Repeat(" word", max(0, o.PromptTokens-1-vary))
	if o.Chat {
		m["messages"] = []map[string]string{{"role": "user", "content": prompt}}
	} else {
		m["prompt"] = prompt
	}
	if o.Stream {
		m["stream"] = true
		m["stream_options"] = map[string]bool{"include_usage": true}
	}
	b, _ := json.Marshal(m)
	head, tail, _ := bytes.Cut(b, []byte(`\u0001`))
	return func(i int) []byte {
		out := make([]byte, 0, len(head)+len(tail)+8*vary)
		out = appendVary(append(out, head...), i, vary)
		return append(out, tail...)
	}
}

// NewClient returns an HTTP client sized for concurrency connections.
func NewClient(concurrency int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		// Keep every connection a burst opens: a pool smaller than the
		// burst closes and reopens connections while the burst lasts,
		// and that churn, which costs the server more CPU per request,
		// can hold a proxy at a backlog it would otherwise drain.
		MaxIdleConnsPerHost: max(4096, concurrency*2),
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
	}}
}

// Run sends load as o says and returns every sample, warm-up included
// (marked). It stops starting requests when ctx ends; requests already
// started finish (each within the timeout).
func Run(ctx context.Context, client *http.Client, o Options) ([]Sample, error) {
	open := o.Rate > 0 || len(o.Trace) > 0
	if (o.Concurrency > 0) == open {
		return nil, fmt.Errorf("set exactly one of concurrency (closed loop) and rate or trace (open loop)")
	}
	path := "/v1/completions"
	if o.Chat {
		path = "/v1/chat/completions"
	}
	url := strings.TrimRight(o.Target, "/") + path
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	start := time.Now()
	end := start.Add(o.Warmup + o.Duration)
	var mu sync.Mutex
	var samples []Sample
	var started atomic.Int64
	record := func(s Sample) {
		s.Warmup = s.Start < o.Warmup
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
		if o.Progress != nil {
			o.Progress(s)
		}
	}
	// take reserves the next request number, or reports that the run is
	// over; batch says whether that request goes in the batch class.
	take := func() (n int, ok, batch bool) {
		i := started.Add(1)
		return int(i), ctx.Err() == nil && (o.Requests == 0 || i <= int64(o.Requests)), IsBatch(int(i), o.BatchShare)
	}
	plain, batchHeader := o.Header.Clone(), o.Header.Clone()
	if batchHeader == nil {
		batchHeader = http.Header{}
	}
	batchHeader.Set(PriorityHeader, "batch")
	body := o.bodies()
	one := func(n int, batch bool) {
		h := plain
		if batch {
			h = batchHeader
		}
		s := DoWith(ctx, client, url, body(n), o.Stream, timeout, start, h)
		s.Batch = batch
		record(s)
		if o.Retry && s.Error == "" && (s.Status == http.StatusTooManyRequests || s.Status == http.StatusServiceUnavailable) && s.RetryAfter > 0 {
			select {
			case <-time.After(s.RetryAfter):
			case <-ctx.Done():
				return
			}
			r := DoWith(ctx, client, url, body(n), o.Stream, timeout, start, h)
			r.Batch, r.Retry = batch, true
			record(r)
		}
	}
	var wg sync.WaitGroup
	if o.Concurrency > 0 {
		for range o.Concurrency {
			wg.Go(func() {
				for o.Requests > 0 || time.Now().Before(end) {
					n, ok, batch := take()
					if !ok {
						break
					}
					one(n, batch)
				}
			})
		}
		wg.Wait()
		return samples, ctx.Err()
	}
	for _, at := range o.Arrivals() {
		if o.Requests == 0 && at > o.Warmup+o.Duration {
			break
		}
		if d := time.Until(start.Add(at)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		n, ok, batch := take()
		if !ok {
			break
		}
		wg.Go(func() { one(n, batch) })
	}
	wg.Wait()
	return samples, ctx.Err()
}

// Arrivals returns the open loop's request start times, from the run's
// start: a trace when given, else constant or Poisson arrivals at Rate,
// during the on-phases of bursts when BurstOn is set.
func (o Options) Arrivals() []time.Duration {
	if len(o.Trace) > 0 {
		return o.Trace
	}
	total := o.Warmup + o.Duration
	limit := o.Requests
	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))
	var out []time.Duration
	var t time.Duration // time within the on-phases
	for {
		if o.Poisson {
			t += time.Duration(rng.ExpFloat64() / o.Rate * float64(time.Second))
		} else {
			t += time.Duration(float64(time.Second) / o.Rate)
		}
		at := t
		if o.BurstOn > 0 {
			// Map on-phase time to wall time: each on-phase is followed by
			// an off-phase with no arrivals.
			cycles := t / o.BurstOn
			at = cycles*(o.BurstOn+o.BurstOff) + t%o.BurstOn
		}
		if (limit == 0 && at > total) || (limit > 0 && len(out) >= limit) {
			return out
		}
		out = append(out, at)
	}
}

// ParseTrace reads arrival times, one a line, in seconds from the start
// (the first column of a CSV also works; '#' lines are comments).
func ParseTrace(r io.Reader) ([]time.Duration, error) {
	var out []time.Duration
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		field, _, _ := strings.Cut(line, ",")
		v, err := strconv.ParseFloat(strings.TrimSpace(field), 64)
		if err != nil {
			if n == 1 {
				continue // a CSV header
			}
			return nil, fmt.Errorf("line %d: %q is not a time in seconds", n, field)
		}
		if v < 0 || (len(out) > 0 && time.Duration(v*float64(time.Second)) < out[len(out)-1]) {
			return nil, fmt.Errorf("line %d: arrival times must be non-negative and in order", n)
		}
		out = append(out, time.Duration(v*float64(time.Second)))
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no arrival times")
	}
	return out, nil
}

// Do sends one request and records it, timed from base.
func Do(ctx context.Context, client *http.Client, url string, body []byte, stream bool, timeout time.Duration, base time.Time) Sample {
	return DoWith(ctx, client, url, body, stream, timeout, base, nil)
}

// DoWith is Do with extra request headers.
func DoWith(ctx context.Context, client *http.Client, url string, body []byte, stream bool, timeout time.Duration, base time.Time, header http.Header) Sample {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t0 := time.Now()
	s := Sample{Start: t0.Sub(base)}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		s.Latency = time.Since(t0)
		s.Error = errText(err)
		return s
	}
	defer resp.Body.Close()
	s.Status = resp.StatusCode
	if v, err := strconv.ParseFloat(resp.Header.Get(QueueWaitHeader), 64); err == nil && v > 0 {
		s.QueueWait = time.Duration(v * float64(time.Second))
	}
	if resp.StatusCode != http.StatusOK {
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			s.RetryAfter = time.Duration(secs) * time.Second
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		s.Latency = time.Since(t0)
		return s
	}
	var last []byte
	if stream {
		br := bufio.NewReaderSize(resp.Body, 32<<10)
		// A stream already answered 200 can still fail: llmlabd sends an
		// error event, after a comment with the status the failure would
		// have had (a refusal after queue updates), and an engine that
		// fails midway ends with one too.
		status := 0
		for {
			line, err := br.ReadSlice('\n')
			if v, ok := bytes.CutPrefix(line, []byte(": llmlab status ")); ok {
				status, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
			}
			if bytes.HasPrefix(line, []byte("data: ")) {
				data := bytes.TrimSpace(line[6:])
				if bytes.HasPrefix(data, []byte(`{"error"`)) {
					if status > 0 {
						s.Status = status
					} else {
						s.Error = "error event"
					}
				} else if s.TTFT == 0 {
					s.TTFT = time.Since(t0)
				}
				if !bytes.Equal(data, []byte("[DONE]")) {
					last = append(last[:0], data...)
				}
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				if err != io.EOF {
					s.Error = errText(err)
				}
				break
			}
		}
	} else {
		last, err = io.ReadAll(resp.Body)
		if err != nil {
			s.Error = errText(err)
		}
		s.TTFT = time.Since(t0)
	}
	s.Latency = time.Since(t0)
	var u struct {
		Usage *struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	if json.Unmarshal(last, &u) == nil && u.Usage != nil {
		s.PromptTokens, s.OutputTokens = u.Usage.PromptTokens, u.Usage.CompletionTokens
	}
	return s
}

func errText(err error) string {
	switch {
	case err == nil:
		return ""
	case strings.Contains(err.Error(), "deadline exceeded"):
		return "timeout"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	case strings.Contains(err.Error(), "connection reset"):
		return "connection reset"
	}
	return err.Error()
}
