package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/valyala/fastjson"
)

// rewrite points the outbound request at the engine with the validated
// body. Hop-by-hop headers were already removed by httputil.ReverseProxy.
func (g *Gateway) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey{}).(*reqState)
	pr.SetURL(g.settings.Load().cfg.EngineURL)
	if st.forwarded {
		// The client a trusted proxy named, then the proxy (appended by
		// SetXForwarded); not the addresses left of the client, which it
		// may have made up.
		pr.Out.Header.Set("X-Forwarded-For", st.remote)
	}
	pr.SetXForwarded()
	pr.Out.Body = io.NopCloser(bytes.NewReader(st.body))
	pr.Out.ContentLength = int64(len(st.body))
	pr.Out.Header.Set("Content-Length", strconv.Itoa(len(st.body)))
	pr.Out.Header.Set("X-Request-Id", st.id)
	// The client's API key is the gateway's business, not the engine's;
	// so is the engine's priority, which vLLM reads from this header
	// before the body (priority.go).
	pr.Out.Header.Del("Authorization")
	pr.Out.Header.Del(EnginePriorityHeader)
	pr.Out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(st.body)), nil }
}

// modifyResponse taps the engine's answer for time to first byte and usage.
func (g *Gateway) modifyResponse(resp *http.Response) error {
	st := resp.Request.Context().Value(stateKey{}).(*reqState)
	sse := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	resp.Body = &tap{rc: resp.Body, st: st, sse: sse, ctx: resp.Request.Context(), ok: resp.StatusCode == http.StatusOK}
	return nil
}

// proxyError answers a request whose engine exchange failed.
func (g *Gateway) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	st := r.Context().Value(stateKey{}).(*reqState)
	switch {
	case r.Context().Err() != nil:
		st.outcome, st.status = "cancelled", 499
	case errors.Is(err, os.ErrDeadlineExceeded):
		g.fail(w, st, failure{status: http.StatusGatewayTimeout, kind: typeServer, code: "engine_timeout",
			msg: "The engine sent nothing for " + g.settings.Load().cfg.ResponseTimeout.String() + " (engine.response_timeout).", outcome: "engine_error"})
		g.log.Warn("engine timed out", "request_id", st.id, "err", err)
	case errors.Is(err, syscall.ECONNREFUSED):
		g.fail(w, st, failure{status: http.StatusServiceUnavailable, kind: typeUnavailable, code: "engine_unavailable",
			msg: "The engine is not accepting connections; retry shortly.", retryAfter: 1, outcome: "engine_unavailable"})
		g.log.Warn("engine unavailable", "request_id", st.id, "err", err)
	default:
		g.fail(w, st, failure{status: http.StatusBadGateway, kind: typeServer, code: "engine_error",
			msg: "The engine failed to answer the request.", outcome: "engine_error"})
		g.log.Warn("engine error", "request_id", st.id, "err", err)
	}
}

// copyBuffers recycles the proxy's copy buffers: without a pool,
// httputil.ReverseProxy allocates 32 KiB per request, which dominated the
// gateway's allocations.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

type bufferPool struct{}

func (bufferPool) Get() []byte  { return *copyBuffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

// tailSize is how much of an answer's end is kept to find its usage.
const tailSize = 4096

// tap passes the engine's answer through, noting when the first byte came
// and keeping the end of the answer, where usage is reported.
type tap struct {
	rc   io.ReadCloser
	st   *reqState
	tail []byte
	sse  bool
	ctx  context.Context
	// pending is an error event still to be delivered.
	pending []byte
	// ok says the engine answered 200; eof that the answer was read to
	// its end; firstByte when its first byte came.
	ok, eof   bool
	firstByte time.Time
}

// dataEvent starts an SSE event that carries a chunk of the answer.
var dataEvent = []byte("data: {")

// sseError ends a stream whose engine failed midway: clients read an
// OpenAI-shaped error event instead of a cut connection.
const sseError = `data: {"error":{"message":"The engine failed while streaming the answer.","type":"server_error","param":null,"code":"engine_error"}}` + "\n\n"

func (t *tap) Read(p []byte) (int, error) {
	if t.pending != nil {
		n := copy(p, t.pending)
		t.pending = t.pending[n:]
		if len(t.pending) == 0 {
			return n, io.EOF
		}
		return n, nil
	}
	n, err := t.rc.Read(p)
	if err != nil && err != io.EOF && t.sse && t.ctx.Err() == nil {
		// The engine went away mid-stream (not the client): finish the
		// stream with an error event.
		t.st.outcome = "engine_error"
		t.pending = []byte(sseError)
		if n == 0 {
			return t.Read(p)
		}
		err = nil
	}
	if err == io.EOF {
		t.eof = true
	}
	if n > 0 {
		if t.st.ttft == 0 {
			t.firstByte = time.Now()
			t.st.ttft = t.firstByte.Sub(t.st.start)
		}
		if t.sse && t.st.ticket != nil {
			// Each event carries a token or a few: the running request's
			// progress, from which admission predicts when it ends.
			if k := bytes.Count(p[:n], dataEvent); k > 0 {
				t.st.ticket.Progress(k)
			}
		}
		t.tail = append(t.tail, p[:n]...)
		if len(t.tail) > 2*tailSize {
			t.tail = append(t.tail[:0], t.tail[len(t.tail)-tailSize:]...)
		}
	}
	return n, err
}

func (t *tap) Close() error {
	if u, ok := findUsage(t.tail); ok {
		t.st.prompt, t.st.complete = u.PromptTokens, u.CompletionTokens
	}
	if t.ok && t.eof && t.st.outcome == "" && t.st.ticket != nil {
		// Answered in full: what it took teaches the engine model.
		r := queue.Report{PromptTokens: t.st.prompt, OutputTokens: t.st.complete}
		if t.sse {
			r.FirstByte = t.firstByte
		}
		t.st.ticket.Complete(r)
	}
	return t.rc.Close()
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

// usageScanners read the usage object at the end of an answer: a Scanner
// parses the first JSON value of its input and leaves the rest.
var usageScanners = sync.Pool{New: func() any { return new(fastjson.Scanner) }}

// findUsage returns the last usage object in b, a JSON answer or the end
// of an event stream.
func findUsage(b []byte) (usage, bool) {
	i := bytes.LastIndex(b, []byte(`"usage":`))
	if i < 0 {
		return usage{}, false
	}
	sc := usageScanners.Get().(*fastjson.Scanner)
	defer usageScanners.Put(sc)
	sc.InitBytes(b[i+len(`"usage":`):])
	if !sc.Next() || sc.Value().Type() != fastjson.TypeObject {
		return usage{}, false
	}
	v := sc.Value()
	return usage{
		PromptTokens:     v.GetInt("prompt_tokens"),
		CompletionTokens: v.GetInt("completion_tokens"),
		TotalTokens:      v.GetInt("total_tokens"),
	}, true
}

// writeModels answers GET /v1/models from the configured model names, as
// vLLM does, without waking the engine.
func writeModels(w http.ResponseWriter, models []string) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list"}
	for _, m := range models {
		list.Data = append(list.Data, model{ID: m, Object: "model", OwnedBy: "llmlab"})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}
