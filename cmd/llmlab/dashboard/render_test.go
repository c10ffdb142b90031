package dashboard

import (
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// Panel titles, legends and errors reach the SVG as text, whatever they
// hold: "&" and "<" in a title or a label, and a legend cut in the middle
// of a character, must not break the file.
func TestRenderEscapesItsText(t *testing.T) {
	start := time.Unix(1700000000, 0)
	end := start.Add(time.Minute)
	pts := []Point{{start, 1}, {start.Add(30 * time.Second), 2}, {end, 3}}
	res := []Result{
		{Query: Query{Panel: &Panel{Title: "goodput & p95 <5s>"}}, Series: []Series{
			{Name: `ok & <fast> "now"`, Points: pts},
			{Name: strings.Repeat("é", 40), Points: pts}, // trimmed to 30 characters, not bytes
		}},
		{Query: Query{Panel: &Panel{Title: "engine", Type: "state-timeline"}}, Series: []Series{{Name: "ready & <up>", Points: pts}}},
		{Query: Query{Panel: &Panel{Title: "broken"}}, Err: errors.New(`parse error at "<" & more`)},
	}
	svg := Render("llmlab & <friends>", res, start, end)
	d := xml.NewDecoder(strings.NewReader(svg))
	var text strings.Builder
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the SVG does not parse as XML: %v\n%s", err, svg)
		}
		if c, ok := tok.(xml.CharData); ok {
			text.Write(c)
			text.WriteString("\n")
		}
	}
	for _, want := range []string{"llmlab & <friends>", "goodput & p95 <5s>", `ok & <fast> "now"`, "ready & <up>", `parse error at "<" & more`} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the SVG's text lacks %q:\n%s", want, text.String())
		}
	}
}
