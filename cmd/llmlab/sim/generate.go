package sim

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
)

// generation is one request's sequences on their way back to the client.
type generation struct {
	s       *Server
	chat    bool
	req     *genRequest
	prompts []prompt
	n       int
	seqs    []*seq
	notify  chan struct{}
	id      string
	model   []byte
	created int64
}

func (g *generation) cancel() {
	for _, s := range g.seqs {
		if !s.done.Load() {
			g.s.engine.Cancel(s)
		}
	}
}

func (g *generation) usage() (prompt, completion int) {
	for _, p := range g.prompts {
		prompt += p.tokens
	}
	for _, s := range g.seqs {
		completion += int(s.generated.Load())
	}
	return prompt, completion
}

func appendUsage(b []byte, prompt, completion int) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(prompt), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(prompt+completion), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(completion), 10)
	return append(b, `,"prompt_tokens_details":null}`...)
}

func (g *generation) header(b []byte, object string) []byte {
	b = append(b, `{"id":"`...)
	b = append(b, g.id...)
	b = append(b, `","object":"`...)
	b = append(b, object...)
	b = append(b, `","created":`...)
	b = strconv.AppendInt(b, g.created, 10)
	b = append(b, `,"model":`...)
	return append(b, g.model...)
}

// text appends tokens [from, to) of the deterministic output.
func appendText(b []byte, from, to int) []byte {
	for i := from; i < to; i++ {
		b = append(b, outputWords[i%len(outputWords)]...)
	}
	return b
}

// wait answers a non-streamed request once every sequence is done.
func (g *generation) wait(w http.ResponseWriter, ctx context.Context) {
	for _, s := range g.seqs {
		for !s.done.Load() {
			select {
			case <-g.notify:
			case <-ctx.Done():
				g.cancel()
				return
			}
		}
	}
	object := "text_completion"
	if g.chat {
		object = "chat.completion"
	}
	b := g.header(make([]byte, 0, 4096), object)
	b = append(b, `,"choices":[`...)
	for i, s := range g.seqs {
		if i > 0 {
			b = append(b, ',')
		}
		gen := int(s.generated.Load())
		b = append(b, `{"index":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		if g.chat {
			b = append(b, `,"message":{"role":"assistant","content":"`...)
			b = appendText(b, 0, gen)
			b = append(b, `","tool_calls":[]}`...)
		} else {
			b = append(b, `,"text":"`...)
			b = appendText(b, 0, gen)
			b = append(b, '"')
		}
		b = append(b, `,"logprobs":null,"finish_reason":"`...)
		b = append(b, g.finishReason(s)...)
		b = append(b, `","stop_reason":null`...)
		if !g.chat {
			b = append(b, `,"prompt_logprobs":null`...)
		}
		if g.req.ReturnTokenIDs {
			pids, _ := json.Marshal(g.prompts[i/g.n].ids)
			b = append(b, `,"prompt_token_ids":`...)
			b = append(b, pids...)
			b = append(b, `,"token_ids":[`...)
			for t := 0; t < gen; t++ {
				if t > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendInt(b, int64(1000+t%len(outputWords)), 10)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	b = append(b, `],"usage":`...)
	p, c := g.usage()
	b = appendUsage(b, p, c)
	b = append(b, "}\n"...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

func (g *generation) finishReason(s *seq) string {
	if s.aborted.Load() {
		return "abort" // vLLM's FinishReason.ABORT
	}
	if g.req.IgnoreEOS || s.byLength && int(s.generated.Load()) >= s.maxTokens {
		return "length"
	}
	return "stop"
}

// roles appends the first event of each choice, carrying its role.
func (g *generation) roles(buf []byte, object string) []byte {
	for i := range g.seqs {
		buf = append(buf, "data: "...)
		buf = g.header(buf, object)
		buf = append(buf, `,"choices":[{"index":`...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		buf = append(buf, `,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`+"\n\n"...)
	}
	return buf
}

// stream sends one event per choice per new token, as vLLM does each step.
func (g *generation) stream(w http.ResponseWriter, ctx context.Context) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	object := "text_completion"
	if g.chat {
		object = "chat.completion.chunk"
	}
	// Headers go at once (Starlette's StreamingResponse sends them before
	// the body); the first event waits for the engine's first output, as in
	// vLLM (vllm/entrypoints/openai/chat_completion/serving.py: the role
	// chunk is sent on the result generator's first iteration, which comes
	// after the prefill step), so a request queued in the engine shows no
	// byte of its answer until it runs.
	fl.Flush()
	sent := make([]int, len(g.seqs))
	finished := 0
	roleSent := !g.chat
	buf := make([]byte, 0, 4096)
	for finished < len(g.seqs) {
		buf = buf[:0]
		for i, s := range g.seqs {
			if sent[i] < 0 {
				continue
			}
			gen := int(s.generated.Load())
			done := s.done.Load()
			if !roleSent && (gen > sent[i] || done) {
				roleSent = true
				buf = g.roles(buf, object)
			}
			for t := sent[i]; t < gen; t++ {
				buf = append(buf, "data: "...)
				buf = g.header(buf, object)
				buf = append(buf, `,"choices":[{"index":`...)
				buf = strconv.AppendInt(buf, int64(i), 10)
				if g.chat {
					buf = append(buf, `,"delta":{"content":"`...)
					buf = appendText(buf, t, t+1)
					buf = append(buf, `"}`...)
				} else {
					buf = append(buf, `,"text":"`...)
					buf = appendText(buf, t, t+1)
					buf = append(buf, '"')
				}
				buf = append(buf, `,"logprobs":null,"finish_reason":`...)
				if done && t == gen-1 {
					buf = append(buf, '"')
					buf = append(buf, g.finishReason(s)...)
					buf = append(buf, '"')
				} else {
					buf = append(buf, "null"...)
				}
				if !g.chat {
					buf = append(buf, `,"stop_reason":null`...)
				}
				buf = append(buf, "}]}\n\n"...)
			}
			sent[i] = gen
			if done {
				sent[i] = -1
				finished++
			}
		}
		if len(buf) > 0 {
			if _, err := w.Write(buf); err != nil {
				g.cancel()
				return
			}
			fl.Flush()
		}
		if finished == len(g.seqs) {
			break
		}
		select {
		case <-g.notify:
		case <-ctx.Done():
			g.cancel()
			return
		}
	}
	buf = buf[:0]
	if g.s.opt.ForceIncludeUsage || g.req.StreamOptions != nil && g.req.StreamOptions.IncludeUsage {
		buf = append(buf, "data: "...)
		buf = g.header(buf, object)
		buf = append(buf, `,"choices":[],"usage":`...)
		p, c := g.usage()
		buf = appendUsage(buf, p, c)
		buf = append(buf, "}\n\n"...)
	}
	buf = append(buf, "data: [DONE]\n\n"...)
	w.Write(buf)
	fl.Flush()
}
