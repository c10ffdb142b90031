// Package plot is the small SVG writer behind llmlab's pictures: the
// benchmark's and tune-engine's plots (cmd/llmlab/bench) and the
// dashboard's panels (cmd/llmlab/dashboard). Its one way to write text is
// Text, which escapes it as XML wants, so a title, label, legend or note
// holding "&" or "<" cannot break a file. It gives axes round ticks (1, 2
// or 5 x 10^k: Ticks), measured points a marker, and lines a legend.
package plot

import (
	"encoding/xml"
	"fmt"
	"strings"
)

// Canvas is a picture being drawn.
type Canvas struct {
	b strings.Builder
	// W and H are its size in pixels.
	W, H int
}

// New starts a picture of w x h pixels on white, in an 11-pixel sans-serif
// font unless a text says otherwise.
func New(w, h int) *Canvas {
	c := &Canvas{W: w, H: h}
	fmt.Fprintf(&c.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", w, h)
	fmt.Fprintf(&c.b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	return c
}

// Text writes a text element: attrs are its attributes (`x="10" y="20"
// text-anchor="end"`), text its content, escaped.
func (c *Canvas) Text(attrs, text string) {
	c.b.WriteString("<text " + attrs + ">" + Esc(text) + "</text>\n")
}

// Shape writes one element that holds no text (a path, a line, a
// circle), formatted as fmt.Sprintf does, on a line of its own.
func (c *Canvas) Shape(format string, args ...any) {
	fmt.Fprintf(&c.b, format+"\n", args...)
}

// Marker marks a measured point: a filled circle in its line's color.
func (c *Canvas) Marker(x, y float64, color string) {
	c.Shape(`<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`, x, y, color)
}

// Entry is one line of a legend.
type Entry struct {
	Name, Color string
	// Dashed draws its swatch dashed, as its line is.
	Dashed bool
}

// Legend writes entries in rows of cols from (x, y), each colW wide and
// rowH high: a short line in the entry's color, then its name.
func (c *Canvas) Legend(x, y, colW, rowH float64, cols int, entries []Entry) {
	cols = max(cols, 1)
	for i, e := range entries {
		ex, ey := x+float64(i%cols)*colW, y+float64(i/cols)*rowH
		dash := ""
		if e.Dashed {
			dash = ` stroke-dasharray="4 3"`
		}
		c.Shape(`<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="2"%s/>`, ex, ey-4, ex+16, ey-4, e.Color, dash)
		c.Text(fmt.Sprintf(`x="%.0f" y="%.0f" fill="%s"`, ex+20, ey, e.Color), e.Name)
	}
}

// String is the finished picture.
func (c *Canvas) String() string { return c.b.String() + "</svg>\n" }

// Esc makes s safe as an SVG element's text, as XML wants it: &, <, > and
// quotes as entities; invalid UTF-8 and characters XML does not allow as
// U+FFFD.
func Esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
