// What the sweep reads over HTTP from llmlabd (/status, /metrics) and
// from the engine (/metrics, /v1/models), and from llmlabd's log.

package tune

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/daemon/server"
	"github.com/llmlab/llmlab/daemon/supervisor"
	"github.com/llmlab/llmlab/internal/modelcards"
)

// pollMemory is the highest GPU memory in use that llmlabd's NVML readings
// show until ctx ends (0: none; the simulator has no GPU).
func pollMemory(ctx context.Context, metricsAddr string) float64 {
	if metricsAddr == "" {
		return 0
	}
	peak := 0.0
	for {
		if v, ok := metricValue("http://"+metricsAddr+"/metrics", "llmlab_gpu_memory_used_bytes"); ok {
			peak = max(peak, v)
		}
		select {
		case <-ctx.Done():
			return peak
		case <-time.After(time.Second):
		}
	}
}

// metricValue sums the series of the gauge, counter or untyped metric
// name that url serves; ok is false when it serves none.
func metricValue(url, name string) (sum float64, ok bool) {
	fams, err := bench.Scrape(url)
	if err != nil || fams[name] == nil {
		return 0, false
	}
	for _, m := range fams[name].Metric {
		sum += m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
	}
	return sum, len(fams[name].Metric) > 0
}

// engineReports reads what a started engine says of itself, as vLLM
// reports it: its KV cache (vllm:cache_config_info's num_gpu_blocks and
// block_size labels: vllm/config/cache.py, metrics_info) and its context
// length (/v1/models' max_model_len).
func engineReports(engineURL string) (kvTokens int64, maxModelLen int) {
	if fams, err := bench.Scrape(engineURL + "/metrics"); err == nil {
		if f := fams["vllm:cache_config_info"]; f != nil && len(f.Metric) > 0 {
			labels := map[string]string{}
			for _, l := range f.Metric[0].Label {
				labels[l.GetName()] = l.GetValue()
			}
			blocks, _ := strconv.ParseInt(labels["num_gpu_blocks"], 10, 64)
			size, _ := strconv.ParseInt(labels["block_size"], 10, 64)
			kvTokens = blocks * size
		}
	}
	if l, err := modelcards.Fetch(context.Background(), http.DefaultClient, engineURL+"/v1/models"); err == nil {
		maxModelLen = l.MaxModelLen()
	}
	return kvTokens, maxModelLen
}

// engineLastWords is the last output of the engine that llmlabd logged as
// it exited (last_output, from the exec backend), as ": <line>".
func engineLastWords(logPath string) string {
	data, _ := os.ReadFile(logPath)
	lines := strings.Split(string(data), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		_, after, ok := strings.Cut(lines[i], "last_output=")
		if !ok || !strings.Contains(lines[i], "engine exited") {
			continue
		}
		if q, err := strconv.QuotedPrefix(after); err == nil {
			after, _ = strconv.Unquote(q)
		} else {
			after, _, _ = strings.Cut(after, " ")
		}
		return ": " + after
	}
	return ""
}

// fetchStatus reads llmlabd's /status, the document server.Status owns.
func fetchStatus(gw string) (server.Status, error) {
	var st server.Status
	resp, err := http.Get(gw + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET %s/status: %s", gw, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// lifecycle is the engine's lifecycle in a /status document; the zero
// Info where it has none (an engine llmlabd does not manage, or a
// /status not read).
func lifecycle(st server.Status) supervisor.Info {
	if st.Engine.Lifecycle == nil {
		return supervisor.Info{}
	}
	return *st.Engine.Lifecycle
}

// lastFailureSince is the engine's failure after t, if any. An llmlabd
// that does not answer says none; the next point's switch finds it gone.
func lastFailureSince(gw string, t time.Time) string {
	st, err := fetchStatus(gw)
	if err != nil {
		return ""
	}
	if lc := lifecycle(st); lc.LastFailure != "" && lc.LastFailureAt.After(t) {
		return lc.LastFailure
	}
	return ""
}
