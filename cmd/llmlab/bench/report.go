package bench

import (
	"cmp"
	"context"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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

// svg is a minimal chart writer: axes, ticks, lines, a legend.
type svg struct {
	b    strings.Builder
	w, h int
}

const plotPad = 55

func (s *svg) panel(x0 int, title, xlabel, ylabel string, xmax, ymax float64, series []series, ref float64) {
	w, h := 420, s.h-30
	px := func(v float64) float64 { return float64(x0+plotPad) + v/xmax*float64(w-2*plotPad) }
	py := func(v float64) float64 { return float64(h-plotPad) - min(v, ymax)/ymax*float64(h-2*plotPad) }
	fmt.Fprintf(&s.b, `<text x="%d" y="20" font-size="13">%s</text>`+"\n", x0+plotPad, esc(title))
	fmt.Fprintf(&s.b, `<path d="M%d %d V%d H%d" fill="none" stroke="black"/>`+"\n", x0+plotPad, plotPad, h-plotPad, x0+w-plotPad)
	for i := 0; i <= 4; i++ {
		yv, xv := ymax*float64(i)/4, xmax*float64(i)/4
		fmt.Fprintf(&s.b, `<text x="%d" y="%.0f" text-anchor="end">%.3g</text>`+"\n", x0+plotPad-4, py(yv)+4, yv)
		fmt.Fprintf(&s.b, `<text x="%.0f" y="%d" text-anchor="middle">%.3g</text>`+"\n", px(xv), h-plotPad+14, xv)
	}
	fmt.Fprintf(&s.b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", x0+w/2, h-plotPad+30, esc(xlabel))
	fmt.Fprintf(&s.b, `<text x="%d" y="%d" transform="rotate(-90 %d %d)" text-anchor="middle">%s</text>`+"\n", x0+14, h/2, x0+14, h/2, esc(ylabel))
	if ref > 0 {
		fmt.Fprintf(&s.b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="gray" stroke-dasharray="4 3"/>`+"\n", x0+plotPad, py(ref), x0+w-plotPad, py(ref))
	}
	for _, se := range series {
		var pts []string
		for _, p := range se.points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1])))
		}
		fmt.Fprintf(&s.b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", se.color, strings.Join(pts, " "))
	}
}

type series struct {
	name, color string
	points      [][2]float64
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}

func (s *svg) legend(series []series) {
	for i, se := range series {
		fmt.Fprintf(&s.b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", plotPad+(i%2)*200, s.h-22+(i/2)*14, se.color, esc(se.name))
	}
}

func newSVG(w, h int) *svg {
	s := &svg{w: w, h: h}
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", w, h)
	fmt.Fprintf(&s.b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	return s
}

func (s *svg) String() string { return s.b.String() + "</svg>\n" }

// esc makes text safe inside an SVG element, as XML wants it (&, <, >
// and quotes as entities; invalid UTF-8 and characters XML does not allow
// as U+FFFD): every title, label, legend and note goes through it.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// byLabel groups phases into series by label (target, baseline), ordered
// by offered rate.
func byLabel(phases []Phase, y func(Phase) float64) []series {
	idx := map[string]int{}
	var out []series
	for _, p := range phases {
		i, ok := idx[p.Label]
		if !ok {
			i = len(out)
			idx[p.Label] = i
			out = append(out, series{name: p.Label, color: palette[i%len(palette)]})
		}
		out[i].points = append(out[i].points, [2]float64{p.Rate, y(p)})
	}
	return out
}

// PlotLoad draws goodput and p95 latency against offered load, one line
// per label, the SLO latency dashed.
func PlotLoad(phases []Phase, slo SLO) string {
	s := newSVG(840, 350)
	xmax, gmax, lmax := 1.0, 1.0, slo.Latency.Seconds()*1.5
	for _, p := range phases {
		xmax = max(xmax, p.Rate)
		gmax = max(gmax, p.Summary.Goodput*1.1)
		lmax = max(lmax, p.Summary.Latency.P95.Seconds())
	}
	good := byLabel(phases, func(p Phase) float64 { return p.Summary.Goodput })
	lat := byLabel(phases, func(p Phase) float64 { return p.Summary.Latency.P95.Seconds() })
	s.panel(0, "goodput (answered within the SLO latency)", "offered load (req/s)", "req/s", xmax, gmax, good, 0)
	s.panel(420, "p95 latency of answered requests", "offered load (req/s)", "seconds", xmax, lmax, lat, slo.Latency.Seconds())
	s.legend(good)
	return s.String()
}

// PlotDistribution draws the empirical CDF of each phase's latencies.
func PlotDistribution(phases []Phase) string {
	s := newSVG(440, 350)
	var ss []series
	xmax := 0.001
	for _, p := range phases {
		var lat []time.Duration
		for _, x := range p.Samples {
			if !x.Warmup && x.Error == "" && x.Status == 200 {
				lat = append(lat, x.Latency)
			}
		}
		if len(lat) == 0 {
			continue
		}
		sortDurations(lat)
		se := series{name: fmt.Sprintf("%s @ %.3g/s", p.Label, p.Rate)}
		step := max(1, len(lat)/200)
		for j := 0; j < len(lat); j += step {
			se.points = append(se.points, [2]float64{lat[j].Seconds(), float64(j+1) / float64(len(lat))})
		}
		se.points = append(se.points, [2]float64{lat[len(lat)-1].Seconds(), 1})
		xmax = max(xmax, lat[len(lat)-1].Seconds())
		ss = append(ss, se)
	}
	// The last phases (the highest loads of a sweep), one color each.
	if len(ss) > len(palette) {
		ss = ss[len(ss)-len(palette):]
	}
	for i := range ss {
		ss[i].color = palette[i]
	}
	s.panel(0, "latency distribution (CDF), last phases", "latency (s)", "share of answered requests", xmax, 1, ss, 0)
	s.legend(ss)
	return s.String()
}

// PlotPoint is one point of a scatter plot; Frontier marks the points on
// the frontier, which are joined by a line and labelled.
type PlotPoint struct {
	X, Y     float64
	Label    string
	Frontier bool
}

// PlotFrontier draws points (hollow grey) and the frontier among them
// (filled, joined in order of X, labelled), with a note under the title.
func PlotFrontier(title, note, xlabel, ylabel string, points []PlotPoint) string {
	s := newSVG(640, 420)
	w, h := 640, 390
	xmax, ymax := 0.0, 0.0
	for _, p := range points {
		xmax, ymax = max(xmax, p.X), max(ymax, p.Y)
	}
	xmax, ymax = max(xmax*1.1, 1e-9), max(ymax*1.15, 1e-9)
	px := func(v float64) float64 { return float64(plotPad) + v/xmax*float64(w-2*plotPad) }
	py := func(v float64) float64 { return float64(h-plotPad) - v/ymax*float64(h-2*plotPad) }
	fmt.Fprintf(&s.b, `<text x="%d" y="20" font-size="13">%s</text>`+"\n", plotPad, esc(title))
	fmt.Fprintf(&s.b, `<text x="%d" y="36" fill="#555">%s</text>`+"\n", plotPad, esc(note))
	fmt.Fprintf(&s.b, `<path d="M%d %d V%d H%d" fill="none" stroke="black"/>`+"\n", plotPad, plotPad, h-plotPad, w-plotPad)
	for i := 0; i <= 4; i++ {
		yv, xv := ymax*float64(i)/4, xmax*float64(i)/4
		fmt.Fprintf(&s.b, `<text x="%d" y="%.0f" text-anchor="end">%.3g</text>`+"\n", plotPad-4, py(yv)+4, yv)
		fmt.Fprintf(&s.b, `<text x="%.0f" y="%d" text-anchor="middle">%.3g</text>`+"\n", px(xv), h-plotPad+14, xv)
	}
	fmt.Fprintf(&s.b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", w/2, h-plotPad+30, esc(xlabel))
	fmt.Fprintf(&s.b, `<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">%s</text>`+"\n", h/2, h/2, esc(ylabel))
	var front []PlotPoint
	for _, p := range points {
		if p.Frontier {
			front = append(front, p)
			continue
		}
		fmt.Fprintf(&s.b, `<circle cx="%.1f" cy="%.1f" r="4" fill="none" stroke="#999"/>`+"\n", px(p.X), py(p.Y))
	}
	slices.SortFunc(front, func(a, b PlotPoint) int { return cmp.Compare(a.X, b.X) })
	var pts []string
	for _, p := range front {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p.X), py(p.Y)))
	}
	fmt.Fprintf(&s.b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", palette[1], strings.Join(pts, " "))
	for _, p := range front {
		fmt.Fprintf(&s.b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>`+"\n", px(p.X), py(p.Y), palette[1])
		fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" font-size="10">%s</text>`+"\n", px(p.X)+6, py(p.Y)-6, esc(p.Label))
	}
	return s.String()
}
