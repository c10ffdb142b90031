package gateway

// Identical requests coalesced into one.

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

func TestCoalesce(t *testing.T) {
	eng := &fakeengine.Engine{}
	cfg := testConfig()
	cfg.Coalesce = true
	cfg.Queue.BatchWindow = 50 * time.Millisecond
	cfg.Queue.MaxBatch = 3
	f := newFixture(t, cfg, nil, eng)

	type answer struct {
		prompt string
		body   map[string]any
	}
	answers := make(chan answer, 3)
	for i, p := range []string{"a", "b", "c"} {
		go func() {
			resp := f.post(t, "/v1/completions", `{"model":"m","prompt":"`+p+`","max_tokens":`+[]string{"3", "3", "3"}[i]+`}`)
			var m map[string]any
			json.NewDecoder(resp.Body).Decode(&m)
			resp.Body.Close()
			answers <- answer{p, m}
		}()
	}
	for range 3 {
		a := <-answers
		choices, _ := a.body["choices"].([]any)
		if len(choices) != 1 {
			t.Fatalf("answer for %s: %v, want one choice", a.prompt, a.body)
		}
		ch := choices[0].(map[string]any)
		if ch["index"] != float64(0) || ch["token_ids"] != nil || ch["prompt_token_ids"] != nil {
			t.Errorf("choice %v: want index 0 and no token ids", ch)
		}
		u := a.body["usage"].(map[string]any)
		if u["prompt_tokens"] != float64(10) || u["completion_tokens"] != float64(3) || u["total_tokens"] != float64(13) {
			t.Errorf("usage = %v, want the member's own 10 + 3", u)
		}
	}
	if n := eng.Stats().Requests; n != 1 {
		t.Fatalf("engine got %d requests, want 1 coalesced", n)
	}
	var up map[string]any
	json.Unmarshal(eng.Bodies()[0], &up)
	if ps, _ := up["prompt"].([]any); len(ps) != 3 {
		t.Fatalf("upstream prompt = %v, want the 3 prompts", up["prompt"])
	}
	if f.gw.queue.Stats().Inflight != 0 {
		t.Fatal("slots not released after the coalesced request")
	}
}
