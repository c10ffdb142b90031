package sim

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// names lists the sequences' names in order, for readable failures.
func names(list []*seq, name map[*seq]string) []string {
	var out []string
	for _, s := range list {
		out = append(out, name[s])
	}
	return out
}

// seqAt is a sequence of prompt tokens with the given priority, arrived
// at t0 plus at.
func seqAt(t0 time.Time, at time.Duration, priority, prompt, maxTokens int) *seq {
	s := newSeq(prompt, maxTokens, make(chan struct{}, 1))
	s.arrival, s.priority = t0.Add(at), priority
	return s
}

// The waiting queue as vLLM's request_queue.py keeps it: first come first
// served, or by (priority, arrival) under the priority policy, where a
// preempted sequence goes back by its own (priority, arrival) rather than
// to the front.
func TestWaitingOrder(t *testing.T) {
	for _, tc := range []struct {
		policy      string
		want        []string // after submission
		wantPreempt []string // after the running batch sequence is preempted
	}{
		{PolicyFCFS, []string{"batch", "late", "early", "tie"}, []string{"running", "batch", "late", "early", "tie"}},
		{PolicyPriority, []string{"early", "tie", "late", "batch"}, []string{"early", "tie", "late", "running", "batch"}},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			e := NewEngine(Config{MaxNumSeqs: 8, MaxNumBatchedTokens: 1024, KVBlocks: 100, SchedulingPolicy: tc.policy}, nil)
			t0 := time.Now()
			// Submitted in this order; "early" and "tie" arrived at the
			// same time, and "tie" was submitted after it.
			batch, late, early, tie := seqAt(t0, 0, 1, 16, 4), seqAt(t0, 3*time.Second, 0, 16, 4), seqAt(t0, time.Second, 0, 16, 4), seqAt(t0, time.Second, 0, 16, 4)
			running := seqAt(t0, -time.Second, 1, 16, 4) // batch, arrived before everyone
			name := map[*seq]string{batch: "batch", late: "late", early: "early", tie: "tie", running: "running"}
			e.Submit(batch, late, early, tie)
			e.takeIncoming()
			if got := names(e.waiting, name); !cmp.Equal(got, tc.want) {
				t.Fatalf("waiting after submission = %v, want %v", got, tc.want)
			}
			e.running = []*seq{running}
			e.preempt(running)
			if got := names(e.waiting, name); !cmp.Equal(got, tc.wantPreempt) {
				t.Fatalf("waiting after a preemption = %v, want %v", got, tc.wantPreempt)
			}
		})
	}
}

// A step that runs out of KV blocks preempts vLLM's victim: the last
// running sequence first come first served, the one with the worst
// (priority, arrival) under the priority policy, even one scheduled
// earlier in the same step, which gives its share back. Nothing waiting
// is admitted in a step that preempted.
func TestPreemptionVictim(t *testing.T) {
	for _, tc := range []struct {
		policy    string
		preempted string
		chunks    []string
		free      int
	}{
		// The interactive sequence, last in the running list, is preempted
		// to make room for the batch one ahead of it, and frees its 1 block.
		{PolicyFCFS, "interactive", []string{"batch"}, 1},
		// The batch one is preempted, though it came first and had its
		// token: its 3 blocks are freed and the interactive one takes 1.
		{PolicyPriority, "batch", []string{"interactive"}, 2},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			e := NewEngine(Config{Profile: testProfile, MaxNumSeqs: 8, MaxNumBatchedTokens: 1024, KVBlocks: 4, SchedulingPolicy: tc.policy}, nil)
			t0 := time.Now()
			// Both decode: the batch sequence (first in the running list)
			// needs its 3rd block for token 34, the interactive one its
			// 2nd for token 18; one block is free.
			batch := seqAt(t0, 0, 1, 16, 100)
			batch.generated.Store(17)
			batch.computed, batch.blocks = 32, 2
			inter := seqAt(t0, time.Second, 0, 16, 100)
			inter.generated.Store(1)
			inter.computed, inter.blocks = 16, 1
			waiting := seqAt(t0, 2*time.Second, 0, 1, 1) // fits in no block once preempted ones are back
			name := map[*seq]string{batch: "batch", inter: "interactive", waiting: "waiting"}
			e.running = []*seq{batch, inter}
			e.freeBlocks = 1
			e.Submit(waiting)
			e.takeIncoming()

			tokens, _, _, chunks := e.schedule()
			var got []string
			for _, c := range chunks {
				got = append(got, name[c.s])
				if c.n != 1 {
					t.Errorf("%s's chunk = %d tokens, want 1 (a decode)", name[c.s], c.n)
				}
			}
			if !cmp.Equal(got, tc.chunks) || tokens != 1 {
				t.Errorf("the step computes %v (%d tokens), want %v (1 token)", got, tokens, tc.chunks)
			}
			for s, n := range name {
				want := 0
				if n == tc.preempted {
					want = 1
				}
				if s.preemptions != want {
					t.Errorf("%s preempted %d times, want %d", n, s.preemptions, want)
				}
			}
			if got := names(e.running, name); !cmp.Equal(got, tc.chunks) {
				t.Errorf("running = %v, want %v", got, tc.chunks)
			}
			if e.freeBlocks != tc.free {
				t.Errorf("free blocks = %d, want %d", e.freeBlocks, tc.free)
			}
			if got := names(e.waiting, name); len(got) != 2 || !strings.Contains(strings.Join(got, " "), "waiting") {
				t.Errorf("waiting = %v, want the preempted one and the one that was waiting (none admitted)", got)
			}
		})
	}
}

// Through the HTTP API: the body's "priority" and vLLM's X-Vllm-Priority
// header (which wins) order the waiting queue under the priority policy;
// first come first served, they change nothing.
func TestPriorityOverHTTP(t *testing.T) {
	for _, tc := range []struct {
		policy string
		want   []string
	}{
		{PolicyFCFS, []string{"body 1", "body 0", "header 5"}},
		{PolicyPriority, []string{"body 0", "body 1", "header 5"}},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			sim := NewServer(Options{Model: "qwen", Engine: Config{Profile: testProfile, MaxNumSeqs: 1, MaxNumBatchedTokens: 4096,
				MaxModelLen: 1024, KVBlocks: 10000, SchedulingPolicy: tc.policy}})
			stop := make(chan struct{})
			go sim.engine.Loop(stop)
			srv := httptest.NewServer(sim.Handler())
			t.Cleanup(func() { srv.Close(); close(stop) })
			srvEngine := sim.engine
			<-srvEngine.Pause(false) // arrivals queue until Resume
			var mu sync.Mutex
			var order []string
			var wg sync.WaitGroup
			for i, r := range []struct{ label, body, header string }{
				{"body 1", `{"prompt":"a","max_tokens":2,"ignore_eos":true,"priority":1}`, ""},
				{"body 0", `{"prompt":"b","max_tokens":2,"ignore_eos":true}`, ""},
				{"header 5", `{"prompt":"c","max_tokens":2,"ignore_eos":true,"priority":-3}`, "5"},
			} {
				wg.Go(func() {
					req, _ := http.NewRequest("POST", srv.URL+"/v1/completions", strings.NewReader(r.body))
					if r.header != "" {
						req.Header.Set(PriorityHeader, r.header)
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					mu.Lock()
					order = append(order, r.label)
					mu.Unlock()
				})
				// One at a time, so that arrival follows the list.
				for deadline := time.Now().Add(5 * time.Second); srvEngine.waitingN.Load() < int32(i+1); time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatal("the request never reached the engine")
					}
				}
			}
			srvEngine.Resume()
			wg.Wait()
			if !cmp.Equal(order, tc.want) {
				t.Fatalf("answered in the order %v, want %v", order, tc.want)
			}
		})
	}
}
