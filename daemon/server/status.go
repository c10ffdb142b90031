package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/gateway"
	"github.com/llmlab/llmlab/daemon/gpu"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/daemon/recent"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

// statusSource answers /status and builds the sd_notify STATUS= line. It
// reveals no prompts and no keys.
type statusSource struct {
	gw      *gateway.Gateway
	engine  gateway.Engine
	sup     *supervisor.Supervisor // nil when the engine is managed elsewhere
	gpu     *gpu.Monitor           // nil when gpu.enabled is false
	started time.Time
	// activated says the API listeners came from systemd's socket.
	activated bool

	mu       sync.Mutex
	cfg      *config.Config
	loadedAt time.Time // when cfg was read
}

func (s *statusSource) cfgNow() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

func (s *statusSource) setCfg(c *config.Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg, s.loadedAt = c, time.Now()
}

// line is the STATUS= text, e.g. "engine external; 3 queued, 12 in flight".
func (s *statusSource) line() string {
	q := s.gw.QueueStats()
	return fmt.Sprintf("engine %s; %d queued, %d in flight", s.engine.State(), q.Queued, q.Inflight)
}

// Status is the document GET /status answers with (llmlab status reads
// it). It reveals no prompts and no keys.
type Status struct {
	// Service is llmlabd itself.
	Service struct {
		PID     int       `json:"pid"`
		Started time.Time `json:"started"`
		// Activated says the API listeners came from systemd's socket.
		Activated bool `json:"socket_activated"`
		// IdleExit is how long llmlabd stays up with nothing to do (0:
		// it never exits on idle).
		IdleExitSeconds float64 `json:"idle_exit_seconds"`
	} `json:"service"`
	Config struct {
		Path     string    `json:"path"`
		LoadedAt time.Time `json:"loaded_at"`
	} `json:"config"`
	// SLO is the p95 latency objective (0: none).
	SLO struct {
		LatencySeconds float64 `json:"latency_seconds"`
	} `json:"slo"`
	// Recent is the last minute's answers.
	Recent recent.Summary `json:"recent"`
	Engine struct {
		State string `json:"state"`
		URL   string `json:"url"`
		// Managed says llmlabd starts and stops the engine; Unit names its
		// systemd unit when it does so through systemd.
		Managed bool   `json:"managed"`
		Unit    string `json:"unit,omitempty"`
		// Lifecycle is the state's history in brief (managed engines).
		Lifecycle *supervisor.Info `json:"lifecycle,omitempty"`
		// ExpectedStartSeconds is the learned start time (supervised engines).
		ExpectedStartSeconds float64 `json:"expected_start_seconds,omitempty"`
		// SleepLevel is vLLM's sleep level the engine is at: 1 (the state
		// sleeping) or 2 (deep_sleeping); 0 when it is not asleep.
		SleepLevel int `json:"sleep_level,omitempty"`
		// ExpectedWakeSeconds is the learned wake-up time from sleep level
		// 1 and 2 (by "1" and "2"), where the sleep ladder has a sleep
		// rung.
		ExpectedWakeSeconds map[string]float64 `json:"expected_wake_seconds,omitempty"`
		// MaxModelLen is the context length the engine reported (0: not
		// known: the engine is not ready, or does not say).
		MaxModelLen int `json:"max_model_len"`
	} `json:"engine"`
	Queue  queue.Stats `json:"queue"`
	Limits struct {
		Concurrency        string  `json:"concurrency"`
		MaxWaitSeconds     float64 `json:"max_wait_seconds"`
		BatchWindowSeconds float64 `json:"batch_window_seconds"`
		MaxBatch           int     `json:"max_batch"`
		Coalesce           bool    `json:"coalesce"`
		MaxTokens          int     `json:"max_tokens"`
		MaxBodyBytes       int64   `json:"max_body_bytes"`
		Rate               float64 `json:"rate"`
		Burst              int     `json:"burst"`
		GlobalRate         float64 `json:"global_rate"`
		GlobalBurst        int     `json:"global_burst"`
	} `json:"limits"`
	Models        []string `json:"models"`
	UptimeSeconds float64  `json:"uptime_seconds"`
	// GPU is the latest NVML reading, or why there is none.
	GPU *GPUStatus `json:"gpu"`
}

// GPUStatus is the latest NVML reading and its age.
type GPUStatus struct {
	gpu.Snapshot
	AgeSeconds float64 `json:"age_seconds"`
}

func (s *statusSource) serve(w http.ResponseWriter, _ *http.Request) {
	cfg := s.cfgNow()
	var d Status
	s.mu.Lock()
	d.Config.LoadedAt = s.loadedAt
	s.mu.Unlock()
	d.Service.PID = os.Getpid()
	d.Service.Started = s.started
	d.Service.Activated = s.activated
	d.Service.IdleExitSeconds = cfg.Gateway.ExitIdleTimeout.Seconds()
	d.Config.Path = cfg.Path
	d.SLO.LatencySeconds = cfg.SLO.Latency.Seconds()
	d.Recent = s.gw.Recent()
	d.Engine.State = string(s.engine.State())
	d.Engine.Unit = cfg.Engine.Unit
	if s.sup != nil {
		info := s.sup.Info()
		d.Engine.Managed, d.Engine.Lifecycle = true, &info
	}
	d.Engine.URL = cfg.Engine.URL.Redacted()
	d.Engine.MaxModelLen = s.gw.MaxModelLen()
	if s.sup != nil {
		d.Engine.ExpectedStartSeconds = s.sup.LearnedStart().Seconds()
		d.Engine.SleepLevel = s.engine.State().SleepLevel()
		if cfg.Engine.SleepMode() {
			d.Engine.ExpectedWakeSeconds = map[string]float64{"1": s.sup.ExpectedWake(1).Seconds(), "2": s.sup.ExpectedWake(2).Seconds()}
		}
	}
	d.Queue = s.gw.QueueStats()
	d.Limits.Concurrency = cfg.Queue.Concurrency
	d.Limits.MaxWaitSeconds = cfg.Queue.MaxWait.Seconds()
	d.Limits.BatchWindowSeconds = cfg.Queue.BatchWindow.Seconds()
	d.Limits.MaxBatch = cfg.Queue.MaxBatch
	d.Limits.Coalesce = cfg.Queue.Coalesce
	d.Limits.MaxTokens = cfg.Limits.MaxTokens
	d.Limits.MaxBodyBytes = cfg.Limits.MaxBodyBytes
	d.Limits.Rate, d.Limits.Burst = cfg.Limits.Rate, cfg.Limits.Burst
	d.Limits.GlobalRate, d.Limits.GlobalBurst = cfg.Limits.GlobalRate, cfg.Limits.GlobalBurst
	d.Models = cfg.Engine.Models
	d.UptimeSeconds = time.Since(s.started).Seconds()
	if s.gpu != nil {
		snap := s.gpu.Snapshot()
		d.GPU = &GPUStatus{Snapshot: snap}
		if !snap.At.IsZero() {
			d.GPU.AgeSeconds = time.Since(snap.At).Seconds()
		}
	} else {
		d.GPU = &GPUStatus{Snapshot: gpu.Snapshot{Reason: "gpu.enabled is false"}}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(d)
}
