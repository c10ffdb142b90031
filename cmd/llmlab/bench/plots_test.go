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
