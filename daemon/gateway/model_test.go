package gateway

import (
	"io"
	"math"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

// Every answer in full teaches the engine model, streamed (with its time
// to first token and its tokens) or not; an answer cut by the engine
// teaches nothing.
func TestAnswersTeachTheEngineModel(t *testing.T) {
	eng := &fakeengine.Engine{Delay: 30 * time.Millisecond, TokenDelay: 2 * time.Millisecond}
	f := newFixture(t, testConfig(), nil, eng)
	for _, body := range []string{
		`{"model":"m","prompt":"` + "Write word word" + `","max_tokens":20,"stream":true}`,
		`{"model":"m","prompt":"Write word word","max_tokens":20}`,
	} {
		resp := f.post(t, "/v1/completions", body)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", body, resp.StatusCode)
		}
	}
	st := f.gw.QueueStats().Model
	if st.Observed != 2 {
		t.Fatalf("the model learned from %d answers, want 2: %+v", st.Observed, st)
	}
	// The fake engine's usage report names its prompt tokens: the model
	// converts bytes to tokens with what it saw.
	if st.TokensPerByte == 0.2 {
		t.Errorf("tokens per byte still the prior's 0.2 after two usage reports: %+v", st)
	}
	if lo, hi := st.ConcurrencyRange[0], st.ConcurrencyRange[1]; math.Abs(lo-1) > 1e-9 || math.Abs(hi-1) > 1e-9 {
		t.Errorf("concurrency seen %v, want 1 (one request at a time)", st.ConcurrencyRange)
	}
}
