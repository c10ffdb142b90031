package smoke

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type fakeJournal []string

func (f fakeJournal) Journal(context.Context, string, int) ([]string, error) { return f, nil }

// A 503 from an engine that cannot start is explained from the engine
// unit's journal: a model missing from the cache, the GPU's memory taken,
// or, unrecognised, the unit named with its last lines.
func TestEngineFailureReasons(t *testing.T) {
	for _, tc := range []struct {
		name, message string
		journal       fakeJournal
		want          string
	}{
		{"model not cached", "the engine stopped unexpectedly; retrying",
			fakeJournal{"Traceback (most recent call last):", "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder"},
			"the model is not in the local cache"},
		{"gpu memory taken", "the engine was not started: GPU 0 has 0.3 GiB free of 4.0 GiB; the engine needs 3.6 GiB (0.90 of the card); the memory is held by PID 4242 (3.5 GiB); retrying",
			nil, "GPU 0 has 0.3 GiB free of 4.0 GiB"},
		{"vLLM's own memory check", "the engine stopped unexpectedly; retrying",
			fakeJournal{"ValueError: Free memory on device (0.31/3.81 GiB) on startup is less than desired GPU memory utilization (0.9, 3.43 GiB)."},
			"another process holds it"},
		{"python under root's home", "the engine stopped unexpectedly; retrying",
			fakeJournal{"llmlab-engine: vLLM's Python /opt/vllm/bin/python3 (the first line of /opt/vllm/bin/vllm) cannot be run by user llmlab: it leads to /root/.local/share/uv/python/cpython-3.12.11-linux-x86_64-gnu/bin/python3.12, which a home directory hides."},
			"UV_PYTHON_INSTALL_DIR=/opt/uv/python"},
		{"vLLM missing", "the engine stopped unexpectedly; retrying",
			fakeJournal{"llmlab-engine: vLLM is not installed (no '/opt/vllm/bin/vllm'; LLMLAB_VLLM in /etc/llmlab/engine.env names it)."},
			"vLLM is not installed where the engine unit looks"},
		{"unrecognised", "the engine stopped unexpectedly; retrying",
			fakeJournal{"something odd"}, "the engine unit llmlab-vllm.service is failing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/healthz" {
					return
				}
				w.Header().Set("Retry-After", "5")
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte(`{"error":{"message":` + quote(tc.message) + `,"type":"service_unavailable","param":null,"code":"engine_unavailable"}}`))
			}))
			defer srv.Close()
			var j Engine
			if tc.journal != nil {
				j = tc.journal
			}
			r := Run(context.Background(), Options{API: srv.URL, Model: "m", EngineUnit: "llmlab-vllm.service", Engine: j, Timeout: 5 * time.Second})
			if r.OK || !strings.Contains(r.Reason, tc.want) {
				t.Fatalf("reason %q, want it to say %q", r.Reason, tc.want)
			}
			if tc.journal != nil && len(r.Details) == 0 {
				t.Fatal("no journal lines in the details")
			}
		})
	}
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"` }

// A stream that breaks off, or carries no usage, fails the check.
func TestMalformedAnswers(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"no done", "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n", "without [DONE]"},
		{"no usage", "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n", "usage"},
		{"error event", "data: {\"error\":{\"message\":\"engine failed\"}}\n\n", "engine failed"},
		{"too long", "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":99}}\n\ndata: [DONE]\n\n", "more than the 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/healthz" {
					return
				}
				w.Header().Set("Content-Type", "text/event-stream")
				w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			r := Run(context.Background(), Options{API: srv.URL, Model: "m", Timeout: 5 * time.Second})
			if r.OK || !strings.Contains(r.Reason, tc.want) {
				t.Fatalf("reason %q, want %q", r.Reason, tc.want)
			}
		})
	}
}
