package tune

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

// tune-admission's llmlabd binds its API and metrics ports itself; both
// addresses are read back from its log and answer.
func TestStartShippedReadsBackItsPorts(t *testing.T) {
	_, daemon := binaries(t)
	eng := httptest.NewServer(&fakeengine.Engine{})
	defer eng.Close()
	api, metrics, stop, err := startShipped(t.Context(), daemon, t.TempDir(), eng.URL, "m", 5*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, u := range []string{api + "/healthz", metrics + "/metrics"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.HasSuffix(u, ":0/metrics") {
			t.Errorf("GET %s: %s", u, resp.Status)
		}
	}
}
