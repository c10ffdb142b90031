// Package smoke is llmlab smoke: the check an operator runs right after
// installing. One streamed chat completion goes through the API socket,
// waiting through a cold start if there is one; each step is timed (the
// socket to the daemon, the engine's start and readiness, the first
// token, the end) and the answer's shape and token usage are checked.
// When a step fails, it says why in one line an operator can act on.
package smoke

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/llmlab/llmlab/daemon/server"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

// Engine reads the engine's side after a failure: its unit's state and
// the last lines of its journal. Nil where there is no systemd.
type Engine interface {
	// Journal returns the engine unit's last lines.
	Journal(ctx context.Context, unit string, lines int) ([]string, error)
}

// Options say what to check.
type Options struct {
	// API is the base URL of llmlabd's API (the socket's address).
	API string
	// Status is llmlabd's /status on its metrics listener ("": not read).
	Status string
	// Model is the model to ask for; MaxTokens how many tokens.
	Model     string
	MaxTokens int
	// Key is an API key ("": none).
	Key string
	// Timeout bounds the whole check, cold start included.
	Timeout time.Duration
	// EngineUnit names the engine's systemd unit ("": not managed by a
	// unit); Engine reads its journal.
	EngineUnit string
	Engine     Engine
}

// Step is one timed step.
type Step struct {
	Name    string        `json:"name"`
	Took    time.Duration `json:"took_ns"`
	Skipped string        `json:"skipped,omitempty"` // why it did not happen (a warm engine has no start)
}

// Result is what the check found.
type Result struct {
	OK    bool   `json:"ok"`
	Steps []Step `json:"steps"`
	// Reason is the failure in one line; Details are lines that back it
	// (the engine's journal).
	Reason  string   `json:"reason,omitempty"`
	Details []string `json:"details,omitempty"`
	// Text is the answer; PromptTokens and CompletionTokens its usage.
	Text             string `json:"text,omitempty"`
	PromptTokens     int    `json:"prompt_tokens,omitempty"`
	CompletionTokens int    `json:"completion_tokens,omitempty"`
}

// Run performs the check.
func Run(ctx context.Context, o Options) Result {
	if o.MaxTokens <= 0 {
		o.MaxTokens = 16
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var r Result
	client := &http.Client{}

	// 1. The socket to the daemon: /healthz answers once llmlabd runs (a
	// connection to the socket starts it if it had exited on idle).
	t0 := time.Now()
	resp, err := get(ctx, client, o.API+"/healthz")
	if err != nil {
		r.Reason = connectReason(o.API, err)
		return r
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		r.Reason = fmt.Sprintf("llmlabd answers /healthz with %s", resp.Status)
		return r
	}
	r.Steps = append(r.Steps, Step{Name: "socket to daemon", Took: time.Since(t0)})

	// 2. The request, streamed.
	before := lifecycle(ctx, client, o.Status)
	t1 := time.Now()
	body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":"Say hello."}],"max_tokens":%d,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}`,
		o.Model, o.MaxTokens)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, o.API+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if o.Key != "" {
		req.Header.Set("Authorization", "Bearer "+o.Key)
	}
	resp, err = client.Do(req)
	if err != nil {
		r.Reason = "the completion failed: " + err.Error()
		return r
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		r.Reason, r.Details = refusedReason(ctx, resp, o)
		return r
	}
	first, err := readStream(resp.Body, t1, &r)
	done := time.Since(t1)
	after := lifecycle(ctx, client, o.Status)
	r.Steps = append(r.Steps, startSteps(t1, before, after)...)
	if first > 0 {
		r.Steps = append(r.Steps, Step{Name: "first token", Took: first})
	}
	if err != nil {
		r.Reason = "the answer is malformed: " + err.Error()
		return r
	}
	r.Steps = append(r.Steps, Step{Name: "done", Took: done})
	switch {
	case r.Text == "":
		r.Reason = "the answer has no text"
	case r.PromptTokens <= 0 || r.CompletionTokens <= 0:
		r.Reason = fmt.Sprintf("the answer's usage is missing or empty (prompt %d, completion %d tokens)", r.PromptTokens, r.CompletionTokens)
	case r.CompletionTokens > o.MaxTokens:
		r.Reason = fmt.Sprintf("the answer has %d tokens, more than the %d asked for", r.CompletionTokens, o.MaxTokens)
	default:
		r.OK = true
	}
	return r
}

func get(ctx context.Context, c *http.Client, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	return c.Do(req)
}

// connectReason explains a failure to reach the API.
func connectReason(api string, err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("nothing listens at %s: the socket is not listening (systemctl start llmlab.socket; systemctl status llmlab.socket)", api)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("%s accepted the connection but llmlabd did not answer in time (journalctl -u llmlab)", api)
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return fmt.Sprintf("cannot reach %s: %v", api, err)
	}
	return "cannot reach " + api + ": " + err.Error()
}

// refusedReason explains a non-200 answer, with the engine's journal when
// the engine is the cause.
func refusedReason(ctx context.Context, resp *http.Response, o Options) (string, []string) {
	var e struct {
		Error struct {
			Message string `json:"message"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	_ = json.Unmarshal(data, &e)
	reason := fmt.Sprintf("the completion got %s (%s): %s", resp.Status, e.Error.Code, e.Error.Message)
	switch e.Error.Code {
	case "invalid_api_key":
		return reason + " (pass a key with --key or LLMLAB_API_KEY)", nil
	case "model_not_found":
		return reason + " (pass one of engine.models with --model)", nil
	case "engine_unavailable", "queue_timeout":
	default:
		return reason, nil
	}
	if o.Engine == nil || o.EngineUnit == "" {
		return reason, nil
	}
	lines, err := o.Engine.Journal(ctx, o.EngineUnit, 20)
	if err != nil {
		return reason, []string{"journal of " + o.EngineUnit + ": " + err.Error()}
	}
	if why := diagnose(lines); why != "" {
		reason = why + " (" + reason + ")"
	} else {
		reason = fmt.Sprintf("the engine unit %s is failing: %s", o.EngineUnit, reason)
	}
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return reason, lines
}

// diagnose recognises the engine failures an operator meets first, from
// vLLM's and Hugging Face's messages in the engine's journal.
func diagnose(lines []string) string {
	text := strings.Join(lines, "\n")
	for _, p := range []struct{ needle, why string }{
		{"vLLM's Python", "vLLM's Python cannot be run by the llmlab user (uv put it under a home directory): make the environment again with UV_PYTHON_INSTALL_DIR=/opt/uv/python (install.md, step 4)"},
		{"bad interpreter", "vLLM's Python cannot be run by the llmlab user (uv put it under a home directory?): make the environment again with UV_PYTHON_INSTALL_DIR=/opt/uv/python (install.md, step 4)"},
		{"vLLM is not installed", "vLLM is not installed where the engine unit looks: install it (install.md, step 4) or set LLMLAB_VLLM in /etc/llmlab/engine.env"},
		{"LocalEntryNotFoundError", "the model is not in the local cache and the engine may not download it: fetch it first (hf download MODEL, as the llmlab user's HF_HOME)"},
		{"We couldn't connect to 'https://huggingface.co'", "the model is not in the local cache and the engine may not download it: fetch it first (hf download MODEL, as the llmlab user's HF_HOME)"},
		{"is not a local folder and is not a valid model identifier", "the model named in engine.env is neither a local folder nor a known model id"},
		{"No available memory for the cache blocks", "the GPU has too little free memory for the KV cache (lower --max-model-len or raise --gpu-memory-utilization)"},
		{"CUDA out of memory", "the GPU ran out of memory while the engine started (another process holds it, or the settings ask too much)"},
		{"Free memory on device", "the GPU's free memory is less than --gpu-memory-utilization asks for (another process holds it)"},
		{"No CUDA GPUs are available", "the engine sees no GPU (driver, device nodes or the unit's DeviceAllow)"},
		{"command not found", "the engine's command is missing (is vllm installed where the unit looks?)"},
		{"No such file or directory", "a file the engine needs is missing: see the lines below"},
	} {
		if strings.Contains(text, p.needle) {
			return p.why
		}
	}
	return ""
}

// readStream reads an SSE answer into r; it returns how long after start
// the first content arrived (0: never).
func readStream(body io.Reader, start time.Time, r *Result) (time.Duration, error) {
	var first time.Duration
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sawDone := false
	for sc.Scan() {
		line := sc.Text()
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			sawDone = true
			break
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens     int `json:"prompt_tokens"`
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return first, fmt.Errorf("an event is not JSON: %q", data)
		}
		if chunk.Error != nil {
			return first, fmt.Errorf("the stream ended with an error: %s", chunk.Error.Message)
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content != "" && first == 0 {
				first = time.Since(start)
			}
			r.Text += c.Delta.Content
		}
		if chunk.Usage != nil {
			r.PromptTokens, r.CompletionTokens = chunk.Usage.PromptTokens, chunk.Usage.CompletionTokens
		}
	}
	if err := sc.Err(); err != nil {
		return first, err
	}
	if !sawDone {
		return first, errors.New("the stream ended without [DONE]")
	}
	return first, nil
}

// lifecycle reads the engine's lifecycle from llmlabd's /status (nil: not
// read, or an engine llmlabd does not manage).
func lifecycle(ctx context.Context, c *http.Client, url string) *supervisor.Info {
	if url == "" {
		return nil
	}
	resp, err := get(ctx, c, url)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var d server.Status
	if json.NewDecoder(resp.Body).Decode(&d) != nil {
		return nil
	}
	return d.Engine.Lifecycle
}

// startSteps reports the engine's cold start, if the request caused one:
// when it began after the request was sent, and how long it took to be
// ready.
func startSteps(sent time.Time, before, after *supervisor.Info) []Step {
	switch {
	case after == nil:
		return []Step{{Name: "engine start", Skipped: "not known (no metrics listener, or an engine llmlabd does not manage)"}}
	case before != nil && before.State == "ready":
		return []Step{{Name: "engine start", Skipped: "the engine was already ready"}}
	case after.LastStartSeconds == 0 || (before != nil && after.LastStart.Equal(before.LastStart)):
		return []Step{{Name: "engine start", Skipped: "no start was recorded"}}
	}
	return []Step{
		{Name: "engine start", Took: max(after.LastStart.Sub(sent), 0)},
		{Name: "engine ready", Took: time.Duration(after.LastStartSeconds * float64(time.Second))},
	}
}
