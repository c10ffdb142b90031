package gateway

import (
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

func TestParseDeadline(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		err  string
	}{
		{"2s", 2 * time.Second, ""},
		{" 800ms ", 800 * time.Millisecond, ""},
		{"2.5", 2500 * time.Millisecond, ""},
		{"0.001", time.Millisecond, ""},
		{"soon", 0, `must be a duration such as "2s"`},
		{"NaN", 0, `must be a duration such as "2s"`},
		{"0s", 0, "must be above 0"},
		{"-1", 0, "must be above 0"},
		{"25h", 0, "at most 24h0m0s"},
		{"1e300", 0, "at most 24h0m0s"},
	} {
		got, err := parseDeadline(tc.in)
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("parseDeadline(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), DeadlineHeader)) {
			t.Errorf("parseDeadline(%q) = %v, %v; want an error naming %s and saying %q", tc.in, got, err, DeadlineHeader, tc.err)
		}
	}
}

// A client's deadline through the API: a malformed one is a 400 naming
// the header; one the request could not meet even alone is a 400
// (deadline_too_short) with the predicted time, before it costs the
// engine anything; a generous one is served.
func TestDeadlineHeader(t *testing.T) {
	eng := &fakeengine.Engine{}
	f := newFixture(t, testConfig(), nil, eng)
	body := `{"prompt":"x","max_tokens":4}`
	resp := f.post(t, "/v1/completions", body, DeadlineHeader, "soon")
	if e := apiErr(t, resp); resp.StatusCode != 400 || e.Code != "invalid_deadline" || !strings.Contains(e.Message, DeadlineHeader) {
		t.Errorf("a malformed deadline: %d %q %q, want 400 invalid_deadline naming the header", resp.StatusCode, e.Code, e.Message)
	}
	resp = f.post(t, "/v1/completions", body, DeadlineHeader, "1us")
	if e := apiErr(t, resp); resp.StatusCode != 400 || e.Code != "deadline_too_short" || !strings.Contains(e.Message, "alone exceeds its deadline of 1µs") ||
		resp.Header.Get("Retry-After") != "" {
		t.Errorf("an impossible deadline: %d %q %q (Retry-After %q), want 400 deadline_too_short with the predicted time, no Retry-After",
			resp.StatusCode, e.Code, e.Message, resp.Header.Get("Retry-After"))
	}
	if n := eng.Stats().Requests; n != 0 {
		t.Errorf("the engine saw %d requests, want none", n)
	}
	resp = f.post(t, "/v1/completions", body, DeadlineHeader, "1m")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("a one-minute deadline: %d, want 200", resp.StatusCode)
	}
}

// Every answer that reached the engine says how long it waited in the
// queue: the second of two requests for the only slot, at least the
// first's time in the engine.
func TestQueueWaitHeader(t *testing.T) {
	c := testConfig()
	c.Queue.MaxInflight = 1
	f := newFixture(t, c, nil, &fakeengine.Engine{Delay: 300 * time.Millisecond})
	body := `{"prompt":"x","max_tokens":1}`
	waits := make(chan float64, 2)
	for range 2 {
		go func() {
			resp := f.post(t, "/v1/completions", body)
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			w, err := strconv.ParseFloat(resp.Header.Get(QueueWaitHeader), 64)
			if resp.StatusCode != 200 || err != nil {
				t.Errorf("answer %d, %s %q: want 200 and seconds", resp.StatusCode, QueueWaitHeader, resp.Header.Get(QueueWaitHeader))
			}
			waits <- w
		}()
	}
	a, b := <-waits, <-waits
	first, second := min(a, b), max(a, b)
	if second < 0.3 || first >= second {
		t.Errorf("waits %.3f and %.3f s, the second behind a 0.3-s request on the only slot: want it at least 0.3 s and the first less", first, second)
	}
}
