package demo

import (
	"fmt"
	"strings"
)

// plot draws goodput and p95 latency against offered load as an SVG, one
// line per target, with the SLO latency as a dashed line.
func plot(rows []Row, o Options) string {
	const w, h, pad = 420, 300, 50
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", 2*w, h+30)
	maxRate, maxGood, maxLat := 0.0, 0.0, o.SLO.Latency.Seconds()*1.5
	for _, r := range rows {
		maxRate = max(maxRate, r.Rate)
		maxGood = max(maxGood, r.Summary.Goodput, r.Summary.RPS)
		maxLat = max(maxLat, r.Summary.Latency.P95.Seconds())
	}
	colors := map[string]string{"llmlab": "#1f77b4", "direct": "#d62728"}
	panel := func(x0 int, title, unit string, ymax float64, val func(Row) float64, ref float64) {
		px := func(v float64) float64 { return float64(x0+pad) + v/maxRate*float64(w-2*pad) }
		py := func(v float64) float64 { return float64(h-pad) - v/ymax*float64(h-2*pad) }
		fmt.Fprintf(&b, `<text x="%d" y="20" font-size="13">%s</text>`+"\n", x0+pad, title)
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", x0+pad, h-pad, x0+w-pad, h-pad)
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", x0+pad, pad, x0+pad, h-pad)
		for i := 0; i <= 4; i++ {
			v := ymax * float64(i) / 4
			fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end">%.1f</text>`+"\n", x0+pad-4, py(v)+4, v)
			r := maxRate * float64(i) / 4
			fmt.Fprintf(&b, `<text x="%.0f" y="%d" text-anchor="middle">%.0f</text>`+"\n", px(r), h-pad+14, r)
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">offered load (req/s)</text>`+"\n", x0+w/2, h-pad+30)
		fmt.Fprintf(&b, `<text x="%d" y="%d" transform="rotate(-90 %d %d)" text-anchor="middle">%s</text>`+"\n", x0+12, h/2, x0+12, h/2, unit)
		if ref > 0 {
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="gray" stroke-dasharray="4 3"/>`+"\n", x0+pad, py(ref), x0+w-pad, py(ref))
		}
		for t, c := range colors {
			var pts []string
			for _, r := range rows {
				if r.Target == t {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(r.Rate), py(min(val(r), ymax))))
				}
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", c, strings.Join(pts, " "))
		}
	}
	panel(0, "goodput (within SLO)", "req/s", maxGood*1.1, func(r Row) float64 { return r.Summary.Goodput }, 0)
	panel(w, "p95 latency of answered requests", "seconds", maxLat, func(r Row) float64 { return r.Summary.Latency.P95.Seconds() }, o.SLO.Latency.Seconds())
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">through llmlab</text><text x="%d" y="%d" fill="%s">engine alone</text>`+"\n",
		pad, h+20, colors["llmlab"], pad+120, h+20, colors["direct"])
	b.WriteString("</svg>\n")
	return b.String()
}
