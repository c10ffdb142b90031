// Package fakeengine is the fake OpenAI/vLLM engine that `llmlab
// fake-engine` serves to the gateway overhead benchmark, and that the tests
// run in front of llmlabd: it answers completions and chat completions,
// streamed or not, after a configurable delay, and records what it saw
// (requests, the most it ran at once, cancellations).
//
// It is deliberately simple; the simulator (llmlab sim) models a real
// engine's scheduling.
package fakeengine

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Engine is an http.Handler. The zero value answers at once with one token.
type Engine struct {
	// Delay is how long each request takes before its first token.
	Delay time.Duration
	// TokenDelay is the pause between streamed tokens.
	TokenDelay time.Duration
	// Tokens is the number of tokens generated when max_tokens is absent.
	Tokens int
	// Hold, when set, blocks every request until it is closed.
	Hold chan struct{}

	mu        sync.Mutex
	running   int
	maxRun    int
	requests  int
	cancelled int
	bodies    [][]byte
	headers   []http.Header
	started   chan struct{}
}

// Stats is what the engine saw.
type Stats struct {
	Requests   int
	Running    int
	MaxRunning int
	Cancelled  int
}

// Stats returns what the engine saw so far.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return Stats{Requests: e.requests, Running: e.running, MaxRunning: e.maxRun, Cancelled: e.cancelled}
}

// Bodies returns the request bodies received, in order.
func (e *Engine) Bodies() [][]byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([][]byte(nil), e.bodies...)
}

// Headers returns the request headers received, in order.
func (e *Engine) Headers() []http.Header {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]http.Header(nil), e.headers...)
}

// Started returns a channel that receives a value each time a request
// starts (buffered; for tests that wait for requests to arrive).
func (e *Engine) Started() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started == nil {
		e.started = make(chan struct{}, 4096)
	}
	return e.started
}

type request struct {
	Model          string            `json:"model"`
	Prompt         json.RawMessage   `json:"prompt"`
	Messages       []json.RawMessage `json:"messages"`
	MaxTokens      *int              `json:"max_tokens"`
	N              int               `json:"n"`
	Stream         bool              `json:"stream"`
	ReturnTokenIDs bool              `json:"return_token_ids"`
	StreamOptions  struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

func (e *Engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/health":
		return
	case "/v1/models":
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"object":"list","data":[{"id":"test-model","object":"model"}]}`)
		return
	case "/v1/completions", "/v1/chat/completions":
	default:
		http.NotFound(w, r)
		return
	}
	var req request
	dec := json.NewDecoder(r.Body)
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil || json.Unmarshal(raw, &req) != nil {
		http.Error(w, `{"error":{"message":"bad json","type":"BadRequestError","code":400}}`, http.StatusBadRequest)
		return
	}
	e.mu.Lock()
	e.requests++
	e.running++
	e.maxRun = max(e.maxRun, e.running)
	e.bodies = append(e.bodies, raw)
	e.headers = append(e.headers, r.Header.Clone())
	if e.started != nil {
		select {
		case e.started <- struct{}{}:
		default:
		}
	}
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.running--
		if r.Context().Err() != nil {
			e.cancelled++
		}
		e.mu.Unlock()
	}()

	ctx := r.Context()
	if e.Hold != nil {
		select {
		case <-e.Hold:
		case <-ctx.Done():
			return
		}
	}
	if e.Delay > 0 {
		t := time.NewTimer(e.Delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	tokens := max(1, e.Tokens)
	if req.MaxTokens != nil {
		tokens = *req.MaxTokens
	}
	chat := r.URL.Path == "/v1/chat/completions"
	prompts := promptCount(req.Prompt)
	if chat {
		prompts = 1
	}
	n := max(1, req.N)
	promptTokens := 10 * prompts
	if req.Stream {
		e.stream(w, r, chat, prompts*n, tokens, req.StreamOptions.IncludeUsage, promptTokens)
		return
	}
	var choices []string
	for i := 0; i < prompts*n; i++ {
		text := strings.Repeat(" tok", tokens)
		if chat {
			choices = append(choices, fmt.Sprintf(`{"index":%d,"message":{"role":"assistant","content":%q},"finish_reason":"length"}`, i, text))
		} else if req.ReturnTokenIDs {
			choices = append(choices, fmt.Sprintf(`{"index":%d,"text":%q,"finish_reason":"length","prompt_token_ids":%s,"token_ids":%s}`, i, text, ids(10), ids(tokens)))
		} else {
			choices = append(choices, fmt.Sprintf(`{"index":%d,"text":%q,"finish_reason":"length"}`, i, text))
		}
	}
	object := "text_completion"
	if chat {
		object = "chat.completion"
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"cmpl-test","object":%q,"created":1,"model":%q,"choices":[%s],"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}`,
		object, req.Model, strings.Join(choices, ","), promptTokens, promptTokens+tokens*prompts*n, tokens*prompts*n)
}

func (e *Engine) stream(w http.ResponseWriter, r *http.Request, chat bool, seqs, tokens int, usage bool, promptTokens int) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	fl := w.(http.Flusher)
	for t := 0; t < tokens; t++ {
		for i := 0; i < seqs; i++ {
			if chat {
				fmt.Fprintf(w, "data: {\"id\":\"chat-test\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":%d,\"delta\":{\"content\":\" tok\"},\"finish_reason\":null}]}\n\n", i)
			} else {
				fmt.Fprintf(w, "data: {\"id\":\"cmpl-test\",\"object\":\"text_completion\",\"choices\":[{\"index\":%d,\"text\":\" tok\",\"finish_reason\":null}]}\n\n", i)
			}
		}
		fl.Flush()
		if e.TokenDelay > 0 {
			select {
			case <-time.After(e.TokenDelay):
			case <-r.Context().Done():
				return
			}
		}
	}
	if usage {
		fmt.Fprintf(w, "data: {\"id\":\"cmpl-test\",\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d,\"completion_tokens\":%d}}\n\n", promptTokens, promptTokens+tokens*seqs, tokens*seqs)
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

func promptCount(raw json.RawMessage) int {
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil && len(list) > 0 && list[0][0] != '-' && (list[0][0] < '0' || list[0][0] > '9') {
		return len(list)
	}
	return 1
}

func ids(n int) string {
	var b strings.Builder
	b.WriteByte('[')
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(100 + i))
	}
	b.WriteByte(']')
	return b.String()
}
