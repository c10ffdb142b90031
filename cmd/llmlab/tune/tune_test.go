package tune

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
)

// The one-class run marks afterwards the requests that the bench sends as
// batch in the classes run: the same requests, by start order.
func TestMarkBatchMatchesTheBench(t *testing.T) {
	var mu sync.Mutex
	var headers []bool // by arrival order
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		headers = append(headers, r.Header.Get(bench.PriorityHeader) == "batch")
		mu.Unlock()
		w.Write([]byte(`{"usage":{"prompt_tokens":1,"completion_tokens":1}}`))
	}))
	defer srv.Close()
	o := bench.Options{Target: srv.URL, PromptTokens: 5, MaxTokens: 1, Concurrency: 1, Requests: 40, Timeout: 5 * time.Second, BatchShare: 0.5}
	samples, err := bench.Run(context.Background(), bench.NewClient(1), o)
	if err != nil {
		t.Fatal(err)
	}
	sent := map[time.Duration]bool{}
	for _, s := range samples {
		sent[s.Start] = s.Batch
	}
	for i := range samples {
		samples[i].Batch = false
	}
	// Reverse the order: markBatch must go by start time.
	for i, j := 0, len(samples)-1; i < j; i, j = i+1, j-1 {
		samples[i], samples[j] = samples[j], samples[i]
	}
	markBatch(samples, 0.5)
	batch := 0
	for _, s := range samples {
		if s.Batch != sent[s.Start] {
			t.Fatalf("request started at %s: marked batch %v, sent as batch %v", s.Start, s.Batch, sent[s.Start])
		}
		if s.Batch {
			batch++
		}
	}
	if math.Abs(float64(batch)-20) > 1 {
		t.Fatalf("%d of 40 batch, want about half", batch)
	}
	n := 0
	for _, h := range headers {
		if h {
			n++
		}
	}
	if n != batch {
		t.Fatalf("the server saw %d batch headers, the samples say %d", n, batch)
	}
}
