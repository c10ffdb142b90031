package bench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// A stream answered 200 that then fails is not counted as answered: an
// error event after llmlabd's status comment counts with that status (a
// refusal after queue updates), one without it as an error.
func TestStreamErrorEvents(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		status     int
		err        string
	}{
		{"answered", ": llmlab queued: 0 ahead, predicted start in 1.0s\n\ndata: {\"choices\":[]}\n\ndata: [DONE]\n\n", 200, ""},
		{"refused after updates", ": llmlab queued: 2 ahead, predicted start in 3.0s\n\n: llmlab status 503\ndata: {\"error\":{\"code\":\"queue_timeout\"}}\n\n", 503, ""},
		{"engine failed midway", "data: {\"choices\":[]}\n\ndata: {\"error\":{\"code\":\"engine_error\"}}\n\n", 200, "error event"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, tc.body)
			}))
			defer srv.Close()
			s := Do(context.Background(), srv.Client(), srv.URL, []byte(`{}`), true, 5*time.Second, time.Now())
			if s.Status != tc.status || s.Error != tc.err {
				t.Errorf("sample status %d error %q, want %d %q", s.Status, s.Error, tc.status, tc.err)
			}
		})
	}
}

// With Retry, a refusal is sent again after its Retry-After: the retry is
// summarised apart, with the share of retries answered, and the refusal's
// Retry-After is kept.
func TestRetryAfterRefusal(t *testing.T) {
	var mu sync.Mutex
	first := time.Time{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if first.IsZero() {
			first = time.Now()
		}
		early := time.Since(first) < 900*time.Millisecond
		mu.Unlock()
		if early {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, `{"usage":{"prompt_tokens":1,"completion_tokens":1}}`)
	}))
	defer srv.Close()
	samples, err := Run(context.Background(), srv.Client(), Options{Target: srv.URL, Concurrency: 1, Requests: 1, Retry: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(samples) != 2 || samples[0].Status != 503 || samples[0].RetryAfter != time.Second || !samples[1].Retry || samples[1].Status != 200 ||
		samples[1].Start < samples[0].Start+time.Second {
		t.Fatalf("samples %+v: want a 503 with Retry-After 1s, then its retry a second later, answered", samples)
	}
	s := Summarize(samples, time.Second, SLO{Latency: time.Minute, MaxErrorRate: 1})
	if s.Requests != 1 || s.Refused != 1 || s.Retried != 1 || s.RetriedOK != 1 || s.RetryAfter.P50 != time.Second {
		t.Errorf("summary %+v: want the one refusal counted, its retry apart and answered", s)
	}
	var out strings.Builder
	printPhase(&out, Phase{Label: "target", Summary: s})
	if !strings.Contains(out.String(), "retried after Retry-After (p50 1s, p95 1s): 1, answered 1 (100%)") {
		t.Errorf("the phase's lines:\n%s", out.String())
	}
}
