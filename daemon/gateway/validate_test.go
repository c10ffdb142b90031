package gateway

import (
	"encoding/json"
	"strings"
	"testing"
)

var testLimits = Limits{MaxTokens: 256, MaxN: 4, Models: []string{"m"}}

func TestValidate(t *testing.T) {
	tests := []struct {
		name, route, body string
		status            int    // 0: valid
		param             string // for invalid ones
		weight            int
	}{
		{"completion", routeCompletions, `{"model":"m","prompt":"hi","max_tokens":10}`, 0, "", 1},
		{"no model is the default model", routeCompletions, `{"prompt":"hi"}`, 0, "", 1},
		{"prompt list", routeCompletions, `{"model":"m","prompt":["a","b","c"]}`, 0, "", 3},
		{"token ids", routeCompletions, `{"model":"m","prompt":[1,2,3]}`, 0, "", 1},
		{"token id lists", routeCompletions, `{"model":"m","prompt":[[1],[2]]}`, 0, "", 2},
		// vLLM dropped best_of (extra fields are ignored): n alone counts.
		{"best_of is ignored", routeCompletions, `{"model":"m","prompt":["a","b"],"n":2,"best_of":3}`, 0, "", 4},
		{"chat", routeChat, `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}`, 0, "", 1},
		{"chat max_completion_tokens", routeChat, `{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":256}`, 0, "", 1},

		{"not json", routeCompletions, `{"model":`, 400, "", 0},
		{"not an object", routeCompletions, `["a"]`, 400, "", 0},
		{"empty body", routeCompletions, ``, 400, "", 0},
		{"unknown model", routeCompletions, `{"model":"gpt-5","prompt":"hi"}`, 404, "model", 0},
		{"model not a string", routeCompletions, `{"model":7,"prompt":"hi"}`, 400, "model", 0},
		{"missing prompt", routeCompletions, `{"model":"m"}`, 400, "prompt", 0},
		{"empty prompt", routeCompletions, `{"model":"m","prompt":""}`, 400, "prompt", 0},
		{"empty prompt list", routeCompletions, `{"model":"m","prompt":[]}`, 400, "prompt", 0},
		{"empty prompt in list", routeCompletions, `{"model":"m","prompt":["a",""]}`, 400, "prompt", 0},
		{"prompt object", routeCompletions, `{"model":"m","prompt":{"a":1}}`, 400, "prompt", 0},
		{"messages on completions", routeCompletions, `{"model":"m","messages":[]}`, 400, "messages", 0},
		{"missing messages", routeChat, `{"model":"m"}`, 400, "messages", 0},
		{"empty messages", routeChat, `{"model":"m","messages":[]}`, 400, "messages", 0},
		{"message without role", routeChat, `{"model":"m","messages":[{"content":"x"}]}`, 400, "messages[0].role", 0},
		{"max_tokens over cap", routeCompletions, `{"model":"m","prompt":"x","max_tokens":257}`, 400, "max_tokens", 0},
		{"max_tokens zero", routeCompletions, `{"model":"m","prompt":"x","max_tokens":0}`, 400, "max_tokens", 0},
		{"max_tokens string", routeCompletions, `{"model":"m","prompt":"x","max_tokens":"9"}`, 400, "max_tokens", 0},
		{"max_completion_tokens over cap", routeChat, `{"model":"m","messages":[{"role":"user"}],"max_completion_tokens":1000}`, 400, "max_completion_tokens", 0},
		{"n over cap", routeCompletions, `{"model":"m","prompt":"x","n":5}`, 400, "n", 0},
		// The cap is checked on the field the engine uses: completions have
		// no max_completion_tokens in vLLM, so it cannot lower max_tokens
		// there; chat takes max_completion_tokens first.
		{"completions: max_completion_tokens does not hide max_tokens", routeCompletions, `{"model":"m","prompt":"x","max_tokens":900,"max_completion_tokens":10}`, 400, "max_tokens", 0},
		{"chat: max_completion_tokens is the one used", routeChat, `{"model":"m","messages":[{"role":"user"}],"max_tokens":900,"max_completion_tokens":10}`, 0, "", 1},
		{"chat: null max_completion_tokens falls back to max_tokens", routeChat, `{"model":"m","messages":[{"role":"user"}],"max_tokens":900,"max_completion_tokens":null}`, 400, "max_tokens", 0},
		{"escaped key is the same key", routeCompletions, `{"model":"m","prompt":"x","max_tokens":10,"max\u005ftokens":900}`, 400, "max_tokens", 0},
		{"echo not a boolean", routeCompletions, `{"model":"m","prompt":"x","echo":1}`, 400, "echo", 0},
		{"max_tokens not an integer", routeCompletions, `{"model":"m","prompt":"x","max_tokens":2.5}`, 400, "max_tokens", 0},
		{"max_tokens overflows", routeCompletions, `{"model":"m","prompt":"x","max_tokens":1e99}`, 400, "max_tokens", 0},
		{"max_tokens NaN is not JSON", routeCompletions, `{"model":"m","prompt":"x","max_tokens":NaN}`, 400, "", 0},
		{"bad escape is not JSON", routeCompletions, `{"model":"m","prompt":"\x"}`, 400, "", 0},
		// fastjson alone accepts these (a raw control character before an
		// escape in the same string); the fuzzer found the key case.
		{"raw control character in a key with an escape", routeCompletions, "{\"prompt\":\"0\",\"\x00\\b\":0}", 400, "", 0},
		{"raw control character in a value with an escape", routeCompletions, "{\"prompt\":\"a\x01\\nb\"}", 400, "", 0},
		{"form feed is not JSON whitespace", routeCompletions, "\f{\"prompt\":\"x\"}", 400, "", 0},
		{"too deep", routeCompletions, `{"model":"m","prompt":"x","extra":` + strings.Repeat("[", 400) + strings.Repeat("]", 400) + `}`, 400, "", 0},
		// The engine's JSON decoder takes a repeated member's last value:
		// so does the validator, or a cap could be passed by repeating it.
		{"repeated max_tokens, last over cap", routeCompletions, `{"model":"m","prompt":"x","max_tokens":1,"max_tokens":100000}`, 400, "max_tokens", 0},
		{"repeated model, last unknown", routeCompletions, `{"model":"m","model":"gpt-5","prompt":"x"}`, 404, "model", 0},
		{"null max_tokens is absent", routeCompletions, `{"model":"m","prompt":"x","max_tokens":null}`, 0, "", 1},
		{"mixed prompt list", routeCompletions, `{"model":"m","prompt":["a",1]}`, 400, "prompt", 0},
		{"token id list with a fraction", routeCompletions, `{"model":"m","prompt":[[1,2.5]]}`, 400, "prompt", 0},
		{"empty token id list", routeCompletions, `{"model":"m","prompt":[[1],[]]}`, 400, "prompt", 0},
		{"message not an object", routeChat, `{"model":"m","messages":["hi"]}`, 400, "messages[0]", 0},
		{"role not a string", routeChat, `{"model":"m","messages":[{"role":1}]}`, 400, "messages[0].role", 0},
		{"messages not a list", routeChat, `{"model":"m","messages":{"role":"user"}}`, 400, "messages", 0},
		{"stream not bool", routeChat, `{"model":"m","messages":[{"role":"user"}],"stream":"yes"}`, 400, "stream", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, inv := validate(tt.route, []byte(tt.body), testLimits, false)
			if tt.status == 0 {
				if inv != nil {
					t.Fatalf("validate(%s) = %+v, want valid", tt.body, inv)
				}
				if p.Weight != tt.weight {
					t.Errorf("Weight = %d, want %d", p.Weight, tt.weight)
				}
				if !json.Valid(p.Body) {
					t.Errorf("upstream body is not JSON: %s", p.Body)
				}
				return
			}
			if inv == nil {
				t.Fatalf("validate(%s) = valid, want %d", tt.body, tt.status)
			}
			if inv.Status != tt.status || inv.Param != tt.param {
				t.Errorf("validate(%s) = %d param %q (%s), want %d param %q", tt.body, inv.Status, inv.Param, inv.Msg, tt.status, tt.param)
			}
		})
	}
}

// The gateway adds no max_tokens (the engine refuses one that does not fit
// beside the prompt; its own server-wide cap bounds a request that names
// none). It rewrites only a completion whose engine default (16) is above
// the cap, and then replaces every copy of the field.
func TestValidateRewrites(t *testing.T) {
	in := ` {"messages":[{"role":"user","content":"x"}]}`
	p, inv := validate(routeChat, []byte(in), testLimits, false)
	if inv != nil {
		t.Fatal(inv)
	}
	if string(p.Body) != in {
		t.Fatalf("chat without max_tokens: upstream body = %s, want the client's unchanged", p.Body)
	}
	in = `{"prompt":"x","max_tokens":5, "extra_vllm_param": true}`
	p, _ = validate(routeCompletions, []byte(in), testLimits, false)
	if string(p.Body) != in {
		t.Fatalf("upstream body = %s, want the original %s", p.Body, in)
	}
	low := testLimits
	low.MaxTokens = 8
	for _, body := range []string{
		`{"prompt":"x"}`,
		`{"prompt":"x","max_tokens":null}`,
		`{"max_tokens":null,"prompt":"x","max\u005ftokens":null}`,
	} {
		p, inv := validate(routeCompletions, []byte(body), low, false)
		if inv != nil {
			t.Fatalf("%s: %v", body, inv)
		}
		if n := strings.Count(string(p.Body), `"max_tokens"`); n != 1 || !strings.Contains(string(p.Body), `"max_tokens":8`) {
			t.Errorf("cap 8, %s: upstream body = %s, want one max_tokens of 8", body, p.Body)
		}
		if got := engineMaxTokens(t, routeCompletions, p.Body); got != 8 {
			t.Errorf("cap 8, %s: the engine would generate %d", body, got)
		}
	}
}

// engineMaxTokens is the output cap vLLM takes from body: encoding/json,
// like Python's decoder, keeps a repeated member's last value and
// unescapes keys; -1 means the request names none (chat: what fits).
func engineMaxTokens(t *testing.T, route string, body []byte) int {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("upstream body %s: %v", body, err)
	}
	num := func(k string) (int, bool) {
		var n *int
		if raw, ok := m[k]; ok {
			if err := json.Unmarshal(raw, &n); err != nil {
				t.Fatalf("upstream %s = %s: %v", k, raw, err)
			}
		}
		if n == nil {
			return 0, false
		}
		return *n, true
	}
	if route == routeChat {
		if n, ok := num("max_completion_tokens"); ok {
			return n
		}
		if n, ok := num("max_tokens"); ok {
			return n
		}
		return -1
	}
	if n, ok := num("max_tokens"); ok {
		return n
	}
	return defaultCompletionTokens
}

// A max_tokens that cannot fit beside a one-token prompt in the engine's
// context (learned from its /v1/models) is refused by the gateway, as the
// engine would refuse it.
func TestValidateContextLength(t *testing.T) {
	lim := testLimits
	lim.MaxModelLen = 100
	if _, inv := validate(routeCompletions, []byte(`{"prompt":"x","max_tokens":99}`), lim, false); inv != nil {
		t.Fatalf("max_tokens 99 of a 100-token context: %v, want valid", inv)
	}
	_, inv := validate(routeChat, []byte(`{"messages":[{"role":"user"}],"max_completion_tokens":100}`), lim, false)
	if inv == nil || inv.Status != 400 || inv.Param != "max_completion_tokens" || !strings.Contains(inv.Msg, "maximum context length is 100") {
		t.Fatalf("max_completion_tokens 100 of a 100-token context: %+v, want 400 naming the context length", inv)
	}
}

func TestCoalesceKey(t *testing.T) {
	key := func(body string) string {
		p, inv := validate(routeCompletions, []byte(body), testLimits, true)
		if inv != nil {
			t.Fatal(inv)
		}
		return p.CoalesceKey
	}
	a := key(`{"model":"m","prompt":"one","max_tokens":10,"temperature":0}`)
	b := key(`{"temperature":0,"max_tokens":10,"prompt":"two","model":"m"}`)
	if a == "" || a != b {
		t.Errorf("same parameters, different prompts: keys %q and %q, want equal and non-empty", a, b)
	}
	if c := key(`{"model":"m","prompt":"one","max_tokens":11,"temperature":0}`); c == a {
		t.Error("different max_tokens gave the same key")
	}
	for _, body := range []string{
		`{"model":"m","prompt":"x","stream":true}`,
		`{"model":"m","prompt":["x","y"]}`,
		`{"model":"m","prompt":"x","n":2}`,
		// With echo, vLLM answers return_token_ids with the prompt's ids and
		// an empty prompt text, so echo is sent alone.
		`{"model":"m","prompt":"x","echo":true}`,
	} {
		if k := key(body); k != "" {
			t.Errorf("%s: key %q, want none (not coalescable)", body, k)
		}
	}
}

func FuzzValidate(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","prompt":"hi","max_tokens":10}`,
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"n":2}`,
		`{"prompt":[[1,2],[3]],"best_of":3}`,
		`{"prompt":["a","b"]}`, `[]`, `{`, `{"max_tokens":1e99}`,
		`{"prompt":"x","max_tokens":10,"max_tokens":null}`,
		`{"prompt":"x","max_tokens":900,"max_completion_tokens":10}`,
		`{"messages":[{"role":"user"}],"max_completion_tokens":null,"max_tokens":900}`,
		`{"prompt":"x","max\u005ftokens":900,"max_tokens":1}`,
		`{"prompt":"x","echo":true,"n":1}`,
		`{"prompt":"x","priority":3,"priorit\u0079":null}`, ` { "prompt":"x"}`,
	} {
		f.Add(s, true)
		f.Add(s, false)
	}
	// A cap below the engine's completion default makes the gateway rewrite
	// max_tokens, so the rewrite is fuzzed too.
	lim := testLimits
	lim.MaxTokens = 12
	f.Fuzz(func(t *testing.T, body string, chat bool) {
		route := routeCompletions
		if chat {
			route = routeChat
		}
		p, inv := validate(route, []byte(body), lim, true)
		if inv == nil && !json.Valid([]byte(body)) {
			t.Fatalf("accepted %q, which encoding/json says is not JSON", body)
		}
		if inv != nil {
			if inv.Status != 400 && inv.Status != 404 || inv.Msg == "" {
				t.Fatalf("invalid %+v: want 400/404 with a message", inv)
			}
			return
		}
		if p.Weight < 1 || p.Weight > lim.MaxN*len(body) {
			t.Fatalf("Weight = %d for %s", p.Weight, body)
		}
		if !json.Valid(p.Body) {
			t.Fatalf("upstream body not valid JSON: %s (from %s)", p.Body, body)
		}
		checkPriority(t, p)
		// What the engine will read (last copy of a key, keys unescaped,
		// the field it uses for this endpoint) never exceeds the cap.
		if got := engineMaxTokens(t, route, p.Body); got > lim.MaxTokens {
			t.Fatalf("the engine would generate %d tokens for %s (upstream %s), over the cap %d", got, body, p.Body, lim.MaxTokens)
		}
		if p.CoalesceKey != "" {
			var fields map[string]json.RawMessage
			if chat || json.Unmarshal([]byte(p.CoalesceKey), &fields) != nil || fields["prompt"] != nil {
				t.Fatalf("bad coalesce key %q", p.CoalesceKey)
			}
		}
	})
}
