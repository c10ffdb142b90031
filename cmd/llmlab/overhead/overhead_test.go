package overhead

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

// The Go reference proxy passes streamed answers through whole, the
// engine sees the client's address, and a request's body arrives intact.
func TestReverseProxyStreams(t *testing.T) {
	eng := httptest.NewServer(&fakeengine.Engine{})
	defer eng.Close()
	u, _ := url.Parse(eng.URL)
	proxy := httptest.NewServer(ReverseProxy(u))
	defer proxy.Close()

	const body = `{"model":"m","prompt":"hello","max_tokens":20,"stream":true}`
	var wg sync.WaitGroup
	errs := make(chan string, 400)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				resp, err := http.Post(proxy.URL+"/v1/completions", "application/json", strings.NewReader(body))
				if err != nil {
					errs <- err.Error()
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || strings.Count(string(b), "data: ") != 21 || !strings.HasSuffix(string(b), "data: [DONE]\n\n") {
					errs <- "status " + resp.Status + ", body " + string(b)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
