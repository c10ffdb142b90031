package enginemetrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Reading
	}{
		{"testdata/vllm-v1.txt", Reading{Running: 37, Waiting: 5, KVUsage: 0.8125, Preemptions: 12}},
		{"testdata/vllm-v0.txt", Reading{Running: 4, Waiting: 0, KVUsage: 0.25}},
	} {
		f, err := os.Open(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(f)
		f.Close()
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", tc.file, got, err, tc.want)
		}
	}
	// Two engines (data parallel): counts add up, the KV fill is their mean.
	two := `vllm:num_requests_running{engine="0"} 3
vllm:num_requests_running{engine="1"} 4
vllm:kv_cache_usage_perc{engine="0"} 0.5
vllm:kv_cache_usage_perc{engine="1"} 0.7
`
	if got, err := Parse(strings.NewReader(two)); err != nil || got.Running != 7 || got.KVUsage < 0.599 || got.KVUsage > 0.601 {
		t.Errorf("two engines: %+v, %v", got, err)
	}
	if _, err := Parse(strings.NewReader("node_load1 0.5\n")); !errors.Is(err, ErrNotVLLM) {
		t.Errorf("a non-vLLM page: %v, want ErrNotVLLM", err)
	}
	if _, err := Parse(strings.NewReader("vllm:num_requests_running{ 3\n")); err == nil {
		t.Error("malformed text parsed")
	}
}

func FuzzParse(f *testing.F) {
	for _, file := range []string{"testdata/vllm-v1.txt", "testdata/vllm-v0.txt"} {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(data))
	}
	f.Add("vllm:num_requests_running NaN\n")
	// No per-input goroutine or timer here: they made coverage vary from run
	// to run, so the fuzzer kept minimizing "new" inputs. A Parse that hangs
	// stops the executions, and make fuzz (internal/fuzzrun) fails on that.
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(strings.NewReader(s))
		if err != nil && r != (Reading{}) {
			t.Fatalf("an error with a reading: %+v %v", r, err)
		}
		again, err2 := Parse(strings.NewReader(s))
		if (err == nil) != (err2 == nil) || (err == nil && !same(r, again)) {
			t.Fatalf("not deterministic: %+v %v / %+v %v", r, err, again, err2)
		}
	})
}

func same(a, b Reading) bool {
	eq := func(x, y float64) bool { return x == y || (x != x && y != y) } // NaN equals NaN here
	return eq(a.Running, b.Running) && eq(a.Waiting, b.Waiting) && eq(a.KVUsage, b.KVUsage) && eq(a.Preemptions, b.Preemptions)
}

// The scraper reads only while the engine is active, keeps the last good
// reading through failures, and its age makes it stale.
func TestScraper(t *testing.T) {
	var running atomic.Int64
	var broken atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if broken.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "vllm:num_requests_running "+itoa(running.Load())+"\nvllm:num_requests_waiting 1\nvllm:kv_cache_usage_perc 0.5\n")
	}))
	defer srv.Close()
	s := NewScraper(srv.URL, 20*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var active atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx, active.Load)
	time.Sleep(100 * time.Millisecond)
	if !s.Latest().At.IsZero() {
		t.Fatal("scraped while the engine was not active")
	}
	if s.Freshness(s.Latest(), time.Now()) == Fresh {
		t.Fatal("no reading is not stale")
	}
	running.Store(9)
	active.Store(true)
	waitFor(t, func() bool { return s.Latest().Running == 9 })
	if r := s.Latest(); r.Waiting != 1 || r.KVUsage != 0.5 || s.Freshness(r, time.Now()) != Fresh {
		t.Fatalf("reading %+v", r)
	}
	broken.Store(true)
	time.Sleep(100 * time.Millisecond)
	r := s.Latest()
	if r.Running != 9 || s.Freshness(r, time.Now()) == Fresh {
		t.Fatalf("after failures: %+v, stale %v; want the last reading, stale", r, s.Freshness(r, time.Now()) != Fresh)
	}
	// Stale holds dispatching for a bounded time only, then the readings
	// are ignored (and that is logged once).
	if f := s.Freshness(r, r.At.Add(time.Second)); f != Stale {
		t.Fatalf("a 1 s old reading: freshness %d, want Stale", f)
	}
	if f := s.Freshness(r, r.At.Add(StaleHold+time.Millisecond)); f != Expired {
		t.Fatalf("a reading older than StaleHold: freshness %d, want Expired", f)
	}
	if f := s.Freshness(r, r.At.Add(10*time.Millisecond)); f != Fresh {
		t.Fatalf("a 10 ms old reading: freshness %d, want Fresh", f)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s)
	if n, err := testutil.GatherAndCount(reg, "llmlab_engine_requests_running", "llmlab_engine_metrics_scrapes_total"); err != nil || n != 3 {
		t.Fatalf("metrics: %d series, %v", n, err)
	}
}

// Scrapes share one connection to the engine, whether it answers or
// fails with an error page.
func TestScraperReusesConnection(t *testing.T) {
	var conns, scrapes atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if scrapes.Add(1)%2 == 0 {
			http.Error(w, strings.Repeat("busy ", 400), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "vllm:num_requests_running 1\n")
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	s := NewScraper(srv.URL, 5*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx, func() bool { return true })
	waitFor(t, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.ok >= 4 && s.failed >= 4
	})
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d scrapes opened %d connections, want 1", scrapes.Load(), n)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An engine without /metrics (Ollama answers 404) is asked once, not every
// interval.
func TestScraperLeavesAnEngineWithoutMetrics(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.NotFound(w, r)
	}))
	defer srv.Close()
	s := NewScraper(srv.URL, 10*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx, func() bool { return true })
	waitFor(t, func() bool { return hits.Load() >= 1 })
	time.Sleep(200 * time.Millisecond)
	if n := hits.Load(); n != 1 {
		t.Fatalf("%d scrapes of a 404 /metrics in 200 ms at a 10 ms interval, want 1 (then one every %s)", n, NoMetricsRetry)
	}
	if !s.Latest().At.IsZero() {
		t.Fatal("a reading from a 404")
	}
}

func TestSaturated(t *testing.T) {
	for _, tc := range []struct {
		s    Signals
		want bool
	}{
		{Signals{}, false}, // no metrics: nothing to act on
		{Signals{Known: true, Waiting: 0, KVUsage: 0.99}, false},
		{Signals{Known: true, Waiting: 3, KVUsage: 0.5}, false}, // between steps
		{Signals{Known: true, Waiting: 1, KVUsage: 0.96}, true},
		{Signals{Known: true, Waiting: 1, KVUsage: 0.95}, true}, // the threshold itself
		{Signals{Known: true, Stale: true}, true},               // stale counts as saturated
		{Signals{Stale: true, Waiting: 9, KVUsage: 1}, false},   // not known: nothing to act on
	} {
		if got := tc.s.Saturated(); got != tc.want {
			t.Errorf("%+v: Saturated %v, want %v", tc.s, got, tc.want)
		}
	}
}
