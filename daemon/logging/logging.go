// Package logging builds llmlabd's slog logger: structured journald fields
// when stderr is connected to the journal (so `journalctl -u llmlab
// REQUEST_ID=...` works), plain text or JSON otherwise.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	slogjournal "github.com/systemd/slog-journal"
)

// New returns a logger for format ("auto", "text", "json", "journal") at
// level ("debug", "info", "warn", "error"), writing non-journal output to w.
func New(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	if format == "auto" {
		format = "text"
		if ok, _ := journal.StderrIsJournalStream(); ok {
			format = "journal"
		}
	}
	switch format {
	case "journal":
		h, err := slogjournal.NewHandler(&slogjournal.Options{
			Level:        lv,
			ReplaceAttr:  func(_ []string, a slog.Attr) slog.Attr { a.Key = journalKey(a.Key); return a },
			ReplaceGroup: journalKey,
		})
		if err != nil {
			return nil, fmt.Errorf("connecting to the journal: %w", err)
		}
		return slog.New(h), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})), nil
	default:
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), nil
	}
}

// journalKey turns an attribute key into a journal field name
// (request_id becomes REQUEST_ID).
func journalKey(k string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			return r
		}
		return '_'
	}, k)
}
