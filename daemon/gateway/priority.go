package gateway

// The engine's own priority: with engine.scheduling_policy = "priority"
// the engine (vLLM's --scheduling-policy priority) orders its waiting
// requests by the body's "priority", lower first, then by arrival, and
// when its KV cache runs out preempts the running request with the
// largest (priority, arrival) (vllm/v1/core/sched/request_queue.py,
// PriorityRequestQueue; vllm/v1/core/sched/scheduler.py, schedule). The
// gateway sends each request's class there, so that batch work yields
// inside the engine as it does in llmlab's queue.

import (
	"bytes"
	"encoding/json"
	"strconv"

	"github.com/llmlab/llmlab/daemon/queue"
)

// EnginePriorityHeader is vLLM's request header for the priority, which
// wins over the body's field (vllm/entrypoints/generate/base/serving.py,
// PRIORITY_HEADER; vLLM PR #51089). The gateway never forwards a client's.
const EnginePriorityHeader = "X-Vllm-Priority"

// enginePriority is the "priority" a request of class carries into an
// engine that schedules by priority: interactive 0, which is vLLM's
// default (completion/protocol.py, chat_completion/protocol.py), so
// interactive work is level with requests that reach the engine by
// another path, and batch 1, behind both.
func enginePriority(c queue.Class) int {
	if c == queue.Batch {
		return 1
	}
	return 0
}

// setPriority makes the body carry the engine's priority for class when
// the engine schedules by priority (on), and no priority otherwise: the
// class, not the client, decides where a request waits in the engine (a
// client's own "priority" would let a batch key's work overtake
// interactive work there; vLLM V1's first-come-first-served queue ignores
// the field, and its V0 engine refused a nonzero one). A client's copies
// are replaced (or removed) through setField, as Python's decoder reads
// them; a body without one gets the member at its front, without a decode.
func (p *parsed) setPriority(class queue.Class, on bool) *invalid {
	var value json.RawMessage
	if on {
		value = json.RawMessage(strconv.Itoa(enginePriority(class)))
	}
	switch {
	case p.ClientPriority:
		body, inv := setField(p.Body, "priority", value)
		if inv != nil {
			return inv
		}
		p.Body = body
	case on:
		p.Body = prependMember(p.Body, "priority", value)
	default:
		return nil
	}
	if p.Fields != nil {
		// The coalescing key and the merged request follow the body.
		if value == nil {
			delete(p.Fields, "priority")
		} else {
			p.Fields["priority"] = value
		}
		key, _ := json.Marshal(p.Fields)
		p.CoalesceKey = string(key)
	}
	return nil
}

// prependMember returns the JSON object body with "name":value as its
// first member. The body must not already have one: a later copy would
// win in the engine's decoder.
func prependMember(body []byte, name string, value json.RawMessage) []byte {
	i := bytes.IndexByte(body, '{')
	rest := bytes.TrimLeft(body[i+1:], " \t\r\n")
	out := make([]byte, 0, len(body)+len(name)+len(value)+4)
	out = append(out, '{', '"')
	out = append(out, name...)
	out = append(out, '"', ':')
	out = append(out, value...)
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}
