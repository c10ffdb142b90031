package tune

import (
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
)

// bareProxy is the crude peer of every overload benchmark: a reverse proxy
// that answers 429 with Retry-After: 1 once n requests are in flight and
// does nothing else (llama-swap's concurrencyLimit: no queue, no model, no
// objective).
func bareProxy(engine string, n int) http.Handler {
	u, err := url.Parse(engine)
	if err != nil {
		panic(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	var inflight atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if inflight.Add(1) > int64(n) {
			inflight.Add(-1)
			w.Header().Set("Retry-After", "1")
			http.Error(w, `{"error":{"message":"too many requests","type":"rate_limit_error","code":"concurrency_limit"}}`, http.StatusTooManyRequests)
			return
		}
		defer inflight.Add(-1)
		rp.ServeHTTP(w, r)
	})
}
