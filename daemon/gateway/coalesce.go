package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/llmlab/llmlab/daemon/queue"
)

// coalescer merges the non-streamed completions that one dispatch released
// with identical parameters into a single upstream request with a list of
// prompts, and splits the answer back.
//
// The trade: the engine sees one request instead of many, but a client that
// leaves cannot cancel its own share. Its share is computed anyway and
// discarded; the upstream request is cancelled only when every member has
// left. Each member's usage is its own prompt's tokens and its own choice's
// completion tokens, read from the token ids the engine returns when asked
// with return_token_ids (vLLM 0.10.2 and later, and llmlab's simulator).
type coalescer struct {
	g     *Gateway
	mu    sync.Mutex
	calls map[*queue.Group]*call
}

func newCoalescer(g *Gateway) *coalescer {
	return &coalescer{g: g, calls: map[*queue.Group]*call{}}
}

// call is one upstream request made for a group.
type call struct {
	group   *queue.Group
	fields  map[string]json.RawMessage
	prompts []json.RawMessage
	ids     []string
	joined  int
	left    int
	cancel  context.CancelFunc
	ctx     context.Context
	done    chan struct{}
	results []memberResult
}

// memberResult is one member's share of the answer.
type memberResult struct {
	status  int
	body    []byte
	errMsg  string
	outcome string
	usage   usage
}

// serve runs st's part of its ticket's group. It owns the ticket: the
// slots are released when the upstream request ends, since the engine works
// on every share until then.
func (c *coalescer) serve(ctx context.Context, w http.ResponseWriter, st *reqState, t *queue.Ticket, p *parsed) {
	grp := t.Group()
	idx := grp.Index(t)
	c.mu.Lock()
	cl := c.calls[grp]
	if cl == nil {
		cctx, cancel := context.WithCancel(context.Background())
		cl = &call{group: grp, fields: p.Fields, prompts: make([]json.RawMessage, len(grp.Members)),
			ids: make([]string, len(grp.Members)), ctx: cctx, cancel: cancel, done: make(chan struct{})}
		c.calls[grp] = cl
	}
	cl.prompts[idx] = p.Prompt
	cl.ids[idx] = st.id
	cl.joined++
	if cl.joined == len(grp.Members) {
		delete(c.calls, grp)
		go c.run(cl)
	}
	c.mu.Unlock()

	select {
	case <-cl.done:
	case <-ctx.Done():
		c.mu.Lock()
		cl.left++
		if cl.left == len(grp.Members) {
			cl.cancel()
		}
		c.mu.Unlock()
		st.outcome, st.status = "cancelled", 499
		return
	}
	r := cl.results[idx]
	st.prompt, st.complete = r.usage.PromptTokens, r.usage.CompletionTokens
	if r.errMsg != "" {
		f := failure{status: r.status, kind: typeServer, code: "engine_error", msg: r.errMsg, outcome: r.outcome}
		if r.status == http.StatusServiceUnavailable {
			f.code, f.retryAfter = "engine_unavailable", 1
		}
		c.g.fail(w, st, f)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(r.body)))
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

// run sends the group's upstream request and splits its answer.
func (c *coalescer) run(cl *call) {
	n := len(cl.prompts)
	defer close(cl.done)
	defer cl.cancel()
	defer func() {
		for i, t := range cl.group.Members {
			if i < len(cl.results) && cl.results[i].errMsg == "" && cl.results[i].status == http.StatusOK {
				r := cl.results[i]
				t.Complete(queue.Report{PromptTokens: r.usage.PromptTokens, OutputTokens: r.usage.CompletionTokens})
			}
			t.Release()
		}
	}()
	cl.results = make([]memberResult, n)
	fail := func(status int, outcome, msg string) {
		for i := range cl.results {
			cl.results[i] = memberResult{status: status, errMsg: msg, outcome: outcome}
		}
	}

	fields := make(map[string]json.RawMessage, len(cl.fields)+2)
	for k, v := range cl.fields {
		fields[k] = v
	}
	_, clientAskedIDs := cl.fields["return_token_ids"]
	prompts, _ := json.Marshal(cl.prompts)
	fields["prompt"] = prompts
	fields["return_token_ids"] = json.RawMessage("true")
	body, _ := json.Marshal(fields)

	s := c.g.settings.Load()
	u := s.cfg.EngineURL.JoinPath("/v1/completions")
	req, err := http.NewRequestWithContext(cl.ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		fail(http.StatusBadGateway, "engine_error", "The engine failed to answer the request.")
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", cl.ids[0]+"+"+strconv.Itoa(n-1))
	c.g.metrics.upstream.WithLabelValues("coalesced").Inc()
	start := time.Now()
	resp, err := c.g.transport.RoundTrip(req)
	if err != nil {
		c.g.log.Warn("engine error", "request_id", cl.ids[0], "coalesced", n, "err", err)
		fail(http.StatusBadGateway, "engine_error", "The engine failed to answer the request.")
		return
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		fail(http.StatusBadGateway, "engine_error", "The engine failed to answer the request.")
		return
	}
	if resp.StatusCode != http.StatusOK {
		// The engine refused the merged request: every member gets its answer.
		for i := range cl.results {
			cl.results[i] = memberResult{status: resp.StatusCode, body: data}
		}
		return
	}
	parts, err := splitCompletion(data, n, clientAskedIDs)
	if err != nil {
		c.g.log.Warn("cannot split coalesced answer", "request_id", cl.ids[0], "err", err)
		fail(http.StatusBadGateway, "engine_error", "The engine's answer could not be split between requests.")
		return
	}
	c.g.log.Debug("coalesced request", "request_id", cl.ids[0], "members", n, "duration", time.Since(start))
	for i, part := range parts {
		cl.results[i] = memberResult{status: http.StatusOK, body: part.body, usage: part.usage}
	}
}

type share struct {
	body  []byte
	usage usage
}

// splitCompletion splits a completions answer for n prompts (n=1 each)
// into n answers, each with its own choice (index 0) and usage. keepIDs
// keeps the token id fields the gateway asked for.
func splitCompletion(data []byte, n int, keepIDs bool) ([]share, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("decoding answer: %w", err)
	}
	var choices []map[string]json.RawMessage
	if err := json.Unmarshal(top["choices"], &choices); err != nil {
		return nil, fmt.Errorf("decoding choices: %w", err)
	}
	if len(choices) != n {
		return nil, fmt.Errorf("answer has %d choices for %d prompts", len(choices), n)
	}
	var total usage
	_ = json.Unmarshal(top["usage"], &total)
	var id string
	_ = json.Unmarshal(top["id"], &id)
	out := make([]share, n)
	for _, ch := range choices {
		var idx int
		if err := json.Unmarshal(ch["index"], &idx); err != nil || idx < 0 || idx >= n || out[idx].body != nil {
			return nil, fmt.Errorf("choice index %s is out of range or repeated", ch["index"])
		}
		var promptIDs, tokenIDs []json.RawMessage
		var u usage
		if json.Unmarshal(ch["prompt_token_ids"], &promptIDs) == nil && json.Unmarshal(ch["token_ids"], &tokenIDs) == nil && ch["prompt_token_ids"] != nil {
			u = usage{PromptTokens: len(promptIDs), CompletionTokens: len(tokenIDs)}
		} else {
			// An engine without return_token_ids: share the totals evenly.
			u = usage{PromptTokens: total.PromptTokens / n, CompletionTokens: total.CompletionTokens / n}
		}
		u.TotalTokens = u.PromptTokens + u.CompletionTokens
		if !keepIDs {
			delete(ch, "prompt_token_ids")
			delete(ch, "token_ids")
		}
		ch["index"] = json.RawMessage("0")
		one := make(map[string]json.RawMessage, len(top))
		for k, v := range top {
			one[k] = v
		}
		if id != "" {
			one["id"], _ = json.Marshal(id + "-" + strconv.Itoa(idx))
		}
		one["choices"], _ = json.Marshal([]map[string]json.RawMessage{ch})
		one["usage"], _ = json.Marshal(u)
		body, err := json.Marshal(one)
		if err != nil {
			return nil, err
		}
		out[idx] = share{body: body, usage: u}
	}
	return out, nil
}
