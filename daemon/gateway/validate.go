package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
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

// request holds the fields the validator reads; the rest pass through.
type request struct {
	Model               *string         `json:"model"`
	Prompt              json.RawMessage `json:"prompt"`
	Messages            *[]message      `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	N                   *int            `json:"n"`
	BestOf              *int            `json:"best_of"`
	Stream              *bool           `json:"stream"`
}

// message is the part of a chat message the validator reads.
type message struct {
	Role *string `json:"role"`
}

// validate checks body for route against lim. coalesce asks it to
// prepare a non-streamed single-prompt completion for coalescing.
func validate(route string, body []byte, lim Limits, coalesce bool) (*parsed, *invalid) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, &invalid{Status: http.StatusBadRequest, Code: "invalid_json", Msg: "the request body must be a JSON object"}
	}
	var r request
	if err := json.Unmarshal(trimmed, &r); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, bad(te.Field, "%q has the wrong type: got a JSON %s, want %s", te.Field, te.Value, jsonKind(te.Type.String()))
		}
		return nil, &invalid{Status: http.StatusBadRequest, Code: "invalid_json", Msg: "the request body is not valid JSON: " + err.Error()}
	}
	p := &parsed{Body: body}
	if r.Model != nil {
		p.Model = *r.Model
		if !slices.Contains(lim.Models, p.Model) {
			return nil, &invalid{Status: http.StatusNotFound, Code: "model_not_found", Param: "model",
				Msg: fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", p.Model)}
		}
	}
	if r.Stream != nil {
		p.Stream = *r.Stream
	}
	prompts := 1
	switch route {
	case routeCompletions:
		if r.Messages != nil {
			return nil, bad("messages", "/v1/completions takes a prompt, not messages; use /v1/chat/completions")
		}
		n, err := countPrompts(r.Prompt)
		if err != nil {
			return nil, err
		}
		prompts = n
	case routeChat:
		if err := checkMessages(r.Messages); err != nil {
			return nil, err
		}
	}

	n, bestOf := 1, 0
	if r.N != nil {
		n = *r.N
		if n < 1 || n > lim.MaxN {
			return nil, bad("n", "n must be between 1 and %d, got %d", lim.MaxN, n)
		}
	}
	if r.BestOf != nil {
		bestOf = *r.BestOf
		if bestOf < n || bestOf > lim.MaxBestOf {
			return nil, bad("best_of", "best_of must be between n (%d) and %d, got %d", n, lim.MaxBestOf, bestOf)
		}
	}
	p.Weight = prompts * max(n, bestOf)

	maxTok := r.MaxTokens
	param := "max_tokens"
	if r.MaxCompletionTokens != nil {
		maxTok, param = r.MaxCompletionTokens, "max_completion_tokens"
	}
	if maxTok != nil {
		if *maxTok < 1 || *maxTok > lim.MaxTokens {
			return nil, bad(param, "%s must be between 1 and %d, got %d", param, lim.MaxTokens, *maxTok)
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
// prompts the engine will run. raw is known to be valid JSON.
func countPrompts(raw json.RawMessage) (int, *invalid) {
	const kinds = "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists"
	if len(raw) == 0 || string(raw) == "null" {
		return 0, bad("prompt", "prompt is required")
	}
	switch raw[0] {
	case '"':
		// The common case, decided without decoding the string again.
		if string(raw) == `""` {
			return 0, bad("prompt", "prompt must not be empty")
		}
		return 1, nil
	case '[':
	default:
		return 0, bad("prompt", kinds)
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil {
		return 0, bad("prompt", kinds)
	}
	if len(list) == 0 {
		return 0, bad("prompt", "prompt must not be an empty list")
	}
	var tokens []int
	if json.Unmarshal(raw, &tokens) == nil {
		return 1, nil
	}
	var strs []string
	if json.Unmarshal(raw, &strs) == nil {
		for i, s := range strs {
			if s == "" {
				return 0, bad("prompt", "prompt[%d] must not be empty", i)
			}
		}
		return len(strs), nil
	}
	var lists [][]int
	if json.Unmarshal(raw, &lists) == nil {
		for i, l := range lists {
			if len(l) == 0 {
				return 0, bad("prompt", "prompt[%d] must not be empty", i)
			}
		}
		return len(lists), nil
	}
	return 0, bad("prompt", kinds)
}

// checkMessages checks that chat messages are a non-empty list of objects
// that each name a role.
func checkMessages(msgs *[]message) *invalid {
	if msgs == nil {
		return bad("messages", "messages is required")
	}
	if len(*msgs) == 0 {
		return bad("messages", "messages must not be empty")
	}
	for i, m := range *msgs {
		if m.Role == nil || *m.Role == "" {
			return bad(fmt.Sprintf("messages[%d].role", i), "messages[%d] has no role", i)
		}
	}
	return nil
}

// jsonKind names a Go type as the JSON the client should send.
func jsonKind(goType string) string {
	switch goType {
	case "string":
		return "a string"
	case "int", "int64", "float64":
		return "a number"
	case "bool":
		return "a boolean"
	}
	return "another type"
}
