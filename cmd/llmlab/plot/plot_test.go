package plot

import (
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestTextIsEscaped(t *testing.T) {
	c := New(100, 50)
	c.Text(`x="1" y="2"`, `R&D <gpu> "q" 'a'`+"\x01\xff")
	c.Shape(`<path d="M%d %d V%d" stroke="black"/>`, 1, 2, 3)
	d := xml.NewDecoder(strings.NewReader(c.String()))
	var text strings.Builder
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the SVG does not parse as XML: %v\n%s", err, c)
		}
		if cd, ok := tok.(xml.CharData); ok {
			text.Write(cd)
		}
	}
	if want := `R&D <gpu> "q" 'a'` + "\uFFFD\uFFFD"; !strings.Contains(text.String(), want) {
		t.Errorf("text %q, want %q", text.String(), want)
	}
}
