package progressline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Off a terminal (here a file, as when the output goes to a log or CI),
// progress is plain lines with no control characters, at most one per
// interval, and Clear writes nothing.
func TestPlainLinesOffATerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if IsTerminal(f) {
		t.Fatal("IsTerminal(a file) = true")
	}
	l := New(f, time.Hour)
	l.Show("[##..] 1/2 starting")
	l.Show("[##..] 1/2 probe at 2 req/s") // within the hour: left out
	l.Clear()
	each := New(f, 0)
	each.Show("[####] 2/2 starting")
	each.Show("[####] 2/2 probe at 4 req/s")
	each.Clear()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	want := "[##..] 1/2 starting\n[####] 2/2 starting\n[####] 2/2 probe at 4 req/s\n"
	if got := string(b); got != want {
		t.Errorf("written:\n%q\nwant:\n%q", got, want)
	}
	if strings.ContainsAny(string(b), "\r\033") {
		t.Errorf("control characters off a terminal: %q", b)
	}
}

// A writer that is not a file is no terminal either.
func TestABufferIsNoTerminal(t *testing.T) {
	var b strings.Builder
	New(&b, 0).Show("x")
	if b.String() != "x\n" {
		t.Errorf("written %q, want a plain line", b.String())
	}
}

// On a terminal the line is redrawn in place and erased by Clear.
func TestInPlaceOnATerminal(t *testing.T) {
	var b strings.Builder
	l := &Line{w: &b, tty: true}
	l.Show("a")
	l.Show("b")
	l.Clear()
	l.Clear() // nothing drawn: nothing to erase
	if want := "\r\033[Ka\r\033[Kb\r\033[K"; b.String() != want {
		t.Errorf("written %q, want %q", b.String(), want)
	}
}
