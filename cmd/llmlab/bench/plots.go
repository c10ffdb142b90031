package bench

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/plot"
)

// svg is a chart on a canvas: axes, ticks, lines, a legend.
type svg struct {
	*plot.Canvas
}

const plotPad = 55

// panel draws one chart at x0: round ticks on both axes (at least to
// xmax and ymax), the series' lines, a marker on each point where markers
// is set (measured points, not a curve's samples), and a dashed reference
// line labelled refLabel at ref when ref > 0.
func (s *svg) panel(x0 int, title, xlabel, ylabel string, xmax, ymax float64, series []series, ref float64, refLabel string, markers bool) {
	w, h := 420, s.H-30
	xend, xticks := plot.Ticks(xmax, 5)
	yend, yticks := plot.Ticks(ymax, 5)
	px := func(v float64) float64 { return float64(x0+plotPad) + v/xend*float64(w-2*plotPad) }
	py := func(v float64) float64 { return float64(h-plotPad) - min(v, yend)/yend*float64(h-2*plotPad) }
	s.Text(fmt.Sprintf(`x="%d" y="20" font-size="13"`, x0+plotPad), title)
	s.Shape(`<path d="M%d %d V%d H%d" fill="none" stroke="black"/>`, x0+plotPad, plotPad, h-plotPad, x0+w-plotPad)
	for _, yv := range yticks {
		s.Text(fmt.Sprintf(`x="%d" y="%.0f" text-anchor="end"`, x0+plotPad-4, py(yv)+4), plot.Label(yv, yticks[1]))
	}
	for _, xv := range xticks {
		s.Text(fmt.Sprintf(`x="%.0f" y="%d" text-anchor="middle"`, px(xv), h-plotPad+14), plot.Label(xv, xticks[1]))
	}
	s.Text(fmt.Sprintf(`x="%d" y="%d" text-anchor="middle"`, x0+w/2, h-plotPad+30), xlabel)
	s.Text(fmt.Sprintf(`x="%d" y="%d" transform="rotate(-90 %d %d)" text-anchor="middle"`, x0+14, h/2, x0+14, h/2), ylabel)
	if ref > 0 {
		s.Shape(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="gray" stroke-dasharray="4 3"/>`, x0+plotPad, py(ref), x0+w-plotPad, py(ref))
		s.Text(fmt.Sprintf(`x="%d" y="%.1f" text-anchor="end" fill="gray"`, x0+w-plotPad, py(ref)-4), refLabel)
	}
	for _, se := range series {
		var pts []string
		for _, p := range se.points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p[0]), py(p[1])))
		}
		s.Shape(`<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, se.color, strings.Join(pts, " "))
		if markers {
			for _, p := range se.points {
				s.Marker(px(p[0]), py(p[1]), se.color)
			}
		}
	}
}

type series struct {
	name, color string
	points      [][2]float64
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}

func (s *svg) legend(series []series) {
	var entries []plot.Entry
	for _, se := range series {
		entries = append(entries, plot.Entry{Name: se.name, Color: se.color})
	}
	s.Legend(plotPad, float64(s.H-22), 200, 14, 2, entries)
}

func newSVG(w, h int) *svg { return &svg{plot.New(w, h)} }

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
	s.panel(0, "goodput (answered within the SLO latency)", "offered load (req/s)", "req/s", xmax, gmax, good, 0, "", true)
	s.panel(420, "p95 latency of answered requests", "offered load (req/s)", "seconds", xmax, lmax, lat, slo.Latency.Seconds(),
		"SLO p95 "+slo.Latency.String(), true)
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
	s.panel(0, "latency distribution (CDF), last phases", "latency (s)", "share of answered requests", xmax, 1, ss, 0, "", false)
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
	xend, xticks := plot.Ticks(xmax, 5)
	yend, yticks := plot.Ticks(ymax, 5)
	px := func(v float64) float64 { return float64(plotPad) + v/xend*float64(w-2*plotPad) }
	py := func(v float64) float64 { return float64(h-plotPad) - v/yend*float64(h-2*plotPad) }
	s.Text(fmt.Sprintf(`x="%d" y="20" font-size="13"`, plotPad), title)
	s.Text(fmt.Sprintf(`x="%d" y="36" fill="#555"`, plotPad), note)
	s.Shape(`<path d="M%d %d V%d H%d" fill="none" stroke="black"/>`, plotPad, plotPad, h-plotPad, w-plotPad)
	for _, yv := range yticks {
		s.Text(fmt.Sprintf(`x="%d" y="%.0f" text-anchor="end"`, plotPad-4, py(yv)+4), plot.Label(yv, yticks[1]))
	}
	for _, xv := range xticks {
		s.Text(fmt.Sprintf(`x="%.0f" y="%d" text-anchor="middle"`, px(xv), h-plotPad+14), plot.Label(xv, xticks[1]))
	}
	s.Text(fmt.Sprintf(`x="%d" y="%d" text-anchor="middle"`, w/2, h-plotPad+30), xlabel)
	s.Text(fmt.Sprintf(`x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle"`, h/2, h/2), ylabel)
	var front []PlotPoint
	for _, p := range points {
		if p.Frontier {
			front = append(front, p)
			continue
		}
		s.Shape(`<circle cx="%.1f" cy="%.1f" r="4" fill="none" stroke="#999"/>`, px(p.X), py(p.Y))
	}
	slices.SortFunc(front, func(a, b PlotPoint) int { return cmp.Compare(a.X, b.X) })
	var pts []string
	for _, p := range front {
		pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(p.X), py(p.Y)))
	}
	s.Shape(`<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, palette[1], strings.Join(pts, " "))
	for _, p := range front {
		s.Shape(`<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>`, px(p.X), py(p.Y), palette[1])
		s.Text(fmt.Sprintf(`x="%.1f" y="%.1f" font-size="10"`, px(p.X)+6, py(p.Y)-6), p.Label)
	}
	s.Legend(plotPad, float64(s.H-12), 260, 14, 2, []plot.Entry{
		{Name: "the frontier (most req/s for the memory)", Color: palette[1]}, {Name: "the other points", Color: "#999"}})
	return s.String()
}
