// Package progressline owns the live progress of llmlab's long commands
// (bench, tune-engine). On a terminal it is one line redrawn in place
// ("\r\033[K", carriage return and erase to the end of the line); anywhere
// else (a log file, a pipe, CI's output) those codes would only be noise,
// so it writes plain lines, at most one per interval.
package progressline

import (
	"io"
	"sync"
	"time"

	"golang.org/x/term"
)

// Line is a progress line on one writer. Its methods may be called from
// several goroutines.
type Line struct {
	w     io.Writer
	tty   bool
	every time.Duration

	mu     sync.Mutex
	drawn  bool      // a line is drawn in place and not yet erased
	logged time.Time // when the last plain line was written
}

// New is a progress line on w: redrawn in place where w is a terminal,
// else plain lines, at most one per every (0: each Show is a line).
func New(w io.Writer, every time.Duration) *Line {
	return &Line{w: w, tty: IsTerminal(w), every: every}
}

// IsTerminal says whether w is a terminal (a file whose descriptor is one).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// Show puts text on the line: in place on a terminal; else as a plain
// line, unless one was written less than the interval ago.
func (l *Line) Show(text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tty {
		_, _ = io.WriteString(l.w, "\r\033[K"+text)
		l.drawn = true
		return
	}
	if now := time.Now(); l.logged.IsZero() || now.Sub(l.logged) >= l.every {
		l.logged = now
		_, _ = io.WriteString(l.w, text+"\n")
	}
}

// Clear erases the line on a terminal, so that other output starts at the
// left margin; plain lines need nothing.
func (l *Line) Clear() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tty && l.drawn {
		_, _ = io.WriteString(l.w, "\r\033[K")
		l.drawn = false
	}
}
