package dashboard

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/plot"
)

// Picture layout: two panels a row, each a chart with its legend below.
const (
	panelW, panelH = 560, 250
	padL, padR     = 62, 16
	padT, padB     = 28, 74
	columns        = 2
)

var colors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"}

// Render draws results, grouped by panel in the dashboard's order, as one
// SVG: time on each x axis (from the start), the panel's unit on y;
// state timelines as bands. A panel with no data says so.
func Render(title string, results []Result, start, end time.Time) string {
	type panelData struct {
		p      *Panel
		series []Series
		errs   []string
	}
	var panels []*panelData
	idx := map[*Panel]*panelData{}
	for _, r := range results {
		if strings.HasPrefix(r.Query.Panel.Title, "annotation: ") {
			continue
		}
		pd := idx[r.Query.Panel]
		if pd == nil {
			pd = &panelData{p: r.Query.Panel}
			idx[r.Query.Panel] = pd
			panels = append(panels, pd)
		}
		pd.series = append(pd.series, r.Series...)
		if r.Err != nil {
			pd.errs = append(pd.errs, r.Err.Error())
		}
	}
	rows := (len(panels) + columns - 1) / columns
	c := plot.New(columns*panelW, rows*panelH+40)
	c.Text(`x="10" y="24" font-size="16"`, fmt.Sprintf("%s, %s to %s UTC", title,
		start.UTC().Format("2006-01-02 15:04:05"), end.UTC().Format("15:04:05")))
	for i, pd := range panels {
		x0, y0 := (i%columns)*panelW, 40+(i/columns)*panelH
		chart(c, x0, y0, pd.p, pd.series, pd.errs, start, end)
	}
	return c.String()
}

func chart(c *plot.Canvas, x0, y0 int, p *Panel, series []Series, errs []string, start, end time.Time) {
	left, right := float64(x0+padL), float64(x0+panelW-padR)
	top, bottom := float64(y0+padT), float64(y0+panelH-padB)
	span := end.Sub(start).Seconds()
	px := func(t time.Time) float64 { return left + t.Sub(start).Seconds()/span*(right-left) }
	c.Text(fmt.Sprintf(`x="%.0f" y="%.0f" font-size="13"`, left, top-10), p.Title)
	c.Shape(`<path d="M%.0f %.0f V%.0f H%.0f" fill="none" stroke="black"/>`, left, top, bottom, right)
	for _, d := range timeTicks(end.Sub(start)) {
		t := start.Add(d)
		c.Text(fmt.Sprintf(`x="%.0f" y="%.0f" text-anchor="middle"`, px(t), bottom+13), sinceStart(d, end.Sub(start)))
	}
	if len(series) == 0 {
		msg := "no data"
		if len(errs) > 0 {
			msg = errs[0]
		}
		c.Text(fmt.Sprintf(`x="%.0f" y="%.0f" text-anchor="middle" fill="gray"`, (left+right)/2, (top+bottom)/2), msg)
		return
	}
	if p.Type == "state-timeline" {
		band := (bottom - top) / float64(len(series))
		for i, s := range series {
			y := top + float64(i)*band
			c.Text(fmt.Sprintf(`x="%.0f" y="%.0f" text-anchor="end"`, left-4, y+band/2+4), s.Name)
			for j, pt := range s.Points {
				if pt.V <= 0 {
					continue
				}
				next := end
				if j+1 < len(s.Points) {
					next = s.Points[j+1].T
				}
				if next.Sub(pt.T) > 2*stepOf(s) { // a gap: the series was absent
					next = pt.T.Add(stepOf(s))
				}
				c.Shape(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`,
					px(pt.T), y+2, max(px(next)-px(pt.T), 0.5), band-4, colors[i%len(colors)])
			}
		}
		return
	}
	ymax := 0.0
	for _, s := range series {
		for _, pt := range s.Points {
			if !math.IsNaN(pt.V) && !math.IsInf(pt.V, 0) {
				ymax = max(ymax, pt.V)
			}
		}
	}
	unit := p.FieldConfig.Defaults.Unit
	// Round ticks in the unit the axis is read in (GiB, percent).
	scale := unitScale(unit)
	yend, ticks := plot.Ticks(ymax*1.1/scale, 5)
	ymax = yend * scale
	py := func(v float64) float64 { return bottom - min(v, ymax)/ymax*(bottom-top) }
	for _, v := range ticks {
		c.Text(fmt.Sprintf(`x="%.0f" y="%.0f" text-anchor="end"`, left-4, py(v*scale)+4), format(v*scale, unit))
	}
	var legend []plot.Entry
	for i, s := range series {
		color := colors[i%len(colors)]
		var path strings.Builder
		var prev time.Time
		for _, pt := range s.Points {
			if math.IsNaN(pt.V) || math.IsInf(pt.V, 0) {
				prev = time.Time{}
				continue
			}
			cmd := "L"
			if prev.IsZero() || pt.T.Sub(prev) > 2*stepOf(s) {
				cmd = "M"
			}
			fmt.Fprintf(&path, "%s%.1f %.1f ", cmd, px(pt.T), py(pt.V))
			prev = pt.T
		}
		dash := ""
		if s.Name == "objective" {
			dash = ` stroke-dasharray="6 4"`
		}
		c.Shape(`<path d="%s" fill="none" stroke="%s" stroke-width="1.5"%s/>`, strings.TrimSpace(path.String()), color, dash)
		legend = append(legend, plot.Entry{Name: trim(s.Name, 24), Color: color, Dashed: dash != ""})
	}
	c.Legend(left, bottom+28, 165, 13, 3, legend)
}

// timeTicks are the time axis' ticks over span: a round step (seconds,
// minutes or hours) that gives at most 5 of them after the start.
func timeTicks(span time.Duration) []time.Duration {
	step := span
	for _, s := range []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second,
		30 * time.Second, time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
		time.Hour, 2 * time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour} {
		if span/s <= 5 {
			step = s
			break
		}
	}
	var out []time.Duration
	for d := time.Duration(0); d <= span && step > 0; d += step {
		out = append(out, d)
	}
	if len(out) == 0 {
		out = []time.Duration{0}
	}
	return out
}

// unitScale is what a value of the Grafana unit is divided by to be read
// (bytes as GiB, a ratio as percent), so that ticks fall on round readings.
func unitScale(unit string) float64 {
	switch unit {
	case "bytes":
		return 1 << 30
	case "percentunit":
		return 0.01
	}
	return 1
}

// sinceStart labels a time axis tick: seconds, minutes or hours from the
// start, as suits the span.
func sinceStart(d, span time.Duration) string {
	switch {
	case span <= 5*time.Minute:
		return fmt.Sprintf("%.0fs", d.Seconds())
	case span <= 5*time.Hour:
		return fmt.Sprintf("%.0fm", d.Minutes())
	default:
		return fmt.Sprintf("%.1fh", d.Hours())
	}
}

// stepOf is the spacing of a series' samples (its first two).
func stepOf(s Series) time.Duration {
	if len(s.Points) < 2 {
		return time.Minute
	}
	return s.Points[1].T.Sub(s.Points[0].T)
}

// format writes an axis value in the panel's Grafana unit.
func format(v float64, unit string) string {
	switch unit {
	case "bytes":
		return fmt.Sprintf("%.3g GiB", v/(1<<30))
	case "percentunit":
		return fmt.Sprintf("%.0f%%", v*100)
	case "s":
		return fmt.Sprintf("%.3g s", v)
	case "reqps":
		return fmt.Sprintf("%.3g/s", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// trim cuts s to n characters, the last an ellipsis where it cuts.
func trim(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
