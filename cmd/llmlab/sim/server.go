package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options configure a simulator server.
type Options struct {
	Engine Config
	// Model is the served model name.
	Model string
	// StartupDelay keeps the port closed this long, as vLLM's does while
	// it loads.
	StartupDelay time.Duration
	// ErrorRate answers this fraction of requests with 500.
	ErrorRate float64
	// CrashAfter makes the process exit (via Crash) when request number
	// CrashAfter+1 arrives; 0 never.
	CrashAfter int
	Crash      func()
	// Ready, when set, is called with the address once the port is open.
	Ready func(addr string)
	// GPUMemoryUtilization is the engine's share of the card, as vLLM's
	// --gpu-memory-utilization (shown in vllm:cache_config_info).
	GPUMemoryUtilization float64
	// MaxNewTokens is the server-wide output cap, as vLLM's
	// --override-generation-config '{"max_new_tokens": N}' (0: none).
	MaxNewTokens int
	// SleepMode serves /sleep (levels 1 and 2), /wake_up, /is_sleeping and
	// /collective_rpc (reload_weights), which vLLM does only with
	// --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1
	// (docs/features/sleep_mode.md; sleep.go).
	SleepMode bool
	// ForceIncludeUsage reports usage in every stream, as vLLM's
	// --enable-force-include-usage; otherwise only when the request asks
	// with stream_options.include_usage.
	ForceIncludeUsage bool
}

// defaultCompletionTokens is vLLM's max_tokens for a completion that
// names none (vllm/entrypoints/openai/completion/protocol.py).
const defaultCompletionTokens = 16

// Server is the simulator's HTTP side.
type Server struct {
	opt      Options
	engine   *Engine
	reg      *prometheus.Registry
	requests atomic.Int64
	sleepSt  sleepState
	sleepM   *sleepMetrics
	rngMu    sync.Mutex
	rng      *rand.Rand
}

// NewServer returns a server and its engine; run the engine with Run.
func NewServer(opt Options) *Server {
	reg := prometheus.NewRegistry()
	m := newMetrics(reg, opt.Model)
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: "vllm:cache_config_info", Help: "Information of the LLMEngine CacheConfig",
		ConstLabels: prometheus.Labels{"block_size": strconv.Itoa(BlockSize), "num_gpu_blocks": strconv.Itoa(opt.Engine.KVBlocks),
			"gpu_memory_utilization": strconv.FormatFloat(opt.GPUMemoryUtilization, 'g', -1, 64), "engine": "0"}})
	info.Set(1)
	reg.MustRegister(info)
	return &Server{opt: opt, engine: NewEngine(opt.Engine, m), reg: reg, rng: rand.New(rand.NewPCG(1, 2)), sleepM: newSleepMetrics(reg, opt.Model)}
}

// Run waits out the startup delay, then serves on l until ctx ends.
func (s *Server) Run(ctx context.Context, listen string) error {
	select {
	case <-time.After(s.opt.StartupDelay):
	case <-ctx.Done():
		return nil
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	return s.Serve(ctx, l)
}

// Serve serves on l until ctx ends.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := make(chan struct{})
	go s.engine.Loop(stop)
	defer close(stop)
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if s.opt.Ready != nil {
		s.opt.Ready(l.Addr().String())
	}
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Handler returns vLLM's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completions", func(w http.ResponseWriter, r *http.Request) { s.generate(w, r, false) })
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) { s.generate(w, r, true) })
	mux.HandleFunc("GET /v1/models", s.models)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /tokenize", s.tokenize)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	if s.opt.SleepMode {
		mux.HandleFunc("POST /sleep", s.sleep)
		mux.HandleFunc("POST /wake_up", s.wakeUp)
		mux.HandleFunc("GET /is_sleeping", s.isSleeping)
		mux.HandleFunc("POST /collective_rpc", s.collectiveRPC)
	}
	return mux
}

// vllmError writes an error as vLLM's OpenAI server does.
func vllmError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": typ, "param": nil, "code": status}})
	w.Write(b)
}

type genRequest struct {
	Model    string          `json:"model"`
	Prompt   json.RawMessage `json:"prompt"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	MaxTokens           *int `json:"max_tokens"`
	MaxCompletionTokens *int `json:"max_completion_tokens"`
	MinTokens           int  `json:"min_tokens"`
	IgnoreEOS           bool `json:"ignore_eos"`
	N                   *int `json:"n"`
	Stream              bool `json:"stream"`
	ReturnTokenIDs      bool `json:"return_token_ids"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	// Priority orders the request in an engine run with the priority
	// policy, lower first (default 0; any value is accepted and ignored
	// first come first served: completion/protocol.py,
	// chat_completion/protocol.py, and the fcfs queue that never reads it).
	Priority int `json:"priority"`
}

// prompt is one prompt's token count and stable identity.
type prompt struct {
	tokens int
	ids    []int
	hash   uint32
}

// blockHashes are the prefix-cache keys of the prompt's full 16-token
// blocks: block i's key covers tokens 0 to 16(i+1), so two prompts share
// a key only when they share the whole prefix, as vLLM's block hashes
// chain each block to its parent (vllm/v1/core/kv_cache_utils.py).
func (p prompt) blockHashes() []uint64 {
	if len(p.ids) < BlockSize {
		return nil
	}
	out := make([]uint64, 0, len(p.ids)/BlockSize)
	h := fnv.New64a()
	var b [4]byte
	for i, id := range p.ids {
		b[0], b[1], b[2], b[3] = byte(id), byte(id>>8), byte(id>>16), byte(id>>24)
		h.Write(b[:])
		if (i+1)%BlockSize == 0 {
			out = append(out, h.Sum64())
		}
	}
	return out
}

func textPrompt(text string) prompt {
	h := fnv.New32a()
	h.Write([]byte(text))
	ids := Tokenize(text)
	return prompt{tokens: len(ids), ids: ids, hash: h.Sum32()}
}

func idsPrompt(ids []int) prompt {
	h := fnv.New32a()
	for _, id := range ids {
		h.Write([]byte(strconv.Itoa(id)))
	}
	return prompt{tokens: len(ids), ids: ids, hash: h.Sum32()}
}

func (s *Server) parsePrompts(req *genRequest, chat bool) ([]prompt, error) {
	if chat {
		if len(req.Messages) == 0 {
			return nil, errors.New("messages must not be empty")
		}
		var text bytes.Buffer
		hasSystem := false
		for _, m := range req.Messages {
			hasSystem = hasSystem || m.Role == "system"
			var str string
			if json.Unmarshal(m.Content, &str) == nil {
				text.WriteString(str)
				continue
			}
			var parts []struct {
				Text string `json:"text"`
			}
			if err := json.Unmarshal(m.Content, &parts); err != nil {
				return nil, errors.New("message content must be a string or a list of parts")
			}
			for _, p := range parts {
				text.WriteString(p.Text)
			}
		}
		p := textPrompt(text.String())
		extra := chatTemplateTokens(len(req.Messages), hasSystem)
		p.tokens += extra
		for i := 0; i < extra; i++ {
			p.ids = append(p.ids, 151644+i%3)
		}
		return []prompt{p}, nil
	}
	var str string
	if json.Unmarshal(req.Prompt, &str) == nil {
		return []prompt{textPrompt(str)}, nil
	}
	var strs []string
	if json.Unmarshal(req.Prompt, &strs) == nil && len(strs) > 0 {
		out := make([]prompt, len(strs))
		for i, t := range strs {
			out[i] = textPrompt(t)
		}
		return out, nil
	}
	var ids []int
	if json.Unmarshal(req.Prompt, &ids) == nil && len(ids) > 0 {
		return []prompt{idsPrompt(ids)}, nil
	}
	var lists [][]int
	if json.Unmarshal(req.Prompt, &lists) == nil && len(lists) > 0 {
		out := make([]prompt, len(lists))
		for i, l := range lists {
			out[i] = idsPrompt(l)
		}
		return out, nil
	}
	return nil, errors.New("prompt must be a string, a list of strings, a list of token ids or a list of token-id lists")
}

func (s *Server) injectFailure(w http.ResponseWriter) bool {
	n := s.requests.Add(1)
	if s.opt.CrashAfter > 0 && n > int64(s.opt.CrashAfter) && s.opt.Crash != nil {
		s.opt.Crash()
	}
	if s.opt.ErrorRate > 0 {
		s.rngMu.Lock()
		fail := s.rng.Float64() < s.opt.ErrorRate
		s.rngMu.Unlock()
		if fail {
			vllmError(w, http.StatusInternalServerError, "InternalServerError", "injected failure")
			return true
		}
	}
	return false
}

func (s *Server) generate(w http.ResponseWriter, r *http.Request, chat bool) {
	if s.injectFailure(w) {
		return
	}
	var req genRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		vllmError(w, http.StatusBadRequest, "BadRequestError", "invalid JSON: "+err.Error())
		return
	}
	if req.Model != "" && req.Model != s.opt.Model {
		vllmError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The model `%s` does not exist.", req.Model))
		return
	}
	prompts, err := s.parsePrompts(&req, chat)
	if err != nil {
		vllmError(w, http.StatusBadRequest, "BadRequestError", err.Error())
		return
	}
	n := 1
	if req.N != nil {
		n = *req.N
	}
	if n < 1 {
		vllmError(w, http.StatusBadRequest, "BadRequestError", "n must be at least 1")
		return
	}
	// The output cap, as vLLM reads it (docs/engine-contract.md):
	// /v1/completions reads max_tokens, 16 when absent or null
	// (completion/protocol.py: max_tokens defaults to 16,
	// normalize_null_max_tokens) and has no max_completion_tokens; chat
	// reads max_completion_tokens, else max_tokens, else none (chat
	// generates what fits). The server-wide max_new_tokens
	// (--override-generation-config) caps all, without refusing
	// (serve/utils/api_utils.py, get_max_tokens).
	maxTok := req.MaxTokens
	if chat && req.MaxCompletionTokens != nil {
		maxTok = req.MaxCompletionTokens
	}
	if !chat && maxTok == nil {
		d := defaultCompletionTokens
		maxTok = &d
	}
	prio := requestPriority(r, req.Priority)
	limit := s.opt.Engine.MaxModelLen
	var seqs []*seq
	notify := make(chan struct{}, 1)
	for _, p := range prompts {
		out := limit - p.tokens
		if maxTok != nil {
			if *maxTok < 1 {
				vllmError(w, http.StatusBadRequest, "BadRequestError", "max_tokens must be at least 1, got "+strconv.Itoa(*maxTok)+".")
				return
			}
			// The context check counts the tokens the request names,
			// before any server-wide cap (renderers/params.py).
			if p.tokens+*maxTok > limit {
				vllmError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf(
					"This model's maximum context length is %d tokens. However, you requested %d output tokens and your prompt contains %d input tokens, for a total of %d tokens. Please reduce the length of the input prompt or the number of requested output tokens.",
					limit, *maxTok, p.tokens, p.tokens+*maxTok))
				return
			}
			out = *maxTok
		}
		if out < 1 {
			vllmError(w, http.StatusBadRequest, "BadRequestError", fmt.Sprintf(
				"This model's maximum context length is %d tokens. However, your prompt contains %d input tokens.", limit, p.tokens))
			return
		}
		if c := s.opt.MaxNewTokens; c > 0 {
			out = min(out, c)
		}
		capped := out
		if !req.IgnoreEOS {
			// temperature 0 and no ignore_eos: a deterministic natural
			// length, never below min_tokens.
			out = max(min(out, 16+int(p.hash%240)), min(req.MinTokens, out))
		}
		for range n {
			sq := newSeq(p.tokens, out, notify)
			sq.byLength = out == capped
			sq.priority = prio
			sq.blockHashes = p.blockHashes()
			seqs = append(seqs, sq)
		}
	}
	if err := s.engine.Submit(seqs...); err != nil {
		vllmError(w, http.StatusServiceUnavailable, "ServiceUnavailableError", err.Error())
		return
	}
	g := &generation{s: s, chat: chat, req: &req, prompts: prompts, n: n, seqs: seqs, notify: notify, created: time.Now().Unix()}
	g.id = fmt.Sprintf("%s%016x", map[bool]string{false: "cmpl-", true: "chatcmpl-"}[chat], s.rng2())
	g.model, _ = json.Marshal(s.opt.Model)
	if req.Stream {
		g.stream(w, r.Context())
	} else {
		g.wait(w, r.Context())
	}
	s.noteAnswer()
}

// PriorityHeader is vLLM's request header for the priority, which wins
// over the body's field; a value that is not an integer is ignored
// (vllm/entrypoints/generate/base/serving.py, PRIORITY_HEADER and
// _get_priority; vLLM PR #51089, 2026-08-06).
const PriorityHeader = "X-Vllm-Priority"

// requestPriority is the request's priority as vLLM reads it: the
// header's, else the body's.
func requestPriority(r *http.Request, body int) int {
	if v := r.Header.Get(PriorityHeader); v != "" {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			return n
		}
	}
	return body
}

func (s *Server) rng2() uint64 {
	s.rngMu.Lock()
	defer s.rngMu.Unlock()
	return s.rng.Uint64()
}

func (s *Server) models(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"object":"list","data":[{"id":%q,"object":"model","created":%d,"owned_by":"vllm","root":%q,"parent":null,"max_model_len":%d}]}`,
		s.opt.Model, time.Now().Unix(), s.opt.Model, s.opt.Engine.MaxModelLen)
}

func (s *Server) tokenize(w http.ResponseWriter, r *http.Request) {
	var req genRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		vllmError(w, http.StatusBadRequest, "BadRequestError", "invalid JSON")
		return
	}
	chat := len(req.Messages) > 0
	prompts, err := s.parsePrompts(&req, chat)
	if err != nil || len(prompts) != 1 {
		vllmError(w, http.StatusBadRequest, "BadRequestError", "tokenize takes one prompt or messages")
		return
	}
	ids, _ := json.Marshal(prompts[0].ids)
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"count":%d,"max_model_len":%d,"tokens":%s,"token_strs":null}`, prompts[0].tokens, s.opt.Engine.MaxModelLen, ids)
}
