package server

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/llmlab/llmlab/internal/modelcards"
)

// fetchMaxModelLen asks the engine for its context length; 0 when the
// engine does not say (an engine other than vLLM).
func fetchMaxModelLen(ctx context.Context, client *http.Client, url string) (int, error) {
	l, err := modelcards.Fetch(ctx, client, url)
	if err != nil {
		return 0, err
	}
	return l.MaxModelLen(), nil
}

// contextTarget is what learnMaxModelLen feeds: the gateway.
type contextTarget interface {
	SetMaxModelLen(n int)
}

// learnMaxModelLen learns the engine's context length from its /v1/models
// each time the engine becomes ready, and forgets it while the engine is
// not ready (a restarted engine may have other flags). check-config cannot
// ask a scaled-to-zero engine, so this is where llmlab learns it; the
// limits.max_tokens it is checked against is logged when it cannot fit.
func learnMaxModelLen(ctx context.Context, log *slog.Logger, url string, every time.Duration, ready func() bool, gw contextTarget, maxTokens func() int) {
	client := &http.Client{Timeout: 5 * time.Second}
	t := time.NewTicker(every)
	defer t.Stop()
	known := false
	// After a failed ask, wait this many ticks (doubling, to about 5 s)
	// so an engine without /v1/models is not asked 4 times a second.
	skip, backoff := 0, 1
	for {
		if r := ready(); !r && known {
			gw.SetMaxModelLen(0)
			known, skip, backoff = false, 0, 1
		} else if r && !known && skip > 0 {
			skip--
		} else if r && !known {
			n, err := fetchMaxModelLen(ctx, client, url)
			switch {
			case err != nil:
				log.Debug("cannot learn the engine's context length yet", "err", err)
				skip, backoff = backoff, min(2*backoff, 20)
			default:
				known = true
				gw.SetMaxModelLen(n)
				if n > 0 {
					log.Info("engine context length", "max_model_len", n)
					if mt := maxTokens(); mt >= n {
						log.Warn("limits.max_tokens does not fit the engine's context: requests that ask for that many tokens get 400",
							"max_tokens", mt, "max_model_len", n)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
