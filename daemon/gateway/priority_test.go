package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

// upstream is what the engine received: the priority its decoder reads
// from the body (the last copy, keys unescaped, as Python's json; nil:
// none) and vLLM's priority header.
type upstream struct {
	priority json.RawMessage
	header   string
	body     map[string]json.RawMessage
}

// recordingEngine answers as the fake engine and records each request.
func recordingEngine(t *testing.T) (http.Handler, func() []upstream) {
	var mu sync.Mutex
	var got []upstream
	eng := &fakeengine.Engine{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		var m map[string]json.RawMessage
		if err := json.Unmarshal(data, &m); err != nil {
			t.Errorf("the engine got a body that is not a JSON object: %s", data)
		}
		mu.Lock()
		got = append(got, upstream{priority: m["priority"], header: r.Header.Get(EnginePriorityHeader), body: m})
		mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(data))
		eng.ServeHTTP(w, r)
	})
	return h, func() []upstream {
		mu.Lock()
		defer mu.Unlock()
		return append([]upstream(nil), got...)
	}
}

// With engine.scheduling_policy = "priority", the engine reads each
// request's class as its priority (interactive 0, batch 1), whatever the
// client wrote in the body or in vLLM's header; first come first served,
// it reads none. The rest of the body is the client's.
func TestEnginePriority(t *testing.T) {
	keys, err := auth.Parse("k", []byte("alice sk-0123456789abcdef\nnightly sk-fedcba9876543210 batch\n"))
	if err != nil {
		t.Fatal(err)
	}
	const alice, nightly = "Bearer sk-0123456789abcdef", "Bearer sk-fedcba9876543210"
	for _, tc := range []struct {
		name    string
		body    string
		hdr     []string
		want    string // the priority the engine reads with the priority policy
		wantOff string // ... first come first served ("": none)
	}{
		{"interactive", `{"prompt":"x","max_tokens":3,"temperature":0.5}`, []string{"Authorization", alice}, "0", ""},
		{"lowered to batch by the header", `{"prompt":"x","max_tokens":3,"temperature":0.5}`, []string{"Authorization", alice, PriorityHeader, "batch"}, "1", ""},
		{"a batch key", ` {"prompt":"x","max_tokens":3,"temperature":0.5}`, []string{"Authorization", nightly}, "1", ""},
		{"a batch key asking for more in the body", `{"prompt":"x","max_tokens":3,"temperature":0.5,"priority":-100}`, []string{"Authorization", nightly}, "1", ""},
		{"copies, null and an escaped key", `{"priority":null,"prompt":"x","priorit\u0079":-5,"max_tokens":3,"temperature":0.5,"priority":7}`, []string{"Authorization", alice}, "0", ""},
		{"vLLM's header", `{"prompt":"x","max_tokens":3,"temperature":0.5}`, []string{"Authorization", nightly, EnginePriorityHeader, "-100"}, "1", ""},
		{"chat", `{"messages":[{"role":"user","content":"x"}],"max_tokens":3,"temperature":0.5}`, []string{"Authorization", nightly}, "1", ""},
	} {
		for _, on := range []bool{true, false} {
			name := tc.name + map[bool]string{true: " (priority)", false: " (fcfs)"}[on]
			t.Run(name, func(t *testing.T) {
				engine, got := recordingEngine(t)
				cfg := testConfig()
				cfg.EnginePriority = on
				f := newFixture(t, cfg, keys, engine)
				path := "/v1/completions"
				if tc.name == "chat" {
					path = "/v1/chat/completions"
				}
				resp := f.post(t, path, tc.body, tc.hdr...)
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d, want 200", resp.StatusCode)
				}
				up := got()
				if len(up) != 1 {
					t.Fatalf("the engine got %d requests, want 1", len(up))
				}
				want := tc.wantOff
				if on {
					want = tc.want
				}
				if string(up[0].priority) != want {
					t.Errorf("the engine reads priority %s, want %q", up[0].priority, want)
				}
				if up[0].header != "" {
					t.Errorf("the engine got %s: %s, want none", EnginePriorityHeader, up[0].header)
				}
				if string(up[0].body["max_tokens"]) != "3" || string(up[0].body["temperature"]) != "0.5" {
					t.Errorf("the engine got %v, want the client's other fields unchanged", up[0].body)
				}
			})
		}
	}
}

// Coalesced requests share one upstream request, so one priority: only
// requests of one class are merged, and the merged request carries it.
func TestCoalescedPriority(t *testing.T) {
	body := []byte(`{"prompt":"x","max_tokens":3,"priority":4}`)
	keys := map[queue.Class]string{}
	for _, c := range []queue.Class{queue.Interactive, queue.Batch} {
		p, inv := validate(routeCompletions, body, testLimits, true)
		if inv != nil {
			t.Fatal(inv)
		}
		if inv := p.setPriority(c, true); inv != nil {
			t.Fatal(inv)
		}
		if got, want := string(p.Fields["priority"]), strconv.Itoa(enginePriority(c)); got != want {
			t.Errorf("%s: the merged request's priority = %s, want %s", c, got, want)
		}
		keys[c] = p.CoalesceKey
	}
	if keys[queue.Interactive] == keys[queue.Batch] {
		t.Errorf("interactive and batch requests share the coalescing key %s", keys[queue.Batch])
	}
	p, _ := validate(routeCompletions, body, testLimits, true)
	p.setPriority(queue.Batch, false)
	if _, ok := p.Fields["priority"]; ok {
		t.Errorf("first come first served, the merged request keeps the client's priority: %v", p.Fields)
	}
}

// checkPriority is FuzzValidate's check of setPriority on a valid request:
// the engine reads exactly the class's priority (none when off), and
// every other field as before.
func checkPriority(t *testing.T, p *parsed) {
	var before map[string]json.RawMessage
	if err := json.Unmarshal(p.Body, &before); err != nil {
		t.Fatalf("upstream body %s: %v", p.Body, err)
	}
	delete(before, "priority")
	for _, c := range []queue.Class{queue.Interactive, queue.Batch} {
		for _, on := range []bool{true, false} {
			q := *p
			q.Fields = maps.Clone(p.Fields)
			if inv := q.setPriority(c, on); inv != nil {
				t.Fatalf("setPriority(%s, %t) of %s: %v", c, on, p.Body, inv)
			}
			var after map[string]json.RawMessage
			if err := json.Unmarshal(q.Body, &after); err != nil {
				t.Fatalf("setPriority(%s, %t) of %s = %s, not JSON: %v", c, on, p.Body, q.Body, err)
			}
			got, ok := after["priority"]
			switch {
			case on && string(got) != strconv.Itoa(enginePriority(c)):
				t.Fatalf("setPriority(%s, on) of %s = %s: the engine reads priority %s", c, p.Body, q.Body, got)
			case !on && ok:
				t.Fatalf("setPriority(%s, off) of %s = %s: the engine reads priority %s, want none", c, p.Body, q.Body, got)
			}
			delete(after, "priority")
			if len(after) != len(before) {
				t.Fatalf("setPriority(%s, %t) of %s = %s: other fields changed", c, on, p.Body, q.Body)
			}
			for k, v := range before {
				if canonical(v) != canonical(after[k]) {
					t.Fatalf("setPriority(%s, %t) of %s = %s: %s changed", c, on, p.Body, q.Body, k)
				}
			}
		}
	}
}

// canonical is a JSON value re-encoded, so that spacing does not count.
func canonical(raw json.RawMessage) string {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "invalid: " + string(raw)
	}
	b, _ := json.Marshal(v)
	return string(b)
}
