package gateway

// What an API key's options do at the gateway: its weight reaches the
// queue's fair shares, its tokens per minute refuse with 429 and
// Retry-After, and its series are labelled by name for the keys file's
// first keys only.

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

// A key over its tokens per minute is refused 429, OpenAI-shaped, with
// the wait until its bucket holds the request in Retry-After; a request
// is charged its prompt and max_tokens and given back what its usage says
// it did not take; another key is not affected.
func TestTokensPerMinuteRefused(t *testing.T) {
	keys, err := auth.Parse("k", []byte("alice sk-alice-0123456789 tpm=100\nbob sk-bob-0123456789abc\n"))
	if err != nil {
		t.Fatal(err)
	}
	eng := &fakeengine.Engine{}
	f := newFixture(t, testConfig(), keys, eng)
	alice, bob := "Bearer sk-alice-0123456789", "Bearer sk-bob-0123456789abc"
	// 60 output tokens and a prompt of a token or two: about 61 of alice's
	// 100 taken. The fake engine reports a prompt of 10 tokens (more than
	// estimated) and max_tokens: 70 used, so 30 are left.
	resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":60}`, "Authorization", alice)
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("alice's first request: %d", resp.StatusCode)
	}
	// A second request of about 61 is refused.
	resp = f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":60}`, "Authorization", alice)
	retry := resp.Header.Get("Retry-After")
	e := apiErr(t, resp)
	if resp.StatusCode != 429 || e.Code != "rate_limit_exceeded" || e.Type != typeRateLimit || !strings.Contains(e.Message, "tokens per minute") {
		t.Fatalf("alice over her tokens per minute: %d %+v, want 429 rate_limit_exceeded about tokens per minute", resp.StatusCode, e)
	}
	// About 31 tokens short at 100 a minute: 19 s.
	if s, err := strconv.Atoi(retry); err != nil || s < 15 || s > 25 {
		t.Errorf("Retry-After %q, want about 20 s (the bucket's wait for the tokens it lacks)", retry)
	}
	if v := metricValue(f.gw.metrics.clientRefused.WithLabelValues("alice"), 1); v != 1 {
		t.Errorf("client_refused_total{alice} = %v, want 1", v)
	}
	// A smaller request fits in what came back.
	resp = f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":5}`, "Authorization", alice)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("alice's request of 5 tokens after the refusal: %d, want 200 (the unused tokens came back)", resp.StatusCode)
	}
	for range 3 {
		resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":60}`, "Authorization", bob)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("bob, without a limit: %d", resp.StatusCode)
		}
	}
}

// The key's weight reaches the queue: with one slot held, a heavy key's
// backlog queued first and a light key's request after it, the light
// key's request is the next to reach the engine.
func TestKeyWeightOrdersTheQueue(t *testing.T) {
	keys, err := auth.Parse("k", []byte("heavy sk-heavy-0123456789\nlight sk-light-0123456789 weight=2\n"))
	if err != nil {
		t.Fatal(err)
	}
	hold := make(chan struct{})
	eng := &fakeengine.Engine{Hold: hold}
	cfg := testConfig()
	cfg.Queue.MaxInflight, cfg.Queue.MaxBatch = 1, 1
	f := newFixture(t, cfg, keys, eng)
	started := eng.Started()
	var wg sync.WaitGroup
	send := func(key, prompt string) {
		wg.Go(func() {
			resp := f.post(t, "/v1/completions", `{"prompt":"`+prompt+`","max_tokens":1}`, "Authorization", "Bearer sk-"+key+"-0123456789")
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("%s: %d %s", prompt, resp.StatusCode, body)
			}
		})
	}
	send("heavy", "h0")
	<-started
	for i := 1; i <= 3; i++ {
		send("heavy", fmt.Sprintf("h%d", i))
		waitFor(t, func() bool { return f.gw.queue.Stats().Queued == i }, "the heavy key's request to queue")
	}
	send("light", "l0")
	waitFor(t, func() bool { return f.gw.queue.Stats().Queued == 4 }, "the light key's request to queue")
	queued := map[string]float64{}
	fams, err := f.reg.Gather()
	if err != nil {
		t.Error(err)
	}
	for _, fam := range fams {
		if fam.GetName() == "llmlab_client_queued_requests" {
			for _, m := range fam.Metric {
				queued[m.Label[0].GetValue()] = m.GetGauge().GetValue()
			}
		}
	}
	if queued["heavy"] != 3 || queued["light"] != 1 {
		t.Errorf("client_queued_requests = %v, want heavy 3 and light 1", queued)
	}
	close(hold)
	wg.Wait()
	var order []string
	for _, b := range eng.Bodies() {
		_, rest, _ := strings.Cut(string(b), `"prompt":"`)
		p, _, _ := strings.Cut(rest, `"`)
		order = append(order, p)
	}
	if len(order) != 5 || order[1] != "l0" {
		t.Errorf("the engine got %v, want the light key's l0 second, ahead of the heavy key's backlog", order)
	}
}

// Per-key series are labelled by the key's name for the keys file's first
// auth.MetricKeys keys and "other" beyond, exist at zero from the start,
// and count the engine's work as fair sharing does (prompt and output
// tokens from the usage).
func TestPerKeySeriesBounded(t *testing.T) {
	var b strings.Builder
	for i := range auth.MetricKeys + 3 {
		fmt.Fprintf(&b, "key%02d sk-0123456789abcdef%02d\n", i, i)
	}
	keys, err := auth.Parse("k", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, testConfig(), keys, &fakeengine.Engine{})
	if n := testutil.CollectAndCount(f.gw.metrics.clientEngine); n != auth.MetricKeys+1 {
		t.Errorf("client_engine_tokens_total has %d series before any request, want %d (every labelled key and other)", n, auth.MetricKeys+1)
	}
	for _, i := range []int{0, auth.MetricKeys, auth.MetricKeys + 2} {
		resp := f.post(t, "/v1/completions", `{"prompt":"x","max_tokens":5}`, "Authorization", fmt.Sprintf("Bearer sk-0123456789abcdef%02d", i))
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("key %d: %d", i, resp.StatusCode)
		}
	}
	if v := metricValue(f.gw.metrics.clientReqs.WithLabelValues("key00"), 1); v != 1 {
		t.Errorf("client_requests_total{key00} = %v, want 1", v)
	}
	if v := metricValue(f.gw.metrics.clientReqs.WithLabelValues(auth.OtherLabel), 2); v != 2 {
		t.Errorf("client_requests_total{other} = %v, want 2 (the keys past the first %d)", v, auth.MetricKeys)
	}
	// The fake engine reports 10 prompt tokens and max_tokens.
	if v := metricValue(f.gw.metrics.clientEngine.WithLabelValues("key00"), 15); v != 15 {
		t.Errorf("client_engine_tokens_total{key00} = %v, want 15", v)
	}
	for _, n := range []int{testutil.CollectAndCount(f.gw.metrics.clientReqs), testutil.CollectAndCount(f.gw.metrics.clientQueued)} {
		if n != auth.MetricKeys+1 {
			t.Errorf("a per-key family has %d series, want %d", n, auth.MetricKeys+1)
		}
	}
}
