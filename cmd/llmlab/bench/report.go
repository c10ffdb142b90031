package bench

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Phase is one measured run at one offered load against one target.
type Phase struct {
	Target  string   `json:"target"`
	Label   string   `json:"label"` // "target" or "baseline"
	Rate    float64  `json:"rate"`  // offered req/s (0 for closed loop)
	Summary Summary  `json:"summary"`
	Lag     LagCheck `json:"sim_lag"`
	Samples []Sample `json:"samples"`
}

// Window returns the measurement window of a run: the configured duration,
// or, for a run of a fixed number of requests, from the end of the warm-up
// to the last answer.
func Window(samples []Sample, o Options) time.Duration {
	if o.Requests == 0 {
		return o.Duration
	}
	var end time.Duration
	for _, s := range samples {
		if !s.Warmup {
			end = max(end, s.Start+s.Latency)
		}
	}
	return max(end-o.Warmup, time.Millisecond)
}

// LagCheck says whether an engine simulator kept up with its own model
// during a phase: the share of its steps that ended more than the
// threshold late. A run whose simulator lagged measures the machine, not
// the engine, and is marked invalid.
type LagCheck struct {
	Checked   bool    `json:"checked"`
	Steps     float64 `json:"steps"`
	LateSteps float64 `json:"late_steps"`
	Valid     bool    `json:"valid"`
}

// lagThreshold is a bucket bound of llmlab_sim_step_lag_seconds.
const lagThreshold = "0.02"

// maxLateShare is the share of late steps that invalidates a run.
const maxLateShare = 0.01

// Scrape reads the Prometheus text exposition at url, by metric family.
func Scrape(url string) (map[string]*dto.MetricFamily, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// LagSnapshot reads a simulator's step-lag histogram from metricsURL. ok is
// false when the URL is not a simulator's.
func LagSnapshot(metricsURL string) (steps, onTime float64, ok bool) {
	fams, err := Scrape(metricsURL)
	if err != nil {
		return 0, 0, false
	}
	f := fams["llmlab_sim_step_lag_seconds"]
	if f == nil || len(f.Metric) == 0 || f.Metric[0].Histogram == nil {
		return 0, 0, false
	}
	h := f.Metric[0].Histogram
	for _, b := range h.Bucket {
		if strconv.FormatFloat(b.GetUpperBound(), 'f', -1, 64) == lagThreshold {
			onTime = float64(b.GetCumulativeCount())
		}
	}
	return float64(h.GetSampleCount()), onTime, true
}

// CheckLag compares two snapshots of one simulator.
func CheckLag(beforeSteps, beforeOnTime, afterSteps, afterOnTime float64) LagCheck {
	c := LagCheck{Checked: true, Steps: afterSteps - beforeSteps}
	c.LateSteps = c.Steps - (afterOnTime - beforeOnTime)
	c.Valid = c.Steps == 0 || c.LateSteps/c.Steps <= maxLateShare
	return c
}

// busyGauges are the series whose sum is zero when a server holds no
// request: vLLM's (and the simulator's) own, or llmlabd's queue and
// in-flight counts.
var busyGauges = []string{"vllm:num_requests_running", "vllm:num_requests_waiting", "llmlab_inflight_sequences", "llmlab_queue_sequences"}

// Drain waits until the server behind metricsURL neither runs nor holds
// a request (busyGauges at zero), so that one phase's backlog does not
// spill into the next, and gives up after timeout. An engine that serves
// none of them (Ollama has no /metrics) is not waited for: Run returns only
// once every request it sent has its answer or was abandoned, and an
// engine stops working on a request whose connection closed.
func Drain(ctx context.Context, metricsURL string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		fams, err := Scrape(metricsURL)
		if err != nil {
			return
		}
		busy, seen := 0.0, false
		for _, name := range busyGauges {
			if f := fams[name]; f != nil {
				for _, m := range f.Metric {
					busy += m.GetGauge().GetValue()
					seen = true
				}
			}
		}
		if !seen || busy == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WriteResults writes a results folder: the command and options, every
// sample (JSON), one CSV line per phase, and the plots.
func WriteResults(dir string, command []string, options any, phases []Phase, slo SLO) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "command.txt"), []byte(shellQuote(command)+"\n"), 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, "results.json"))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	enc.SetIndent("", " ")
	err = enc.Encode(struct {
		Command []string  `json:"command"`
		Options any       `json:"options"`
		SLO     SLO       `json:"slo"`
		When    time.Time `json:"when"`
		Phases  []Phase   `json:"phases"`
	}{command, options, slo, time.Now().UTC(), phases})
	f.Close()
	if err != nil {
		return err
	}
	c, err := os.Create(filepath.Join(dir, "results.csv"))
	if err != nil {
		return err
	}
	writeCSV(c, phases)
	c.Close()
	if err := os.WriteFile(filepath.Join(dir, "latency-vs-load.svg"), []byte(PlotLoad(phases, slo)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "latency-distribution.svg"), []byte(PlotDistribution(phases)), 0o644)
}

func writeCSV(w io.Writer, phases []Phase) {
	cw := csv.NewWriter(w)
	cw.Write([]string{"label", "target", "rate", "requests", "ok", "refused", "failed", "rps", "goodput", "output_tps",
		"error_rate", "p50_s", "p90_s", "p95_s", "p99_s", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "pass", "valid"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 4, 64) }
	for _, p := range phases {
		s := p.Summary
		cw.Write([]string{p.Label, p.Target, f(p.Rate), strconv.Itoa(s.Requests), strconv.Itoa(s.OK), strconv.Itoa(s.Refused),
			strconv.Itoa(s.Failed), f(s.RPS), f(s.Goodput), f(s.OutputTPS), f(s.ErrorRate), f(s.Latency.P50.Seconds()),
			f(s.Latency.P90.Seconds()), f(s.Latency.P95.Seconds()), f(s.Latency.P99.Seconds()), f(s.TTFT.P50.Seconds()),
			f(s.TTFT.P95.Seconds()), f(s.TPOT.P50.Seconds()), strconv.FormatBool(s.Pass), strconv.FormatBool(!p.Lag.Checked || p.Lag.Valid)})
	}
	cw.Flush()
}

func shellQuote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$`\\*?[]{}();&|<>!#~") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}
