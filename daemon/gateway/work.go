package gateway

// A work request's way through the gateway (the steps of the package
// doc): its state, its id, the handler and its refusals.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
	"github.com/llmlab/llmlab/daemon/queue"
	"github.com/llmlab/llmlab/daemon/ratelimit"
)

// reqState follows one request through the gateway.
type reqState struct {
	id string
	// client is the key's name ("anonymous" without keys), for the log;
	// key is the key's name ("" without keys).
	client   string
	key      string
	class    queue.Class
	route    string
	start    time.Time
	body     []byte
	stream   bool
	model    string
	status   int
	outcome  string
	reason   string
	waited   time.Duration
	ttft     time.Duration
	prompt   int
	complete int
	// ticket is the request's hold on the engine while it is proxied.
	ticket *queue.Ticket
	// remote is the client's address (clientAddr), and forwarded says it
	// was read from a trusted proxy's X-Forwarded-For.
	remote    string
	forwarded bool
	// tpmTaken is what the request took from its key's tokens-per-minute
	// bucket of tpm tokens a minute (0: none); dispatched says it reached
	// the engine.
	tpm, tpmTaken int
	dispatched    bool
}

type stateKey struct{}

// requestID returns the request's X-Request-Id, making one when absent or
// unusable, and echoes it in the response.
func requestID(w http.ResponseWriter, r *http.Request) string {
	id := r.Header.Get("X-Request-Id")
	if !validID(id) {
		var b [12]byte
		_, _ = rand.Read(b[:])
		id = hex.EncodeToString(b[:])
	}
	w.Header().Set("X-Request-Id", id)
	return id
}

func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

func (g *Gateway) serveWork(w http.ResponseWriter, r *http.Request, route string) {
	st := &reqState{route: route, start: time.Now(), client: "anonymous"}
	st.id = requestID(w, r)
	st.remote, st.forwarded = clientAddr(r, g.settings.Load().cfg.TrustedProxies)
	rec := &recorder{ResponseWriter: w, rc: http.NewResponseController(w), timeout: g.settings.Load().cfg.ClientTimeout}
	defer g.finish(rec, st)
	if r.Method != http.MethodPost {
		rec.Header().Set("Allow", http.MethodPost)
		g.fail(rec, st, failure{status: http.StatusMethodNotAllowed, kind: typeInvalid, code: "method_not_allowed", msg: "use POST", outcome: "invalid"})
		return
	}
	g.lastWork.Store(int64(st.start.Sub(g.epoch)) + 1)
	g.engine.Wake()
	s := g.settings.Load()

	name, err := s.keys.Authenticate(r)
	if err != nil {
		g.fail(rec, st, failure{status: http.StatusUnauthorized, kind: typeAuth, code: "invalid_api_key", msg: err.Error(), outcome: "unauthorized"})
		return
	}
	// The rate limit's client: the key's name, else the client's address.
	clientID := name
	st.key = name
	opts := s.keys.Options(name)
	if name != "" {
		st.client = name
	} else {
		clientID = st.remote
	}
	// The key's class, which a request may lower but not raise.
	if s.keys.Batch(name) {
		st.class = queue.Batch
	}
	switch strings.ToLower(strings.TrimSpace(r.Header.Get(PriorityHeader))) {
	case "", "interactive":
	case "batch":
		st.class = queue.Batch
	default:
		g.fail(rec, st, failure{status: http.StatusBadRequest, kind: typeInvalid, code: "invalid_priority",
			msg: PriorityHeader + " must be \"interactive\" or \"batch\"", outcome: "invalid"})
		return
	}
	var deadline time.Duration
	if v := r.Header.Get(DeadlineHeader); v != "" {
		d, err := parseDeadline(v)
		if err != nil {
			g.fail(rec, st, failure{status: http.StatusBadRequest, kind: typeInvalid, code: "invalid_deadline", msg: err.Error(), outcome: "invalid"})
			return
		}
		deadline = d
	}
	if ok, wait, scope := g.limiter.Allow(time.Now(), clientID); !ok {
		st.reason = scope
		g.fail(rec, st, failure{status: http.StatusTooManyRequests, kind: typeRateLimit, code: "rate_limit_exceeded",
			msg: "Rate limit reached (" + scope + "); retry after the time in Retry-After.", retryAfter: retrySeconds(wait), outcome: "rate_limited"})
		return
	}

	if s.cfg.ClientTimeout > 0 {
		_ = rec.rc.SetReadDeadline(time.Now().Add(s.cfg.ClientTimeout))
	}
	body, err := readBody(rec, r, s.cfg.MaxBodyBytes)
	if s.cfg.ClientTimeout > 0 {
		_ = rec.rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			g.fail(rec, st, failure{status: http.StatusRequestEntityTooLarge, kind: typeInvalid, code: "request_too_large",
				msg: "The request body exceeds " + strconv.FormatInt(mbe.Limit, 10) + " bytes.", outcome: "invalid"})
			return
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			rec.Header().Set("Connection", "close")
			g.fail(rec, st, failure{status: http.StatusRequestTimeout, kind: typeInvalid, code: "request_timeout",
				msg: "The request body did not arrive within " + s.cfg.ClientTimeout.String() + " (gateway.client_timeout).", outcome: "invalid"})
			return
		}
		st.outcome, st.status = "cancelled", 499
		return
	}
	lim := s.cfg.Limits
	lim.MaxModelLen = g.MaxModelLen()
	p, inv := validate(route, body, lim, s.cfg.Coalesce)
	if inv != nil {
		g.fail(rec, st, failure{status: inv.Status, kind: typeInvalid, code: inv.Code, param: inv.Param, msg: inv.Msg, outcome: "invalid"})
		return
	}
	if inv := p.setPriority(st.class, s.cfg.EnginePriority); inv != nil {
		g.fail(rec, st, failure{status: inv.Status, kind: typeInvalid, code: inv.Code, param: inv.Param, msg: inv.Msg, outcome: "invalid"})
		return
	}
	st.body, st.stream, st.model = p.Body, p.Stream, p.Model

	ctx := r.Context()
	qr := queue.Request{Weight: p.Weight, Key: p.CoalesceKey, Class: st.class,
		Shape: enginemodel.Shape{PromptBytes: p.PromptBytes, MaxTokens: p.MaxTokens}, Stream: p.Stream, Deadline: deadline,
		Flow: name, FlowWeight: opts.Weight}
	if tpm := opts.TokensPerMinute; tpm > 0 {
		n := int(math.Ceil(g.queue.Model().PromptTokens(qr.Shape))) + p.Weight*p.MaxTokens
		if ok, wait := g.tokens.Take(time.Now(), name, tpm, n); !ok {
			st.reason = ratelimit.ScopeTokens
			g.fail(rec, st, failure{status: http.StatusTooManyRequests, kind: typeRateLimit, code: "rate_limit_exceeded",
				msg:        fmt.Sprintf("Rate limit reached for tokens per minute: this API key may use %d tokens a minute, and this request counts %d (its prompt and max_tokens); retry after the time in Retry-After.", tpm, n),
				retryAfter: retrySeconds(wait), outcome: "rate_limited"})
			return
		}
		st.tpm, st.tpmTaken = tpm, n
	}
	if p.Stream && s.cfg.WaitUpdates > 0 {
		qr.Updates, qr.Waiting = s.cfg.WaitUpdates, func(ahead int, start time.Duration) { waitUpdate(rec, ahead, start) }
	}
	ticket, err := g.queue.Acquire(ctx, qr)
	if err != nil {
		var ref *queue.Refusal
		if errors.As(err, &ref) {
			reason := string(ref.Reason)
			st.reason = reason
			g.log.Debug("refused", "reason", reason, "message", ref.Message)
			f := failure{status: http.StatusServiceUnavailable, kind: typeUnavailable, code: reason, msg: ref.Message,
				retryAfter: ref.RetryAfterSeconds(), outcome: reason}
			switch ref.Reason {
			case queue.ReasonQueueFull:
				f.status, f.kind = http.StatusTooManyRequests, typeRateLimit
			case queue.ReasonTooManySequences, queue.ReasonDeadlineTooShort:
				f.status, f.kind, f.retryAfter = http.StatusBadRequest, typeInvalid, 0
			}
			g.fail(rec, st, f)
			return
		}
		st.outcome, st.status = "cancelled", 499
		return
	}
	st.dispatched = true
	st.waited = ticket.Waited()
	g.metrics.queueWait.Observe(st.waited.Seconds())
	rec.Header().Set(QueueWaitHeader, strconv.FormatFloat(st.waited.Seconds(), 'f', 3, 64))
	if rec.early {
		waited(rec, st.waited)
		defer sendHeld(rec, st)
	}
	if ctx.Err() != nil {
		ticket.Release()
		st.outcome, st.status = "cancelled", 499
		return
	}
	if grp := ticket.Group(); grp != nil && len(grp.Members) > 1 {
		g.coalescer.serve(ctx, rec, st, ticket, p)
		return
	}
	defer ticket.Release()
	st.ticket = ticket
	g.metrics.upstream.WithLabelValues("proxied").Inc()
	g.proxy.ServeHTTP(rec, r.WithContext(context.WithValue(ctx, stateKey{}, st)))
}

// readBody reads a request body of at most limit bytes. A body of
// declared length is read into one buffer of that size; one beyond the
// limit is refused before it is read.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	switch n := r.ContentLength; {
	case n > limit:
		return nil, &http.MaxBytesError{Limit: limit}
	case n >= 0:
		// The server ends the body after n bytes and reports a short one.
		body := make([]byte, n)
		_, err := io.ReadFull(r.Body, body)
		return body, err
	}
	return io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
}

// fail answers with f and records its outcome.
func (g *Gateway) fail(w http.ResponseWriter, st *reqState, f failure) {
	st.outcome = f.outcome
	if rec, ok := w.(*recorder); ok && rec.early {
		rec.status = f.status
		writeErrorEvent(rec, f, st.id)
		return
	}
	writeError(w, f, st.id)
}

func retrySeconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}
