package bench

import (
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// wellFormed parses svg as XML to its end and returns the text of every
// element, so that a test can look for the words it wrote.
func wellFormed(t *testing.T, svg string) string {
	t.Helper()
	d := xml.NewDecoder(strings.NewReader(svg))
	var text strings.Builder
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return text.String()
		}
		if err != nil {
			t.Fatalf("the SVG does not parse as XML: %v\n%s", err, svg)
		}
		if c, ok := tok.(xml.CharData); ok {
			text.Write(c)
			text.WriteString("\n")
		}
	}
}

// Titles, labels, legends and notes reach the SVG as text, whatever they
// hold: "&" and "<" in a target's label or a sweep's note must not break
// the file.
func TestPlotsEscapeTheirText(t *testing.T) {
	label := `R&D <gpu> "a" 'b'`
	phases := []Phase{
		{Label: label, Rate: 1, Summary: Summary{Goodput: 1, Latency: Percentiles{P95: time.Second}},
			Samples: []Sample{{Status: 200, Latency: time.Second}}},
		{Label: "baseline", Rate: 2, Summary: Summary{Goodput: 2, Latency: Percentiles{P95: 2 * time.Second}},
			Samples: []Sample{{Status: 200, Latency: 2 * time.Second}}},
	}
	for name, svg := range map[string]string{
		"load":         PlotLoad(phases, SLO{Latency: 5 * time.Second}),
		"distribution": PlotDistribution(phases),
		"frontier": PlotFrontier("rate & memory <GiB>", "note: a<b & c>d", "x & <y>", "req/s <ok>",
			[]PlotPoint{{X: 1, Y: 1, Label: label, Frontier: true}, {X: 2, Y: 0.5, Label: "under & <below>"}}),
	} {
		t.Run(name, func(t *testing.T) {
			text := wellFormed(t, svg)
			want := label
			if name == "frontier" {
				want = "rate & memory <GiB>"
			}
			if !strings.Contains(text, want) {
				t.Errorf("the SVG's text lacks %q:\n%s", want, text)
			}
		})
	}
}

// The load plot marks every measured point (each phase, on both panels),
// labels the SLO line, and has a legend swatch per line.
func TestPlotLoadMarksPointsAndLabelsTheSLO(t *testing.T) {
	var phases []Phase
	for _, l := range []string{"target", "baseline"} {
		for r := 1; r <= 3; r++ {
			phases = append(phases, Phase{Label: l, Rate: float64(r), Summary: Summary{Goodput: float64(r), Latency: Percentiles{P95: time.Duration(r) * time.Second}}})
		}
	}
	svg := PlotLoad(phases, SLO{Latency: 5 * time.Second})
	if n := strings.Count(svg, "<circle"); n != 2*len(phases) {
		t.Errorf("%d markers, want %d (each phase on both panels)", n, 2*len(phases))
	}
	text := wellFormed(t, svg)
	if !strings.Contains(text, "SLO p95 5s") {
		t.Errorf("the SLO line is not labelled:\n%s", text)
	}
	if n := strings.Count(svg, "<line"); n != 1+2 {
		t.Errorf("%d lines, want the SLO's and a legend swatch for each of 2 series", n)
	}
}
