// Package config owns llmlab's configuration file: its schema, defaults,
// validation and the error messages an operator reads when a file is wrong.
//
// It is one idea in one file, longer than most: the file's schema, its
// defaults and its checks are one table read three ways, and a key's
// three places stay side by side so that none is forgotten.
//
// The file is TOML (see etc/llmlab.toml for every key with its comment).
// Unknown keys, malformed durations and impossible combinations are errors
// that name the file, the key and the value; all problems are reported at
// once so an operator fixes a file in one pass.
package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultPath is where the daemon looks for its configuration file.
const DefaultPath = "/etc/llmlab/llmlab.toml"

// Config is the validated configuration of llmlabd.
//
// Each key of a section carries two tags: toml, its name in the file
// (Diff and the logs use it), and reload, what a change of it needs when
// llmlabd reloads (Need): "none", the reload applies it; "daemon", it is
// read only when llmlabd starts, and a reload logs that it needs a
// restart; "engine", it is read when the engine starts, and a reload
// drains and restarts the engine; "sleep_mode", a rung of the sleep ladder
// (ladder.go): the supervisor takes the new idle time at once, and the
// engine is restarted only when the change turns vLLM's sleep mode on or
// off (Engine.SleepMode), which the engine is started with. A key without
// a reload tag fails the package's tests (TestEveryKeyDeclaresItsReload).
type Config struct {
	// Path is the file the configuration was read from ("" for defaults).
	Path     string
	Gateway  Gateway  `toml:"gateway"`
	Engine   Engine   `toml:"engine"`
	Queue    Queue    `toml:"queue"`
	Limits   Limits   `toml:"limits"`
	Auth     Auth     `toml:"auth"`
	Metrics  Metrics  `toml:"metrics"`
	Log      Log      `toml:"log"`
	GPU      GPU      `toml:"gpu"`
	SLO      SLO      `toml:"slo"`
	Balancer Balancer `toml:"balancer"`
	// Deprecated names the keys the file sets that are accepted but no
	// longer do anything, each with why; the daemon logs them.
	Deprecated []string
	// Notes say where a value was adjusted to fit another (a minimum above
	// its maximum); the daemon logs them and check-config prints them.
	Notes []string
}

// Balancer configures what llmlabd tells a load balancer in front of a
// fleet of llmlab hosts (docs/scaling.md).
type Balancer struct {
	// AgentListen is the address of HAProxy's agent check ("": off).
	// llmlabd opens it itself, never through socket activation.
	AgentListen string `toml:"agent_listen" reload:"daemon"`
	// Balancers is the number of balancers (or backends) that ask the
	// agent: the capacity it advertises is shared among them.
	Balancers int `toml:"balancers" reload:"none"`
}

// SLO is the service-level objective admission works to.
type SLO struct {
	// Latency is the p95 latency objective of interactive requests (0:
	// none).
	Latency time.Duration `toml:"latency" reload:"none"`
	// AllowLongerDeadlines lets a client's own deadline (the
	// X-Llmlab-Deadline header) be longer than Latency for interactive
	// requests; otherwise Latency caps it.
	AllowLongerDeadlines bool `toml:"allow_longer_deadlines" reload:"none"`
}

// GPU configures the NVML readings and the engine's memory share.
type GPU struct {
	// Enabled loads NVML; false never touches it.
	Enabled      bool          `toml:"enabled" reload:"daemon"`
	Device       int           `toml:"device" reload:"daemon"`
	PollInterval time.Duration `toml:"poll_interval" reload:"daemon"`
	// MemoryBudget (bytes, 0: none) gives the engine that much of the card
	// whatever its size; otherwise MemoryFraction of it.
	MemoryBudget   uint64        `toml:"memory_budget" reload:"engine"`
	MemoryFraction float64       `toml:"memory_fraction" reload:"engine"`
	ReleaseTimeout time.Duration `toml:"release_timeout" reload:"daemon"`
	// Contention lets the other compute processes' share of the GPU slow
	// what the engine model predicts (docs/gpu.md).
	Contention bool `toml:"contention" reload:"none"`
}

// Gateway configures the API listener and its lifecycle.
type Gateway struct {
	// Listen is the API address used when the daemon is not socket-activated.
	Listen string `toml:"listen" reload:"daemon"`
	// AllowPublicWithoutKeys permits a non-loopback Listen with no API keys,
	// and TrustedProxies with no API keys.
	AllowPublicWithoutKeys bool `toml:"allow_public_without_keys" reload:"none"`
	// TrustedProxies are the reverse proxies (addresses, as /32 or /128
	// prefixes, and prefixes) whose X-Forwarded-For the gateway believes:
	// a request from one of them is the client's that the header names
	// (the rightmost address that is not a trusted proxy's), for the rate
	// limit and the access log. Empty: the peer is the client. The API is
	// then as public as the proxy makes it, so without API keys they need
	// AllowPublicWithoutKeys, as a listener beyond loopback does.
	TrustedProxies []netip.Prefix `toml:"trusted_proxies" reload:"none"`
	// ShutdownGrace bounds how long in-flight requests may run after SIGTERM.
	ShutdownGrace time.Duration `toml:"shutdown_grace" reload:"none"`
	// ExitIdleTimeout makes a socket-activated daemon exit after this long
	// with nothing to do and the engine stopped (0: never).
	ExitIdleTimeout time.Duration `toml:"exit_idle_timeout" reload:"none"`
	// StateDir keeps what the daemon learns across restarts ("": not kept;
	// systemd's $STATE_DIRECTORY is used when the key is unset). It is
	// read back only at a start, so a reload does not move it.
	StateDir string `toml:"state_dir" reload:"daemon"`
	// MaxConnections caps the API connections open at once; past it a new
	// connection is answered 503 and closed.
	MaxConnections int `toml:"max_connections" reload:"none"`
	// ClientTimeout bounds how long a client may take to send its request
	// body, and how long it may leave the answer unread, before it is
	// disconnected.
	ClientTimeout time.Duration `toml:"client_timeout" reload:"none"`
}

// Engine names the inference engine the gateway proxies to.
type Engine struct {
	URL *url.URL `toml:"url" reload:"daemon"`
	// Models are the model names the engine serves; requests for other
	// names are refused before they are queued.
	Models []string `toml:"models" reload:"none"`
	// Command, when set, is the engine llmlabd starts and stops itself
	// (scale to zero); empty means the engine is managed elsewhere.
	Command []string `toml:"command" reload:"engine"`
	// Unit, when set, is the systemd unit llmlabd starts and stops through
	// the D-Bus API instead.
	Unit string `toml:"unit" reload:"engine"`
	// ResponseTimeout is the longest the engine may go without sending a
	// byte of its answer (for a non-streamed answer, the whole of it).
	ResponseTimeout time.Duration `toml:"response_timeout" reload:"none"`
	// IdleTimeout stops an idle engine: the last rung of the sleep ladder
	// (ladder.go; 0: never).
	IdleTimeout       time.Duration `toml:"idle_timeout" reload:"none"`
	StartTimeout      time.Duration `toml:"start_timeout" reload:"none"`
	ExpectedStartTime time.Duration `toml:"expected_start_time" reload:"none"`
	MaxColdStartWait  time.Duration `toml:"max_cold_start_wait" reload:"none"`
	StopGrace         time.Duration `toml:"stop_grace" reload:"none"`
	// SleepAfter puts an idle engine to sleep at vLLM's level 1 (the
	// weights kept in host memory; level 2 when the host cannot hold them),
	// and DeepSleepAfter at level 2 (the weights discarded): the ladder's
	// first rungs, before IdleTimeout stops it (ladder.go; 0: the rung is
	// left out). The engine is started with vLLM's sleep mode only when
	// one is set, so a change that turns both off, or one on, restarts it.
	SleepAfter     time.Duration `toml:"sleep_after" reload:"sleep_mode"`
	DeepSleepAfter time.Duration `toml:"deep_sleep_after" reload:"sleep_mode"`
	// RuntimeEnv is the environment file llmlabd writes before each engine
	// start ("": $RUNTIME_DIRECTORY/engine.env under systemd, else none);
	// a change takes effect at the engine's restart that it asks for.
	RuntimeEnv string `toml:"runtime_env" reload:"engine"`
	// MetricsInterval is how often the engine's /metrics is read while it
	// is ready (0: never).
	MetricsInterval time.Duration `toml:"metrics_interval" reload:"daemon"`
	// ReadyPath is what llmlabd GETs to learn that the engine serves (a 2xx
	// answer), and ReadyMatch, when set, a string that answer's body must
	// contain (for an engine that answers before its model is loaded).
	ReadyPath  string `toml:"ready_path" reload:"none"`
	ReadyMatch string `toml:"ready_match" reload:"none"`
	// MaxNumSeqs, MaxNumBatchedTokens and MaxModelLen are vLLM's knobs of
	// the same names, passed to the engine at each start (0: the engine's
	// own default). They are llmlabd's so that a reload that changes one
	// restarts the engine with it (llmlab tune-engine goes through this).
	MaxNumSeqs          int `toml:"max_num_seqs" reload:"engine"`
	MaxNumBatchedTokens int `toml:"max_num_batched_tokens" reload:"engine"`
	MaxModelLen         int `toml:"max_model_len" reload:"engine"`
	// SchedulingPolicy is vLLM's --scheduling-policy: "fcfs" (vLLM's
	// default) or "priority", under which the gateway sends each request's
	// class as its "priority" (0 interactive, 1 batch; EnginePriority). A
	// managed engine is started with it; for one managed elsewhere it says
	// how that engine runs. A change restarts a managed engine.
	SchedulingPolicy string `toml:"scheduling_policy" reload:"engine"`
}

// Scheduling policies of engine.scheduling_policy, as vLLM names them
// (vllm/config/scheduler.py, SchedulerPolicy).
const (
	PolicyFCFS     = "fcfs"
	PolicyPriority = "priority"
)

// EnginePriority reports whether the engine schedules by each request's
// priority, so that the gateway passes the request's class into it.
func (e Engine) EnginePriority() bool { return e.SchedulingPolicy == PolicyPriority }

// Queue configures admission control and micro-batching.
type Queue struct {
	MaxInflight int           `toml:"max_inflight" reload:"none"`
	MaxQueued   int           `toml:"max_queued" reload:"none"`
	MaxWait     time.Duration `toml:"max_wait" reload:"none"`
	BatchWindow time.Duration `toml:"batch_window" reload:"none"`
	// MaxBatch releases a batch as soon as this many wait (0: the in-flight
	// limit).
	MaxBatch int `toml:"max_batch" reload:"none"`
	// Coalesce merges compatible non-streamed completions of one dispatch
	// into a single upstream request with a list of prompts.
	Coalesce bool `toml:"coalesce" reload:"none"`
	// Concurrency "model" chooses the in-flight limit from the engine
	// model (daemon/enginemodel), between MinInflight and MaxInflight (and
	// engine.max_num_seqs where set), so that the typical request's tail
	// time stays within TargetLatency; "fixed" keeps MaxInflight. A file
	// that still says "adaptive" (the deleted probing law) is read as
	// "model", with a deprecation.
	Concurrency   string        `toml:"concurrency" reload:"daemon"`
	MinInflight   int           `toml:"min_inflight" reload:"none"`
	TargetLatency time.Duration `toml:"target_latency" reload:"none"`
	// BatchMaxWait and BatchShare shape the batch priority class.
	BatchMaxWait time.Duration `toml:"batch_max_wait" reload:"none"`
	BatchShare   float64       `toml:"batch_share" reload:"none"`
	// WaitUpdates: a streamed request that has waited this long in the
	// queue is answered 200 at once and told, every WaitUpdates, in SSE
	// comment lines, how many are ahead of it and when it is predicted to
	// be sent (0: never; it waits silently).
	WaitUpdates time.Duration `toml:"wait_updates" reload:"none"`
}

// FromModel reports whether the in-flight limit is chosen from the
// engine model.
func (q Queue) FromModel() bool { return q.Concurrency == "model" }

// Limits bounds what one request may ask for and how often clients may ask.
type Limits struct {
	MaxBodyBytes int64 `toml:"max_body_bytes" reload:"none"`
	// MaxTokens is also the engine's output cap, passed at its start
	// (LLMLAB_MAX_NEW_TOKENS), so a change restarts the engine.
	MaxTokens   int     `toml:"max_tokens" reload:"engine"`
	MaxN        int     `toml:"max_n" reload:"none"`
	Rate        float64 `toml:"rate" reload:"none"`
	Burst       int     `toml:"burst" reload:"none"`
	GlobalRate  float64 `toml:"global_rate" reload:"none"`
	GlobalBurst int     `toml:"global_burst" reload:"none"`
}

// Auth configures optional API keys.
type Auth struct {
	// KeysFile holds "name key" lines; "" disables authentication.
	KeysFile string `toml:"keys_file" reload:"none"`
}

// Metrics configures the Prometheus listener.
type Metrics struct {
	// Listen is the metrics address ("" disables the listener).
	Listen string `toml:"listen" reload:"daemon"`
	// Pprof serves Go's profiler under /debug/pprof/ on the metrics listener.
	Pprof bool `toml:"pprof" reload:"none"`
	// Textfile is node_exporter's textfile-collector file ("": none).
	Textfile string `toml:"textfile" reload:"none"`
}

// Log configures logging.
type Log struct {
	Level     string `toml:"level" reload:"daemon"`
	Format    string `toml:"format" reload:"daemon"`
	AccessLog bool   `toml:"access_log" reload:"none"`
}

// raw mirrors the file; durations are strings so that a bad one can be
// reported with its key and value.
type raw struct {
	Gateway struct {
		Listen                 string   `toml:"listen"`
		AllowPublicWithoutKeys bool     `toml:"allow_public_without_keys"`
		TrustedProxies         []string `toml:"trusted_proxies"`
		ShutdownGrace          string   `toml:"shutdown_grace"`
		StateDir               string   `toml:"state_dir"`
		ExitIdleTimeout        string   `toml:"exit_idle_timeout"`
		MaxConnections         int      `toml:"max_connections"`
		ClientTimeout          string   `toml:"client_timeout"`
	} `toml:"gateway"`
	Engine struct {
		URL                 string   `toml:"url"`
		Models              []string `toml:"models"`
		Command             []string `toml:"command"`
		Unit                string   `toml:"unit"`
		ResponseTimeout     string   `toml:"response_timeout"`
		IdleTimeout         string   `toml:"idle_timeout"`
		StartTimeout        string   `toml:"start_timeout"`
		ExpectedStartTime   string   `toml:"expected_start_time"`
		MaxColdStartWait    string   `toml:"max_cold_start_wait"`
		StopGrace           string   `toml:"stop_grace"`
		SleepAfter          string   `toml:"sleep_after"`
		DeepSleepAfter      string   `toml:"deep_sleep_after"`
		RuntimeEnv          string   `toml:"runtime_env"`
		MetricsInterval     string   `toml:"metrics_interval"`
		ReadyPath           string   `toml:"ready_path"`
		ReadyMatch          string   `toml:"ready_match"`
		MaxNumSeqs          int      `toml:"max_num_seqs"`
		MaxNumBatchedTokens int      `toml:"max_num_batched_tokens"`
		MaxModelLen         int      `toml:"max_model_len"`
		SchedulingPolicy    string   `toml:"scheduling_policy"`
	} `toml:"engine"`
	Queue struct {
		MaxInflight   int     `toml:"max_inflight"`
		MaxQueued     int     `toml:"max_queued"`
		MaxWait       string  `toml:"max_wait"`
		BatchWindow   string  `toml:"batch_window"`
		MaxBatch      int     `toml:"max_batch"`
		Coalesce      bool    `toml:"coalesce"`
		Concurrency   string  `toml:"concurrency"`
		MinInflight   int     `toml:"min_inflight"`
		TargetLatency string  `toml:"target_latency"`
		BatchMaxWait  string  `toml:"batch_max_wait"`
		BatchShare    float64 `toml:"batch_share"`
		WaitUpdates   string  `toml:"wait_updates"`
		// NominalRPS is obsolete: only the deleted adaptive law read it
		// (its first limit). Kept so that files that set it (the shipped
		// conffile did) still load.
		NominalRPS *float64 `toml:"nominal_rps" deprecated:"true"`
	} `toml:"queue"`
	Limits struct {
		MaxBodyBytes int64   `toml:"max_body_bytes"`
		MaxTokens    int     `toml:"max_tokens"`
		MaxN         int     `toml:"max_n"`
		Rate         float64 `toml:"rate"`
		Burst        int     `toml:"burst"`
		GlobalRate   float64 `toml:"global_rate"`
		GlobalBurst  int     `toml:"global_burst"`
		// MaxBestOf is deprecated: vLLM dropped best_of (docs/engine-contract.md).
		// Kept so that files that set it (the shipped conffile did) still load.
		MaxBestOf *int `toml:"max_best_of" deprecated:"true"`
	} `toml:"limits"`
	Auth struct {
		KeysFile string `toml:"keys_file"`
	} `toml:"auth"`
	Metrics struct {
		Listen   string `toml:"listen"`
		Pprof    bool   `toml:"pprof"`
		Textfile string `toml:"textfile"`
	} `toml:"metrics"`
	Log struct {
		Level     string `toml:"level"`
		Format    string `toml:"format"`
		AccessLog bool   `toml:"access_log"`
	} `toml:"log"`
	GPU struct {
		Enabled        bool    `toml:"enabled"`
		Device         int     `toml:"device"`
		PollInterval   string  `toml:"poll_interval"`
		MemoryBudget   string  `toml:"memory_budget"`
		MemoryFraction float64 `toml:"memory_fraction"`
		ReleaseTimeout string  `toml:"release_timeout"`
		Contention     bool    `toml:"contention"`
	} `toml:"gpu"`
	SLO struct {
		Latency              string `toml:"latency"`
		AllowLongerDeadlines bool   `toml:"allow_longer_deadlines"`
	} `toml:"slo"`
	Balancer struct {
		AgentListen string `toml:"agent_listen"`
		Balancers   int    `toml:"balancers"`
	} `toml:"balancer"`
}

func defaults() raw {
	var r raw
	r.Gateway.Listen = "127.0.0.1:8080"
	r.Gateway.ShutdownGrace = "30s"
	r.Gateway.ExitIdleTimeout = "10m"
	r.Gateway.MaxConnections = 4096
	r.Gateway.ClientTimeout = "30s"
	r.Engine.URL = "http://127.0.0.1:8000"
	r.Engine.Models = []string{"Qwen/Qwen2.5-0.5B-Instruct"}
	r.Engine.IdleTimeout = "5m"
	r.Engine.ResponseTimeout = "5m"
	r.Engine.StartTimeout = "10m"
	r.Engine.ExpectedStartTime = "30s"
	r.Engine.MaxColdStartWait = "60s"
	r.Engine.StopGrace = "10s"
	r.Engine.SleepAfter = "0s"
	r.Engine.DeepSleepAfter = "0s"
	r.Engine.ReadyPath = "/health"
	r.Engine.SchedulingPolicy = PolicyFCFS
	r.Queue.MaxInflight = 256
	r.Queue.MaxQueued = 256
	r.Queue.MaxWait = "4s"
	r.Queue.BatchWindow = "0s"
	r.Queue.MaxBatch = 0
	r.Queue.Concurrency = "model"
	r.Queue.MinInflight = 4
	r.Queue.TargetLatency = "0s"
	r.Queue.BatchMaxWait = "30s"
	r.Queue.BatchShare = 0.5
	r.Queue.WaitUpdates = "2s"
	r.Engine.MetricsInterval = "100ms"
	r.SLO.Latency = "5s"
	r.Limits.MaxBodyBytes = 1 << 20
	r.Limits.MaxTokens = 1024
	r.Limits.MaxN = 4
	r.Metrics.Listen = "127.0.0.1:9180"
	r.Balancer.Balancers = 1
	r.Metrics.Textfile = "/var/lib/prometheus/node-exporter/llmlab.prom"
	r.Log.Level = "info"
	r.Log.Format = "auto"
	r.Log.AccessLog = true
	r.GPU.Enabled = true
	r.GPU.PollInterval = "1s"
	r.GPU.MemoryFraction = 0.9
	r.GPU.ReleaseTimeout = "30s"
	r.GPU.Contention = true
	return r
}

// Default returns the configuration used when no file exists.
func Default() *Config {
	c, err := fromRaw("", defaults())
	if err != nil {
		panic("config: defaults are invalid: " + err.Error())
	}
	return c
}

// Load reads and validates the file at path. A missing file at the default
// path yields the defaults (so that flags alone can run the daemon); a
// missing file named explicitly is an error.
func Load(path string, explicit bool) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return Default(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse validates the TOML document data, read from path (used in messages).
func Parse(path string, data []byte) (*Config, error) {
	r := defaults()
	md, err := toml.Decode(string(data), &r)
	if err != nil {
		return nil, fmt.Errorf("config %s: %s", path, decodeMessage(err))
	}
	var errs []error
	unknown := map[string]bool{}
	for _, k := range md.Undecoded() {
		if len(k) > 1 && unknown[k[:len(k)-1].String()] {
			continue // inside a table already reported
		}
		unknown[k.String()] = true
		errs = append(errs, fmt.Errorf("config %s: unknown key %q", path, k.String()))
	}
	c, err := fromRaw(path, r)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// decodeMessage flattens a TOML error to one line that keeps its position.
func decodeMessage(err error) string {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := fmt.Sprintf("line %d", pe.Position.Line)
		if pe.LastKey != "" {
			msg += fmt.Sprintf(", key %q", pe.LastKey)
		}
		return msg + ": " + pe.Message
	}
	return strings.TrimPrefix(err.Error(), "toml: ")
}

type checker struct {
	path string
	errs []error
}

func (c *checker) fail(key string, value any, format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf("config %s: key %s = %#v: %s", c.path, key, value, fmt.Sprintf(format, args...)))
}

func (c *checker) duration(key, s string, min time.Duration) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		c.fail(key, s, `not a duration (want for example "250ms", "4s", "1m30s")`)
		return 0
	}
	if d < min {
		c.fail(key, s, "must be at least %s", min)
	}
	return d
}

func (c *checker) atLeast(key string, v, min int) {
	if v < min {
		c.fail(key, v, "must be at least %d", min)
	}
}

func (c *checker) addr(key, s string, allowEmpty bool) {
	if s == "" {
		if !allowEmpty {
			c.fail(key, s, "must not be empty")
		}
		return
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		c.fail(key, s, "not a host:port address (want for example \"127.0.0.1:8080\")")
	}
}

// prefixes reads a list of IP addresses and CIDR prefixes; an address is
// the prefix of its own length, an IPv4 address in IPv6 form is read as
// IPv4 (as Go's server reports a peer on a dual-stack socket), and a
// prefix with host bits set is read masked ("10.1.2.3/8" is 10.0.0.0/8).
func (c *checker) prefixes(key string, list []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		var p netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
			if err == nil && p.Addr().Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
		} else {
			var a netip.Addr
			a, err = netip.ParseAddr(s)
			if err == nil && a.Zone() != "" {
				err = errors.New("zone")
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err != nil {
			c.fail(key, s, `not an IP address or CIDR prefix (want for example "127.0.0.1", "10.0.0.0/8", "::1" or "fd00::/8")`)
			continue
		}
		out = append(out, p.Masked())
	}
	return out
}

func fromRaw(path string, r raw) (*Config, error) {
	ck := &checker{path: path}
	c := &Config{Path: path}

	ck.addr("gateway.listen", r.Gateway.Listen, false)
	c.Gateway = Gateway{
		Listen:                 r.Gateway.Listen,
		AllowPublicWithoutKeys: r.Gateway.AllowPublicWithoutKeys,
		ShutdownGrace:          ck.duration("gateway.shutdown_grace", r.Gateway.ShutdownGrace, 0),
		StateDir:               r.Gateway.StateDir,
		ExitIdleTimeout:        ck.duration("gateway.exit_idle_timeout", r.Gateway.ExitIdleTimeout, 0),
		MaxConnections:         r.Gateway.MaxConnections,
		ClientTimeout:          ck.duration("gateway.client_timeout", r.Gateway.ClientTimeout, time.Second),
	}
	ck.atLeast("gateway.max_connections", r.Gateway.MaxConnections, 1)
	c.Gateway.TrustedProxies = ck.prefixes("gateway.trusted_proxies", r.Gateway.TrustedProxies)

	u, err := EngineURL(r.Engine.URL)
	if err != nil {
		ck.fail("engine.url", r.Engine.URL, "%s", err)
	}
	if len(r.Engine.Models) == 0 {
		ck.fail("engine.models", r.Engine.Models, "name at least one served model")
	}
	for _, m := range r.Engine.Models {
		if strings.TrimSpace(m) == "" {
			ck.fail("engine.models", r.Engine.Models, "model names must not be empty")
		}
	}
	c.Engine = Engine{URL: u, Models: r.Engine.Models, Command: r.Engine.Command, Unit: r.Engine.Unit,
		ResponseTimeout:     ck.duration("engine.response_timeout", r.Engine.ResponseTimeout, time.Second),
		IdleTimeout:         ck.duration("engine.idle_timeout", r.Engine.IdleTimeout, 0),
		StartTimeout:        ck.duration("engine.start_timeout", r.Engine.StartTimeout, time.Second),
		ExpectedStartTime:   ck.duration("engine.expected_start_time", r.Engine.ExpectedStartTime, 0),
		MaxColdStartWait:    ck.duration("engine.max_cold_start_wait", r.Engine.MaxColdStartWait, time.Millisecond),
		StopGrace:           ck.duration("engine.stop_grace", r.Engine.StopGrace, 0),
		SleepAfter:          ck.duration("engine.sleep_after", r.Engine.SleepAfter, 0),
		DeepSleepAfter:      ck.duration("engine.deep_sleep_after", r.Engine.DeepSleepAfter, 0),
		RuntimeEnv:          r.Engine.RuntimeEnv,
		MetricsInterval:     ck.duration("engine.metrics_interval", r.Engine.MetricsInterval, 0),
		ReadyPath:           r.Engine.ReadyPath,
		ReadyMatch:          r.Engine.ReadyMatch,
		MaxNumSeqs:          r.Engine.MaxNumSeqs,
		MaxNumBatchedTokens: r.Engine.MaxNumBatchedTokens,
		MaxModelLen:         r.Engine.MaxModelLen,
		SchedulingPolicy:    r.Engine.SchedulingPolicy,
	}
	ck.ladder(r.Engine.SleepAfter, r.Engine.DeepSleepAfter, r.Engine.IdleTimeout, c.Engine)
	if p := r.Engine.SchedulingPolicy; p != PolicyFCFS && p != PolicyPriority {
		ck.fail("engine.scheduling_policy", p, `want "fcfs" (vLLM's default; llmlab sends no priority) or "priority" (the engine runs vLLM's --scheduling-policy priority, and llmlab sends each request's class as its priority)`)
	}
	ck.atLeast("engine.max_num_seqs", r.Engine.MaxNumSeqs, 0)
	ck.atLeast("engine.max_num_batched_tokens", r.Engine.MaxNumBatchedTokens, 0)
	ck.atLeast("engine.max_model_len", r.Engine.MaxModelLen, 0)
	// vLLM refuses to start with fewer batched tokens than sequences
	// (vllm/config/scheduler.py, verify_max_model_len).
	if n, s := r.Engine.MaxNumBatchedTokens, r.Engine.MaxNumSeqs; n > 0 && s > 0 && n < s {
		ck.fail("engine.max_num_batched_tokens", n, "must be at least engine.max_num_seqs (%d): vLLM refuses to start otherwise", s)
	}
	if !strings.HasPrefix(r.Engine.ReadyPath, "/") {
		ck.fail("engine.ready_path", r.Engine.ReadyPath, `want a path on the engine, e.g. "/health" (vLLM) or "/api/ps" (Ollama)`)
	}
	if d := c.Engine.MetricsInterval; d > 0 && d < 10*time.Millisecond {
		ck.fail("engine.metrics_interval", r.Engine.MetricsInterval, `must be at least 10ms, or "0s" to read no engine metrics`)
	}
	if r.Engine.RuntimeEnv != "" && !filepath.IsAbs(r.Engine.RuntimeEnv) {
		ck.fail("engine.runtime_env", r.Engine.RuntimeEnv, "want an absolute path")
	}
	if len(r.Engine.Command) > 0 && r.Engine.Unit != "" {
		ck.fail("engine.unit", r.Engine.Unit, "set engine.unit or engine.command, not both")
	}
	if r.Engine.Unit != "" && !strings.Contains(r.Engine.Unit, ".") {
		ck.fail("engine.unit", r.Engine.Unit, `name the unit with its type, e.g. "llmlab-vllm.service"`)
	}
	if len(r.Engine.Command) > 0 && strings.TrimSpace(r.Engine.Command[0]) == "" {
		ck.fail("engine.command", r.Engine.Command, "the first element must name the program to run")
	}

	q := r.Queue
	ck.atLeast("queue.max_inflight", q.MaxInflight, 1)
	ck.atLeast("queue.max_queued", q.MaxQueued, 0)
	ck.atLeast("queue.max_batch", q.MaxBatch, 0)
	c.Queue = Queue{
		MaxInflight: q.MaxInflight,
		MaxQueued:   q.MaxQueued,
		MaxWait:     ck.duration("queue.max_wait", q.MaxWait, time.Millisecond),
		BatchWindow: ck.duration("queue.batch_window", q.BatchWindow, 0),
		MaxBatch:    q.MaxBatch,
		Coalesce:    q.Coalesce,
	}
	if c.Queue.BatchWindow > time.Second {
		ck.fail("queue.batch_window", q.BatchWindow, "must be at most 1s (it delays every request)")
	}
	// A key's default must never make a key the user wrote invalid (the
	// shipped file writes every key): a batch, like the minimum of the
	// model's limit, is at most the in-flight limit, so a larger value is
	// read as that limit (with a note when it matters) rather than refused.
	if q.MaxBatch > q.MaxInflight && q.MaxInflight >= 1 && c.Queue.BatchWindow > 0 {
		c.Notes = append(c.Notes, fmt.Sprintf("queue.max_batch = %d is above queue.max_inflight = %d: a batch is released at %d", q.MaxBatch, q.MaxInflight, q.MaxInflight))
	}
	c.Queue.Concurrency = q.Concurrency
	switch q.Concurrency {
	case "fixed", "model":
	case "adaptive":
		// The probing law was deleted; the model replaced it. A file
		// written for it must not stop the daemon after an upgrade.
		c.Queue.Concurrency = "model"
		c.Deprecated = append(c.Deprecated, `queue.concurrency = "adaptive": read as "model"; the adaptive law was deleted and the limit is chosen from the engine model (docs/admission.md)`)
	default:
		ck.fail("queue.concurrency", q.Concurrency, `want "model" (chosen from the engine model, at most queue.max_inflight) or "fixed" (queue.max_inflight)`)
	}
	if q.NominalRPS != nil {
		c.Deprecated = append(c.Deprecated, fmt.Sprintf("queue.nominal_rps = %g: obsolete, ignored; only the deleted adaptive law read it, and the engine model learns the engine's rate from its answers", *q.NominalRPS))
	}
	ck.atLeast("queue.min_inflight", q.MinInflight, 1)
	c.Queue.MinInflight = q.MinInflight
	if q.MaxInflight >= 1 && q.MinInflight > q.MaxInflight {
		if c.Queue.FromModel() {
			c.Notes = append(c.Notes, fmt.Sprintf("queue.min_inflight = %d is above queue.max_inflight = %d: the limit stays at %d", q.MinInflight, q.MaxInflight, q.MaxInflight))
		}
		c.Queue.MinInflight = q.MaxInflight
	}
	c.Queue.TargetLatency = ck.duration("queue.target_latency", q.TargetLatency, 0)
	c.Queue.BatchMaxWait = ck.duration("queue.batch_max_wait", q.BatchMaxWait, time.Millisecond)
	if q.BatchShare <= 0 || q.BatchShare > 1 {
		ck.fail("queue.batch_share", q.BatchShare, "want a share above 0 and at most 1")
	}
	c.Queue.BatchShare = q.BatchShare
	c.Queue.WaitUpdates = ck.duration("queue.wait_updates", q.WaitUpdates, 0)
	if c.Queue.WaitUpdates > 0 && c.Queue.WaitUpdates < 100*time.Millisecond {
		ck.fail("queue.wait_updates", q.WaitUpdates, `want "0s" (no updates) or at least 100ms`)
	}

	l := r.Limits
	if l.MaxBodyBytes < 1024 {
		ck.fail("limits.max_body_bytes", l.MaxBodyBytes, "must be at least 1024")
	}
	ck.atLeast("limits.max_tokens", l.MaxTokens, 1)
	ck.atLeast("limits.max_n", l.MaxN, 1)
	if l.Rate < 0 {
		ck.fail("limits.rate", l.Rate, "must be 0 (off) or above")
	}
	if l.GlobalRate < 0 {
		ck.fail("limits.global_rate", l.GlobalRate, "must be 0 (off) or above")
	}
	ck.atLeast("limits.burst", l.Burst, 0)
	ck.atLeast("limits.global_burst", l.GlobalBurst, 0)
	c.Limits = Limits{MaxBodyBytes: l.MaxBodyBytes, MaxTokens: l.MaxTokens, MaxN: l.MaxN, Rate: l.Rate,
		Burst: DefaultBurst(l.Rate, l.Burst), GlobalRate: l.GlobalRate, GlobalBurst: DefaultBurst(l.GlobalRate, l.GlobalBurst)}
	if l.MaxBestOf != nil {
		c.Deprecated = append(c.Deprecated, fmt.Sprintf("limits.max_best_of = %d: ignored; vLLM no longer has best_of, so a request runs n sequences per prompt", *l.MaxBestOf))
	}

	c.Auth = Auth{KeysFile: r.Auth.KeysFile}
	if c.Gateway.Listen != "" && !IsLoopback(c.Gateway.Listen) && c.Auth.KeysFile == "" && !c.Gateway.AllowPublicWithoutKeys {
		ck.fail("gateway.listen", c.Gateway.Listen, "listens beyond loopback without API keys: set auth.keys_file, or gateway.allow_public_without_keys = true to accept the risk")
	}
	if len(r.Gateway.TrustedProxies) > 0 && c.Auth.KeysFile == "" && !c.Gateway.AllowPublicWithoutKeys {
		ck.fail("gateway.trusted_proxies", r.Gateway.TrustedProxies, "the API is behind a reverse proxy, as public as the proxy makes it, and has no API keys: set auth.keys_file, or gateway.allow_public_without_keys = true to accept the risk")
	}

	ck.addr("metrics.listen", r.Metrics.Listen, true)
	c.Metrics = Metrics{Listen: r.Metrics.Listen, Pprof: r.Metrics.Pprof, Textfile: r.Metrics.Textfile}
	if t := r.Metrics.Textfile; t != "" && (!strings.HasSuffix(t, ".prom") || !filepath.IsAbs(t)) {
		ck.fail("metrics.textfile", t, `want an absolute path ending in ".prom" (node_exporter reads only those)`)
	}

	ck.addr("balancer.agent_listen", r.Balancer.AgentListen, true)
	if r.Balancer.Balancers < 1 {
		ck.fail("balancer.balancers", r.Balancer.Balancers, "must be at least 1 (the balancers that ask the agent)")
	}
	c.Balancer = Balancer{AgentListen: r.Balancer.AgentListen, Balancers: r.Balancer.Balancers}

	if !slices.Contains([]string{"debug", "info", "warn", "error"}, r.Log.Level) {
		ck.fail("log.level", r.Log.Level, `want "debug", "info", "warn" or "error"`)
	}
	if !slices.Contains([]string{"auto", "text", "json", "journal"}, r.Log.Format) {
		ck.fail("log.format", r.Log.Format, `want "auto", "text", "json" or "journal"`)
	}
	c.Log = Log{Level: r.Log.Level, Format: r.Log.Format, AccessLog: r.Log.AccessLog}

	c.SLO = SLO{Latency: ck.duration("slo.latency", r.SLO.Latency, 0), AllowLongerDeadlines: r.SLO.AllowLongerDeadlines}

	g := r.GPU
	ck.atLeast("gpu.device", g.Device, 0)
	if g.MemoryFraction <= 0 || g.MemoryFraction > 1 {
		ck.fail("gpu.memory_fraction", g.MemoryFraction, "want a share of the card above 0 and at most 1 (llmlab's default is 0.9; vLLM's own, 0.92)")
	}
	c.GPU = GPU{Enabled: g.Enabled, Device: g.Device, MemoryFraction: g.MemoryFraction, Contention: g.Contention,
		PollInterval:   ck.duration("gpu.poll_interval", g.PollInterval, 10*time.Millisecond),
		ReleaseTimeout: ck.duration("gpu.release_timeout", g.ReleaseTimeout, 0),
	}
	if g.MemoryBudget != "" {
		b, err := ParseBytes(g.MemoryBudget)
		if err != nil {
			ck.fail("gpu.memory_budget", g.MemoryBudget, "%v", err)
		} else if b < 256<<20 {
			ck.fail("gpu.memory_budget", g.MemoryBudget, "too small for any model (want at least 256MiB)")
		}
		c.GPU.MemoryBudget = b
	}

	if len(ck.errs) > 0 {
		return nil, errors.Join(ck.errs...)
	}
	return c, nil
}

// DefaultBurst is the bucket size of a rate limit whose burst is not set
// (0): one second's worth of requests, at least one.
func DefaultBurst(rate float64, burst int) int {
	if burst > 0 || rate <= 0 {
		return burst
	}
	return max(1, int(math.Ceil(rate)))
}

// IsLoopback reports whether addr (host:port) binds only loopback addresses.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ParseBytes reads a size such as "4GiB", "3.5 GiB", "4096MiB", "4GB" or
// "4294967296" (bytes).
func ParseBytes(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	mult := map[string]float64{"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
		"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
	var v float64
	if _, err := fmt.Sscanf(num, "%g", &v); err != nil || num == "" || mult == 0 {
		return 0, fmt.Errorf(`not a size (want for example "4GiB", "3500MiB" or a number of bytes)`)
	}
	return uint64(v * mult), nil
}

// EngineURL parses an engine's base URL (engine.url, llmlabd's
// --engine-url). Only http is accepted: the engine transport speaks plain
// HTTP/1.1 to an engine on this host or a trusted network (daemon/gateway,
// transport.go), and an https URL would be dialled without TLS, the engine
// reading as ready to the probe while every proxied request failed.
func EngineURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err == nil && u.Scheme == "https" && u.Host != "":
		return nil, errors.New(`https is not supported: llmlabd speaks plain HTTP to the engine (want "http://host:port"; for a remote engine behind TLS, run a TLS-terminating proxy on this host and point engine.url at it)`)
	case err != nil || u.Scheme != "http" || u.Host == "":
		return nil, errors.New(`not an http URL (want for example "http://127.0.0.1:8000")`)
	}
	return u, nil
}
