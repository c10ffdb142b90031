package gateway

// Helpers shared by the gateway's tests: a gateway in front of a fake
// engine (fixture), and readers of its errors and metrics.

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

type alwaysOn struct{}

func (alwaysOn) Wake()                   {}
func (alwaysOn) State() supervisor.State { return supervisor.Ready }

type fixture struct {
	gw     *Gateway
	srv    *httptest.Server
	engine *httptest.Server
	reg    *prometheus.Registry
}

func testConfig() Config {
	return Config{
		Limits:       testLimits,
		MaxBodyBytes: 4096,
		Queue:        queue.Config{MaxInflight: 4, MaxQueued: 8, MaxWait: 5 * time.Second, MaxBatch: 4},
		AccessLog:    true,
	}
}

func newFixture(t *testing.T, cfg Config, keys *auth.Keys, engine http.Handler) *fixture {
	t.Helper()
	es := httptest.NewServer(engine)
	t.Cleanup(es.Close)
	u, _ := url.Parse(es.URL)
	cfg.EngineURL = u
	reg := prometheus.NewRegistry()
	gw := New(cfg, keys, alwaysOn{}, nil, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv := httptest.NewServer(gw.Handler())
	t.Cleanup(srv.Close)
	return &fixture{gw: gw, srv: srv, engine: es, reg: reg}
}

func (f *fixture) post(t *testing.T, path, body string, hdr ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", f.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// apiErr decodes an OpenAI-shaped error answer.
func apiErr(t *testing.T, resp *http.Response) apiError {
	t.Helper()
	defer resp.Body.Close()
	var e struct {
		Error *apiError `json:"error"`
	}
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &e); err != nil || e.Error == nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Fatalf("answer %d %s is not an OpenAI-shaped error", resp.StatusCode, data)
	}
	if e.Error.RequestID == "" || e.Error.RequestID != resp.Header.Get("X-Request-Id") {
		t.Fatalf("error request id %q, header %q: want equal and set", e.Error.RequestID, resp.Header.Get("X-Request-Id"))
	}
	return *e.Error
}

func doCtx(ctx context.Context, url, body string) {
	req, _ := http.NewRequestWithContext(ctx, "POST", url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// metricValue waits briefly for c to reach want (requests are counted just
// after their answer is written) and returns its value.
func metricValue(c prometheus.Collector, want float64) float64 {
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := testutil.ToFloat64(c)
		if v == want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(time.Millisecond)
	}
}

// histogramCount waits briefly for h to count want observations and
// returns its count.
func histogramCount(t *testing.T, h prometheus.Observer, want uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var m dto.Metric
		if err := h.(prometheus.Metric).Write(&m); err != nil {
			t.Fatal(err)
		}
		n := m.GetHistogram().GetSampleCount()
		if n == want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(time.Millisecond)
	}
}
