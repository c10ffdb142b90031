package recent

import (
	"testing"
	"time"
)

// The summary counts the last minute only, by outcome, with the
// percentiles and the goodput of the answered requests.
func TestSummaryOfTheLastMinute(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	w := New(t0)
	// An old burst, more than a minute before the reading: forgotten.
	for range 50 {
		w.Add(t0.Add(time.Second), "ok", 9*time.Second)
		w.Add(t0.Add(time.Second), "queue_full", time.Millisecond)
	}
	now := t0.Add(2 * time.Minute)
	// The last 30 s: 100 answered in 1..100 ms... and 100 s, 10 refused.
	for i := range 100 {
		w.Add(now.Add(-30*time.Second+time.Duration(i)*100*time.Millisecond), "ok", time.Duration(i+1)*10*time.Millisecond)
	}
	for range 10 {
		w.Add(now.Add(-time.Second), "slo", time.Millisecond)
	}
	s := w.Summary(now, 500*time.Millisecond)
	if s.Seconds != 60 || s.Requests != 110 || s.OK != 100 || s.Outcomes["slo"] != 10 || s.Outcomes["queue_full"] != 0 {
		t.Fatalf("summary %+v: want 60 s, 110 requests, 100 ok, 10 refused for slo, none of the old burst", s)
	}
	if s.P50 != 0.5 || s.P95 != 0.95 {
		t.Fatalf("p50 %v, p95 %v; want 0.5 and 0.95", s.P50, s.P95)
	}
	if s.Within != 50 || s.Goodput != 50.0/60 || s.PerSecond != 110.0/60 {
		t.Fatalf("within %d, goodput %v, rate %v; want 50 within 500 ms, 50/60 and 110/60 per second", s.Within, s.Goodput, s.PerSecond)
	}
}

// Just after start the rates are over the time since start, not a minute.
func TestSummaryJustAfterStart(t *testing.T) {
	t0 := time.Unix(2_000_000, 0)
	w := New(t0)
	for range 20 {
		w.Add(t0.Add(time.Second), "ok", time.Second)
	}
	s := w.Summary(t0.Add(2*time.Second), 0)
	if s.Seconds != 2 || s.PerSecond != 10 || s.Goodput != 10 {
		t.Fatalf("summary %+v: want 20 answers over 2 s, 10 per second", s)
	}
	if e := New(t0).Summary(t0.Add(time.Second), time.Second); e.Requests != 0 || e.P95 != 0 || e.Outcomes == nil {
		t.Fatalf("empty window: %+v", e)
	}
}
