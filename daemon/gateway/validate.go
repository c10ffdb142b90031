package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/valyala/fastjson"
)

// Limits are the per-request caps the validator enforces.
type Limits struct {
	MaxTokens int
	MaxN      int
	MaxBestOf int
	Models    []string
}

// routes the validator knows.
const (
	routeCompletions = "completions"
	routeChat        = "chat"
)

// parsed is what the gateway needs to know about a valid request.
type parsed struct {
	Model  string
	Stream bool
	// Weight is the number of sequences the engine will run.
	Weight int
	// Body is the request to send upstream (max_tokens added if absent).
	Body []byte
	// Prompt is the single prompt of a coalescable request.
	Prompt json.RawMessage
	// Fields is the request without its prompt, for coalescing; nil when
	// the request cannot be coalesced.
	Fields map[string]json.RawMessage
	// CoalesceKey groups requests with identical parameters.
	CoalesceKey string
}

// invalid is a validation failure as the client sees it.
type invalid struct {
	Status int
	Code   string
	Param  string
	Msg    string
}

func (e *invalid) Error() string { return e.Msg }

func bad(param, format string, args ...any) *invalid {
	return &invalid{Status: http.StatusBadRequest, Code: "invalid_value", Param: param, Msg: fmt.Sprintf(format, args...)}
}

// parsers parse request bodies. fastjson parses into reused memory, where
// encoding/json allocated for every field and scanned the body twice;
// the validator was a tenth of the gateway's CPU (docs/benchmarks.md).
var parsers fastjson.ParserPool

// fields are the members the validator reads; the rest pass through. A
// member given twice counts with its last value, as the engine's JSON
// decoder (Python's) takes it; null counts as absent.
type fields struct {
	model, prompt, messages, maxTokens, maxCompletionTokens, n, bestOf, stream *fastjson.Value
}

func (f *fields) set(key []byte, v *fastjson.Value) {
	if v.Type() == fastjson.TypeNull {
		v = nil
	}
	switch string(key) {
	case "model":
		f.model = v
	case "prompt":
		f.prompt = v
	case "messages":
		f.messages = v
	case "max_tokens":
		f.maxTokens = v
	case "max_completion_tokens":
		f.maxCompletionTokens = v
	case "n":
		f.n = v
	case "best_of":
		f.bestOf = v
	case "stream":
		f.stream = v
	}
}

// validate checks body for route against lim. coalesce asks it to
// prepare a non-streamed single-prompt completion for coalescing.
func validate(route string, body []byte, lim Limits, coalesce bool) (*parsed, *invalid) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, &invalid{Status: http.StatusBadRequest, Code: "invalid_json", Msg: "the request body must be a JSON object"}
	}
	ps := parsers.Get()
	defer parsers.Put(ps)
	// Parse limits the nesting depth; Validate then holds the body to the
	// JSON grammar, which Parse alone reads leniently (NaN, bad escapes).
	v, err := ps.ParseBytes(trimmed)
	if err == nil {
		err = fastjson.ValidateBytes(trimmed)
	}
	if err != nil {
		return nil, &invalid{Status: http.StatusBadRequest, Code: "invalid_json", Msg: "the request body is not valid JSON: " + err.Error()}
	}
	var f fields
	v.GetObject().Visit(f.set)

	p := &parsed{Body: body}
	if f.model != nil {
		b, err := f.model.StringBytes()
		if err != nil {
			return nil, wrongType("model", f.model, "a string")
		}
		p.Model = string(b)
		if !slices.Contains(lim.Models, p.Model) {
			return nil, &invalid{Status: http.StatusNotFound, Code: "model_not_found", Param: "model",
				Msg: fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", p.Model)}
		}
	}
	if f.stream != nil {
		if p.Stream, err = f.stream.Bool(); err != nil {
			return nil, wrongType("stream", f.stream, "a boolean")
		}
	}
	prompts := 1
	switch route {
	case routeCompletions:
		if f.messages != nil {
			return nil, bad("messages", "/v1/completions takes a prompt, not messages; use /v1/chat/completions")
		}
		n, inv := countPrompts(f.prompt)
		if inv != nil {
			return nil, inv
		}
		prompts = n
	case routeChat:
		if inv := checkMessages(f.messages); inv != nil {
			return nil, inv
		}
	}

	n, bestOf := 1, 0
	if f.n != nil {
		var inv *invalid
		if n, inv = intField("n", f.n); inv != nil {
			return nil, inv
		}
		if n < 1 || n > lim.MaxN {
			return nil, bad("n", "n must be between 1 and %d, got %d", lim.MaxN, n)
		}
	}
	if f.bestOf != nil {
		var inv *invalid
		if bestOf, inv = intField("best_of", f.bestOf); inv != nil {
			return nil, inv
		}
		if bestOf < n || bestOf > lim.MaxBestOf {
			return nil, bad("best_of", "best_of must be between n (%d) and %d, got %d", n, lim.MaxBestOf, bestOf)
		}
	}
	p.Weight = prompts * max(n, bestOf)

	maxTok, param := f.maxTokens, "max_tokens"
	if f.maxCompletionTokens != nil {
		maxTok, param = f.maxCompletionTokens, "max_completion_tokens"
	}
	if maxTok != nil {
		m, inv := intField(param, maxTok)
		if inv != nil {
			return nil, inv
		}
		if m < 1 || m > lim.MaxTokens {
			return nil, bad(param, "%s must be between 1 and %d, got %d", param, lim.MaxTokens, m)
		}
	} else {
		// Without a cap the engine would generate up to the context length;
		// make the configured cap explicit.
		p.Body = injectField(trimmed, "max_tokens", strconv.Itoa(lim.MaxTokens))
	}

	if coalesce && route == routeCompletions && !p.Stream && prompts == 1 && n == 1 && bestOf <= 1 {
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(p.Body, &fields); err == nil {
			p.Prompt = fields["prompt"]
			delete(fields, "prompt")
			key, _ := json.Marshal(fields) // map keys marshal sorted: a canonical key
			p.Fields = fields
			p.CoalesceKey = string(key)
		}
	}
	return p, nil
}

// wrongType is the error for a member of the wrong JSON type.
func wrongType(param string, v *fastjson.Value, want string) *invalid {
	got := v.Type().String()
	if v.Type() == fastjson.TypeTrue || v.Type() == fastjson.TypeFalse {
		got = "boolean"
	}
	return bad(param, "%q has the wrong type: got a JSON %s, want %s", param, got, want)
}

// intField reads an integer member.
func intField(param string, v *fastjson.Value) (int, *invalid) {
	if v.Type() != fastjson.TypeNumber {
		return 0, wrongType(param, v, "a number")
	}
	n, err := v.Int()
	if err != nil {
		return 0, bad(param, "%s must be an integer, got %s", param, v)
	}
	return n, nil
}

// injectField adds "name":value as the first member of the JSON object obj.
func injectField(obj []byte, name, value string) []byte {
	out := make([]byte, 0, len(obj)+len(name)+len(value)+4)
	out = append(out, '{')
	out = strconv.AppendQuote(out, name)
	out = append(out, ':')
	out = append(out, value...)
	rest := bytes.TrimSpace(obj[1:])
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

// countPrompts checks a completions prompt: a string, a list of strings, a
// list of token ids, or a list of token-id lists. It returns how many
// prompts the engine will run.
func countPrompts(v *fastjson.Value) (int, *invalid) {
	const kinds = "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists"
	if v == nil {
		return 0, bad("prompt", "prompt is required")
	}
	switch v.Type() {
	case fastjson.TypeString:
		if len(v.GetStringBytes()) == 0 {
			return 0, bad("prompt", "prompt must not be empty")
		}
		return 1, nil
	case fastjson.TypeArray:
	default:
		return 0, bad("prompt", kinds)
	}
	list := v.GetArray()
	if len(list) == 0 {
		return 0, bad("prompt", "prompt must not be an empty list")
	}
	switch list[0].Type() {
	case fastjson.TypeNumber: // token ids: one prompt
		for _, e := range list {
			if !isInt(e) {
				return 0, bad("prompt", kinds)
			}
		}
		return 1, nil
	case fastjson.TypeString:
		for i, e := range list {
			if e.Type() != fastjson.TypeString {
				return 0, bad("prompt", kinds)
			}
			if len(e.GetStringBytes()) == 0 {
				return 0, bad("prompt", "prompt[%d] must not be empty", i)
			}
		}
		return len(list), nil
	case fastjson.TypeArray:
		for i, e := range list {
			if e.Type() != fastjson.TypeArray {
				return 0, bad("prompt", kinds)
			}
			ids := e.GetArray()
			for _, id := range ids {
				if !isInt(id) {
					return 0, bad("prompt", kinds)
				}
			}
			if len(ids) == 0 {
				return 0, bad("prompt", "prompt[%d] must not be empty", i)
			}
		}
		return len(list), nil
	}
	return 0, bad("prompt", kinds)
}

func isInt(v *fastjson.Value) bool {
	_, err := v.Int()
	return err == nil
}

// checkMessages checks that chat messages are a non-empty list of objects
// that each name a role.
func checkMessages(v *fastjson.Value) *invalid {
	if v == nil {
		return bad("messages", "messages is required")
	}
	if v.Type() != fastjson.TypeArray {
		return wrongType("messages", v, "an array")
	}
	msgs := v.GetArray()
	if len(msgs) == 0 {
		return bad("messages", "messages must not be empty")
	}
	for i, m := range msgs {
		if m.Type() != fastjson.TypeObject {
			return wrongType(fmt.Sprintf("messages[%d]", i), m, "an object")
		}
		role := m.Get("role")
		if role == nil || role.Type() == fastjson.TypeNull {
			return bad(fmt.Sprintf("messages[%d].role", i), "messages[%d] has no role", i)
		}
		if role.Type() != fastjson.TypeString {
			return wrongType(fmt.Sprintf("messages[%d].role", i), role, "a string")
		}
		if len(role.GetStringBytes()) == 0 {
			return bad(fmt.Sprintf("messages[%d].role", i), "messages[%d] has no role", i)
		}
	}
	return nil
}
