package gateway

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

// BenchmarkProxy measures the gateway's per-request cost in process
// against an engine that answers at once (go test -bench Proxy).
func BenchmarkProxy(b *testing.B) {
	for _, bc := range []struct {
		name string
		body string
	}{
		{"short", `{"model":"m","prompt":"` + "Write" + strings.Repeat(" word", 199) + `","max_tokens":1}`},
		{"stream200", `{"model":"m","prompt":"` + "Write" + strings.Repeat(" word", 199) + `","max_tokens":200,"stream":true}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := testConfig()
			cfg.MaxBodyBytes = 1 << 20
			cfg.Queue.MaxInflight, cfg.Queue.MaxQueued = 256, 4096
			cfg.Queue.MaxWait = time.Minute
			cfg.AccessLog = false
			f := newFixture(&testing.T{}, cfg, nil, &fakeengine.Engine{})
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(f.srv.URL+"/v1/completions", "application/json", strings.NewReader(bc.body))
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
			b.StopTimer()
			f.srv.Close()
			f.engine.Close()
		})
	}
}
