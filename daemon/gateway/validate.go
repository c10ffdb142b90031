package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/valyala/fastjson"
)

// Limits are the per-request caps the validator enforces.
type Limits struct {
	// MaxTokens caps the output tokens a request may name.
	MaxTokens int
	MaxN      int
	Models    []string
	// MaxModelLen is the engine's context length, learned from its
	// /v1/models (0: not known yet). A request that names more output
	// tokens than fit beside a one-token prompt is refused here, as the
	// engine would refuse it.
	MaxModelLen int
}

// defaultCompletionTokens is what vLLM's /v1/completions generates when a
// request names no max_tokens, or names null (CompletionRequest.max_tokens
// defaults to 16 and normalize_null_max_tokens maps null to it:
// vllm/entrypoints/openai/completion/protocol.py, docs/engine-contract.md).
const defaultCompletionTokens = 16

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
	// Body is the request to send upstream: the client's, unless a field
	// had to be rewritten (then every copy of it is replaced by one).
	Body []byte
	// Prompt is the single prompt of a coalescable request.
	Prompt json.RawMessage
	// Fields is the request without its prompt, for coalescing; nil when
	// the request cannot be coalesced.
	Fields map[string]json.RawMessage
	// CoalesceKey groups requests with identical parameters.
	CoalesceKey string
	// PromptBytes is the size of the prompt (or the messages) and
	// MaxTokens the output cap the engine will apply (the request's, or
	// the engine's default): what the engine model reads of the request.
	PromptBytes, MaxTokens int
	// ClientPriority: the client's body names a "priority" (any copy,
	// null included), which setPriority replaces or removes.
	ClientPriority bool
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
// decoder (Python's) takes it; null counts as absent. Keys are compared
// unescaped ("max\u005ftokens" is max_tokens), as Python reads them.
type fields struct {
	model, prompt, messages, maxTokens, maxCompletionTokens, n, stream, echo *fastjson.Value
	// priority: the body names a "priority", null included (the
	// gateway owns the engine's priority: priority.go).
	priority bool
}

func (f *fields) set(key []byte, v *fastjson.Value) {
	if string(key) == "priority" {
		f.priority = true
	}
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
	case "echo":
		f.echo = v
	case "stream":
		f.stream = v
	}
}

// validate checks body for route against lim. coalesce asks it to
// prepare a non-streamed single-prompt completion for coalescing.
func validate(route string, body []byte, lim Limits, coalesce bool) (*parsed, *invalid) {
	// JSON's whitespace only: bytes.TrimSpace would also take a form feed
	// or a Unicode space, which the engine's decoder refuses.
	trimmed := bytes.Trim(body, " \t\r\n")
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
	if err == nil && bytes.IndexByte(trimmed, '\\') >= 0 && rawControlInString(trimmed) {
		err = errors.New("a string holds a raw control character")
	}
	if err == nil && !utf8.Valid(trimmed) {
		// The engine's decoder (Python's json over the raw bytes) refuses
		// it too; here it costs no slot.
		err = errors.New("it is not valid UTF-8")
	}
	if err != nil {
		return nil, &invalid{Status: http.StatusBadRequest, Code: "invalid_json", Msg: "the request body is not valid JSON: " + parseError(err)}
	}
	var f fields
	v.GetObject().Visit(f.set)

	p := &parsed{Body: body, ClientPriority: f.priority}
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
	if f.prompt != nil {
		p.PromptBytes = len(f.prompt.MarshalTo(nil))
	} else if f.messages != nil {
		p.PromptBytes = len(f.messages.MarshalTo(nil))
	}
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

	n := 1
	if f.n != nil {
		var inv *invalid
		if n, inv = intField("n", f.n); inv != nil {
			return nil, inv
		}
		if n < 1 || n > lim.MaxN {
			return nil, bad("n", "n must be between 1 and %d, got %d", lim.MaxN, n)
		}
	}
	// best_of is gone from vLLM's requests (neither CompletionRequest nor
	// ChatCompletionRequest has it; extra fields are ignored), so it
	// reserves nothing: the engine runs n sequences per prompt.
	p.Weight = prompts * n

	// The output cap, on the field the engine reads for this endpoint:
	// /v1/completions reads max_tokens only (it has no
	// max_completion_tokens); chat reads max_completion_tokens, else
	// max_tokens (ChatCompletionRequest.build_tok_params).
	maxTok, param := f.maxTokens, "max_tokens"
	if route == routeChat && f.maxCompletionTokens != nil {
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
		if lim.MaxModelLen > 0 && m >= lim.MaxModelLen {
			return nil, bad(param, "This model's maximum context length is %d tokens, so %s must be less than %d, got %d",
				lim.MaxModelLen, param, lim.MaxModelLen, m)
		}
		p.MaxTokens = m
	} else if route == routeCompletions {
		p.MaxTokens = min(defaultCompletionTokens, lim.MaxTokens)
	} else {
		p.MaxTokens = lim.MaxTokens
	}
	if maxTok == nil && route == routeCompletions && lim.MaxTokens < defaultCompletionTokens {
		// The engine's default for completions is above the cap: name the
		// cap, replacing every copy (a null among them) of max_tokens.
		var inv *invalid
		if p.Body, inv = replaceField(trimmed, "max_tokens", lim.MaxTokens); inv != nil {
			return nil, inv
		}
	}
	// A chat request that names no cap generates what fits in the context;
	// the engine's own server-wide cap (max_new_tokens, which llmlab-engine
	// sets from limits.max_tokens) bounds it without refusing long prompts.
	// The gateway adds no max_tokens: one it added would be refused by the
	// engine whenever prompt + max_tokens exceeds the context length.

	echo := false
	if f.echo != nil {
		if echo, err = f.echo.Bool(); err != nil {
			return nil, wrongType("echo", f.echo, "a boolean")
		}
	}

	// Coalescing asks the engine for return_token_ids to split usage; with
	// echo, vLLM then answers the prompt's ids and an empty prompt text
	// (completion/serving.py), so an echo request is sent on its own.
	if coalesce && route == routeCompletions && !p.Stream && prompts == 1 && n == 1 && !echo {
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

// rawControlInString reports whether a string or key in the JSON text b
// holds a raw control character, which JSON forbids and the engine's
// decoder refuses. fastjson's own check misses one in a string that also
// has an escape sequence (its slow path returns only the text after the
// last escape for the scan), so the validator looks again when b has a
// backslash.
func rawControlInString(b []byte) bool {
	in, esc := false, false
	for _, c := range b {
		switch {
		case esc:
			esc = false
		case in && c == '\\':
			esc = true
		case c == '"':
			in = !in
		case in && c < 0x20:
			return true
		}
	}
	return false
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

// replaceField returns the JSON object body with every member named name
// (a later duplicate, a null, an escaped spelling of the key) replaced by
// one "name":value, so that no copy of the client's can override it in the
// engine's decoder. It goes through encoding/json, which keeps a repeated
// member's last value and unescapes keys as Python's decoder does, and
// escapes what it writes; fastjson's own marshalling writes control
// characters in keys raw. It is rare (a cap below the engine's default),
// so the cost of a full decode does not matter.
func replaceField(body []byte, name string, value int) ([]byte, *invalid) {
	return setField(body, name, json.RawMessage(strconv.Itoa(value)))
}

// setField is replaceField with any JSON value; a nil value removes every
// copy of the member.
func setField(body []byte, name string, value json.RawMessage) ([]byte, *invalid) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, &invalid{Status: http.StatusBadRequest, Code: "invalid_json", Msg: "the request body is not valid JSON: " + err.Error()}
	}
	if value == nil {
		delete(m, name)
	} else {
		m[name] = value
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil, &invalid{Status: http.StatusBadRequest, Code: "invalid_json", Msg: "the request body is not valid JSON: " + err.Error()}
	}
	return out, nil
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

// nestedCause strips fastjson's chain of "cannot parse array value: "
// prefixes, one per level of nesting: for a deeply nested body the chain
// alone ran to kilobytes.
var nestedCause = regexp.MustCompile(`^(cannot parse [A-Za-z ]+: )+`)

// parseError is a parse error's message, without the nesting chain and at
// most 300 bytes long.
func parseError(err error) string {
	msg := nestedCause.ReplaceAllString(err.Error(), "")
	if len(msg) > 300 {
		msg = strings.ToValidUTF8(msg[:300], "") + "..."
	}
	return msg
}
