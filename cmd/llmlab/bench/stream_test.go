package bench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
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
