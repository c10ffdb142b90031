package sim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sleep mode as vLLM's source has it (the tree docs/engine-contract.md
// names; paths relative to it):
//
//   - POST /sleep?level=L&mode=M (vllm/entrypoints/serve/dev/sleep/api_router.py)
//     pauses the scheduler by mode (vllm/v1/engine/core.py, sleep and
//     pause_scheduler), then the executor sleeps: level 1 copies the
//     allocations tagged "weights" to host memory and discards the rest
//     (the KV cache), level 2 discards everything
//     (vllm/device_allocator/sleep_mode_backend.py, CuMemBackend.suspend:
//     offload_tags=("weights",) if level == 1 else ()). Level 0 pauses the
//     scheduler only. An executor that already sleeps does nothing
//     ("Executor is already sleeping.", vllm/v1/executor/abstract.py): a
//     sleep cannot be deepened in place, from level 1 to level 2 the engine
//     must be woken first.
//   - POST /wake_up[?tags=weights|kv_cache] maps the tags' memory back and
//     copies what was offloaded into it (vllm/device_allocator/cumem.py,
//     wake_up); without tags, every tag. A tag that is not asleep makes the
//     executor ignore the call. The scheduler resumes once no tag sleeps.
//     After level 2 the weights' memory comes back empty: the weights must
//     be reloaded (POST /collective_rpc {"method":"reload_weights"},
//     vllm/v1/worker/gpu_model_runner.py, reload_weights, from disk)
//     before the scheduler resumes, so the order is wake_up?tags=weights,
//     reload_weights, wake_up?tags=kv_cache (docs/features/sleep_mode.md).
//     A bare /wake_up after level 2 resumes the scheduler on empty
//     weights: vLLM answers with garbage, the simulator counts those
//     answers (llmlab_sim_answers_without_weights_total).
//   - vllm:engine_sleep_state{sleep_state} is set as vLLM's
//     record_sleep_state sets it (vllm/v1/engine/async_llm.py,
//     vllm/v1/metrics/loggers.py): at each /sleep to its level, even one
//     the executor ignored, and at each /wake_up to awake, even a partial
//     one.
//
// Times: a wake-up takes the profile's WakeTime for the two tags, half of
// it each; reload_weights reads the profile's weights at its disk read
// rate (Profile.DiskReadRate). Waking from level 2 so takes WakeTime plus
// Weights over that rate (Profile.DeepWakeTime).

// Memory tags of vLLM's sleep-mode allocator.
const (
	tagWeights = "weights"
	tagKV      = "kv_cache"
)

// sleepState is the engine's sleep mode. One sleep, wake-up or reload runs
// at a time (vLLM's engine core handles them one by one).
type sleepState struct {
	mu sync.Mutex
	// paused: the scheduler holds new sequences (every level, 0 too).
	paused bool
	// asleep are the tags whose memory is released.
	asleep []string
	// emptyWeights: the weights were discarded (level 2) and not reloaded;
	// read without mu by the answers.
	emptyWeights atomic.Bool
}

// sleeping is GET /is_sleeping: the scheduler is paused or a tag sleeps
// (vllm/v1/engine/core.py, is_sleeping). Call with mu held.
func (st *sleepState) sleeping() bool { return st.paused || len(st.asleep) > 0 }

// sleepMetrics are vLLM's vllm:engine_sleep_state and the simulator's
// count of answers computed on discarded weights.
type sleepMetrics struct {
	state          *prometheus.GaugeVec
	withoutWeights prometheus.Counter
}

func newSleepMetrics(reg prometheus.Registerer, model string) *sleepMetrics {
	m := &sleepMetrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "vllm:engine_sleep_state",
			Help:        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
			ConstLabels: prometheus.Labels{"model_name": model, "engine": "0"}}, []string{"sleep_state"}),
		withoutWeights: prometheus.NewCounter(prometheus.CounterOpts{Name: "llmlab_sim_answers_without_weights_total",
			Help: "Answers computed after a wake-up from sleep level 2 that did not reload the weights (vLLM answers garbage then)."}),
	}
	reg.MustRegister(m.state, m.withoutWeights)
	m.record(false, 0)
	return m
}

// record is vLLM's record_sleep_state(sleep, level).
func (m *sleepMetrics) record(sleep bool, level int) {
	awake, offloaded, discarded := 1.0, 0.0, 0.0
	if sleep {
		awake = 0
		switch level {
		case 1:
			offloaded = 1
		case 2:
			discarded = 1
		}
	}
	m.state.WithLabelValues("awake").Set(awake)
	m.state.WithLabelValues("weights_offloaded").Set(offloaded)
	m.state.WithLabelValues("discard_all").Set(discarded)
}

// sleep is vLLM's POST /sleep?level=L&mode=M: mode abort (the default)
// ends the requests in the engine, wait lets them finish, keep holds them;
// in every mode requests that arrive while asleep queue until the
// scheduler resumes (vllm/v1/engine/core.py, pause_scheduler). It answers
// once the engine sleeps.
func (s *Server) sleep(w http.ResponseWriter, r *http.Request) {
	level, err := 1, error(nil)
	if q := r.URL.Query(); q.Has("level") {
		level, err = strconv.Atoi(q.Get("level"))
	}
	if err != nil {
		// int(level) raises; FastAPI answers an unhandled exception so.
		http.Error(w, "Internal Server Error", http.StatusInternalServerError)
		return
	}
	mode := r.URL.Query().Get("mode")
	if mode == "" {
		mode = "abort"
	}
	if mode != "abort" && mode != "wait" && mode != "keep" {
		vllmError(w, http.StatusInternalServerError, "InternalServerError", "Invalid pause mode: "+mode)
		return
	}
	st := &s.sleepSt
	st.mu.Lock()
	defer st.mu.Unlock()
	idle := s.engine.Pause(mode == "abort")
	st.paused = true
	if mode != "keep" {
		select {
		case <-idle:
		case <-r.Context().Done():
			return
		}
	}
	if level >= 1 && len(st.asleep) == 0 {
		// Level 1 keeps the weights (in host memory), level 2 and above
		// discard them; both discard the KV cache.
		st.asleep = []string{tagWeights, tagKV}
		st.emptyWeights.Store(level >= 2)
	}
	// vLLM records the level asked for, even when the executor already
	// slept and ignored it.
	s.sleepM.record(true, min(level, 2))
}

// wakeUp is vLLM's POST /wake_up[?tags=...].
func (s *Server) wakeUp(w http.ResponseWriter, r *http.Request) {
	tags := r.URL.Query()["tags"]
	tags = slices.DeleteFunc(tags, func(t string) bool { return t == "scheduling" })
	st := &s.sleepSt
	st.mu.Lock()
	defer st.mu.Unlock()
	wake := tags
	if len(r.URL.Query()["tags"]) == 0 {
		wake = slices.Clone(st.asleep) // every tag
	}
	// The executor ignores a call naming a tag that is not asleep.
	ignored := slices.ContainsFunc(wake, func(t string) bool { return !slices.Contains(st.asleep, t) })
	if !ignored && len(wake) > 0 {
		time.Sleep(time.Duration(len(wake)) * s.opt.Engine.Profile.WakeTime / 2)
		st.asleep = slices.DeleteFunc(st.asleep, func(t string) bool { return slices.Contains(wake, t) })
	}
	if len(st.asleep) == 0 && st.paused {
		st.paused = false
		s.engine.Resume()
	}
	s.sleepM.record(false, 0)
}

// collectiveRPC is vLLM's POST /collective_rpc
// (vllm/entrypoints/serve/dev/rpc/api_router.py); of the workers' methods
// the simulator models reload_weights, which reads the weights from disk.
func (s *Server) collectiveRPC(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Method *string `json:"method"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "{\"detail\":%q}\n", "JSON decode error: "+err.Error())
		return
	}
	if body.Method == nil {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintln(w, `{"detail":"Missing 'method' in request body"}`)
		return
	}
	if *body.Method != "reload_weights" {
		vllmError(w, http.StatusInternalServerError, "InternalServerError", "the simulator models only reload_weights, not "+*body.Method)
		return
	}
	st := &s.sleepSt
	st.mu.Lock()
	defer st.mu.Unlock()
	if slices.Contains(st.asleep, tagWeights) {
		// vLLM would write into unmapped memory: wake the weights first.
		vllmError(w, http.StatusInternalServerError, "InternalServerError", "the weights' memory is asleep: POST /wake_up?tags=weights first")
		return
	}
	time.Sleep(s.opt.Engine.Profile.ReloadTime())
	st.emptyWeights.Store(false)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintln(w, `{"results":[null]}`)
}

// isSleeping is vLLM's GET /is_sleeping.
func (s *Server) isSleeping(w http.ResponseWriter, _ *http.Request) {
	s.sleepSt.mu.Lock()
	asleep := s.sleepSt.sleeping()
	s.sleepSt.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"is_sleeping\":%t}\n", asleep)
}

// noteAnswer counts an answer computed on discarded weights.
func (s *Server) noteAnswer() {
	if s.sleepSt.emptyWeights.Load() {
		s.sleepM.withoutWeights.Inc()
	}
}
