package gateway

// Requests passed through to the engine: bodies intact, credentials kept
// back, and the models the config names.

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

func TestNonStreamedPassesThroughIntact(t *testing.T) {
	var got struct {
		body []byte
		hdr  http.Header
	}
	const answer = `{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":"hello"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`
	engine := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.body, _ = io.ReadAll(r.Body)
		got.hdr = r.Header.Clone()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, answer)
	})
	f := newFixture(t, testConfig(), nil, engine)
	in := `{"model":"m","prompt":"hi","max_tokens":5}`
	resp := f.post(t, "/v1/completions", in, "X-Request-Id", "req-42", "Connection", "close")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != answer {
		t.Fatalf("answer = %d %s, want 200 %s", resp.StatusCode, body, answer)
	}
	if string(got.body) != in {
		t.Errorf("engine got %s, want %s", got.body, in)
	}
	if got.hdr.Get("X-Request-Id") != "req-42" || resp.Header.Get("X-Request-Id") != "req-42" {
		t.Errorf("request id: engine %q, client %q, want req-42 both", got.hdr.Get("X-Request-Id"), resp.Header.Get("X-Request-Id"))
	}
	if v := metricValue(f.gw.metrics.requests.WithLabelValues("completions", "ok", "200"), 1); v != 1 {
		t.Errorf("requests_total{ok,200} = %v, want 1", v)
	}
	if v := metricValue(f.gw.metrics.clientTokens.WithLabelValues("anonymous", "completion"), 1); v != 1 {
		t.Errorf("client completion tokens = %v, want 1 (from usage)", v)
	}
}

func TestAuthorizationNotForwarded(t *testing.T) {
	keys, _ := auth.Parse("k", []byte("alice sk-0123456789abcdef\n"))
	eng := &fakeengine.Engine{}
	f := newFixture(t, testConfig(), keys, eng)
	resp := f.post(t, "/v1/completions", `{"prompt":"x"}`, "Authorization", "Bearer sk-0123456789abcdef")
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if h := eng.Headers()[0]; h.Get("Authorization") != "" {
		t.Errorf("engine saw Authorization %q", h.Get("Authorization"))
	}
	if v := metricValue(f.gw.metrics.clientReqs.WithLabelValues("alice"), 1); v != 1 {
		t.Errorf("client_requests_total{client=alice} = %v, want 1", v)
	}
}

func TestModelsFromConfig(t *testing.T) {
	f := newFixture(t, testConfig(), nil, &fakeengine.Engine{})
	f.engine.Close() // answered without the engine
	resp, err := http.Get(f.srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Data []struct{ ID string } `json:"data"`
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(list.Data) != 1 || list.Data[0].ID != "m" {
		t.Fatalf("/v1/models = %d %+v", resp.StatusCode, list)
	}
}
