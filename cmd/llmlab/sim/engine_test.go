package sim

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// testProfile has round numbers: a step costs 10 ms + 1 ms per token
// processed + 0 per KV token read.
var testProfile = Profile{Name: "test", StepFixed: 10 * time.Millisecond, PerToken: time.Millisecond}

func newTestEngine(t *testing.T, cfg Config) (*Engine, *metrics, func()) {
	t.Helper()
	cfg.Profile = testProfile
	if cfg.MaxModelLen == 0 {
		cfg.MaxModelLen = 1 << 20
	}
	m := newMetrics(prometheus.NewRegistry(), "m")
	e := NewEngine(cfg, m)
	stop := make(chan struct{})
	go e.Loop(stop)
	return e, m, func() { close(stop) }
}

// waitDone waits for s to finish and returns when (since start) its first
// token and its last token came.
func waitDone(t *testing.T, s *seq, start time.Time) (first, last time.Duration) {
	t.Helper()
	for !s.done.Load() {
		<-s.notify
	}
	return time.Unix(0, s.firstTok.Load()).Sub(start), time.Since(start)
}

func TestStepTimes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, _, stop := newTestEngine(t, Config{MaxNumSeqs: 8, MaxNumBatchedTokens: 1024, KVBlocks: 100})
		defer stop()
		start := time.Now()
		s := newSeq(32, 3, make(chan struct{}, 1))
		e.Submit(s)
		first, last := waitDone(t, s, start)
		// Step 1 prefills 32 tokens (10+32 ms) and samples token 1; steps 2
		// and 3 decode one token each (11 ms).
		if first != 42*time.Millisecond || last != 64*time.Millisecond {
			t.Fatalf("first token at %s, last at %s; want 42ms and 64ms", first, last)
		}
		if g := s.generated.Load(); g != 3 {
			t.Fatalf("generated %d tokens, want 3", g)
		}
	})
}

func TestChunkedPrefill(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, _, stop := newTestEngine(t, Config{MaxNumSeqs: 8, MaxNumBatchedTokens: 16, KVBlocks: 100})
		defer stop()
		start := time.Now()
		s := newSeq(40, 1, make(chan struct{}, 1))
		e.Submit(s)
		first, _ := waitDone(t, s, start)
		// 40 prompt tokens in chunks of 16, 16 and 8: 26 + 26 + 18 ms.
		if first != 70*time.Millisecond {
			t.Fatalf("first token at %s, want 70ms", first)
		}
	})
}

// Throughput saturates at max_num_seqs: the third sequence waits for a
// running one to finish.
func TestMaxNumSeqs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, m, stop := newTestEngine(t, Config{MaxNumSeqs: 2, MaxNumBatchedTokens: 1024, KVBlocks: 100})
		defer stop()
		start := time.Now()
		var seqs []*seq
		for range 3 {
			s := newSeq(10, 2, make(chan struct{}, 1))
			seqs = append(seqs, s)
		}
		e.Submit(seqs...)
		synctest.Wait()
		if v := testutil.ToFloat64(m.running); v != 2 {
			t.Fatalf("running = %v, want 2", v)
		}
		if v := testutil.ToFloat64(m.waiting); v != 1 {
			t.Fatalf("waiting = %v, want 1", v)
		}
		_, last0 := waitDone(t, seqs[0], start)
		waitDone(t, seqs[1], start)
		first2, _ := waitDone(t, seqs[2], start)
		// Step 1: prefill 20 tokens (30 ms); step 2: decode 2 (12 ms): both
		// done at 42 ms. The third is prefilled in step 3 (10+10 ms).
		if last0 != 42*time.Millisecond || first2 != 62*time.Millisecond {
			t.Fatalf("first pair done at %s, third's first token at %s; want 42ms and 62ms", last0, first2)
		}
	})
}

// A cache too small for both sequences preempts one; both still finish
// with every token.
func TestPreemption(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 4 blocks of 16 tokens: each sequence's cache grows to 16+17 = 33
		// tokens (3 blocks), so both cannot hold it at once.
		e, m, stop := newTestEngine(t, Config{MaxNumSeqs: 8, MaxNumBatchedTokens: 1024, KVBlocks: 4})
		defer stop()
		a, b := newSeq(16, 18, make(chan struct{}, 1)), newSeq(16, 18, make(chan struct{}, 1))
		e.Submit(a, b)
		waitDone(t, a, time.Now())
		waitDone(t, b, time.Now())
		if a.generated.Load() != 18 || b.generated.Load() != 18 {
			t.Fatalf("generated %d and %d, want 18 each", a.generated.Load(), b.generated.Load())
		}
		if v := testutil.ToFloat64(m.preemptions); v < 1 {
			t.Fatalf("preemptions = %v, want at least 1", v)
		}
		synctest.Wait()
		if e.freeBlocks != 4 {
			t.Fatalf("free blocks after both finished = %d, want 4", e.freeBlocks)
		}
	})
}

func TestCancelFreesCache(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, m, stop := newTestEngine(t, Config{MaxNumSeqs: 8, MaxNumBatchedTokens: 1024, KVBlocks: 10})
		defer stop()
		s := newSeq(64, 1000, make(chan struct{}, 1))
		e.Submit(s)
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if v := testutil.ToFloat64(m.kvUsage); v <= 0 {
			t.Fatalf("kv usage %v while running, want > 0", v)
		}
		e.Cancel(s)
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		if e.freeBlocks != 10 || len(e.running) != 0 {
			t.Fatalf("after cancel: %d free blocks, %d running; want 10 and 0", e.freeBlocks, len(e.running))
		}
	})
}

// With more work than max_num_seqs, completions per second stop growing
// with concurrency while latency keeps growing: the engine saturates.
func TestSaturation(t *testing.T) {
	run := func(n int) (rate float64, latency time.Duration) {
		synctest.Test(t, func(t *testing.T) {
			e, _, stop := newTestEngine(t, Config{MaxNumSeqs: 16, MaxNumBatchedTokens: 4096, KVBlocks: 10000})
			defer stop()
			start := time.Now()
			var seqs []*seq
			for range n {
				seqs = append(seqs, newSeq(20, 20, make(chan struct{}, 1)))
			}
			e.Submit(seqs...)
			var last time.Duration
			for _, s := range seqs {
				_, l := waitDone(t, s, start)
				last = max(last, l)
			}
			rate = float64(n) / last.Seconds()
			latency = last
		})
		return rate, latency
	}
	r16, l16 := run(16)
	r64, l64 := run(64)
	if r64 > r16*1.1 || l64 < 3*l16 {
		t.Fatalf("16 seqs: %.1f/s in %s; 64 seqs: %.1f/s in %s; want the rate to stay flat and latency to grow", r16, l16, r64, l64)
	}
}

func TestKVBlocks(t *testing.T) {
	p := Profiles["gtx1650"]
	n, err := p.KVBlocks(0.9)
	if err != nil {
		t.Fatal(err)
	}
	// 0.9 x 4 GiB - 0.99 GB of weights - 0.6 GiB = about 2.1 GiB of KV at
	// 12 KiB per token, 16 tokens a block.
	if n < 10000 || n > 12000 {
		t.Fatalf("KVBlocks(0.9) = %d, want about 11,000", n)
	}
	if _, err := p.KVBlocks(0.3); err == nil {
		t.Fatal("KVBlocks(0.3) on a 4 GiB card: want an error, the weights do not fit")
	}
}

func TestCountTokens(t *testing.T) {
	for text, want := range map[string]int{
		"Write" + repeat(" word", 199): 200,
		"Hello":                        1,
		"Hello, world!":                4,
		"":                             0,
	} {
		if got := CountTokens(text); got != want {
			t.Errorf("CountTokens(%.20q) = %d, want %d", text, got, want)
		}
	}
}

func repeat(s string, n int) string {
	out := ""
	for range n {
		out += s
	}
	return out
}
