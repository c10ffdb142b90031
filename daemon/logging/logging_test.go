package logging

import (
	"bytes"
	"strings"
	"testing"
)

func TestJournalKey(t *testing.T) {
	for in, want := range map[string]string{"request_id": "REQUEST_ID", "queue_wait": "QUEUE_WAIT", "err": "ERR", "a.b-c": "A_B_C"} {
		if got := journalKey(in); got != want {
			t.Errorf("journalKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTextAndJSON(t *testing.T) {
	var b bytes.Buffer
	log, err := New("json", "info", &b)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("hidden")
	log.Info("request", "request_id", "abc")
	if out := b.String(); strings.Contains(out, "hidden") || !strings.Contains(out, `"request_id":"abc"`) {
		t.Fatalf("json log = %q", out)
	}
	b.Reset()
	text, err := New("text", "debug", &b)
	if err != nil {
		t.Fatal(err)
	}
	text.Debug("shown", "request_id", "abc")
	if out := b.String(); !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "msg=shown") || !strings.Contains(out, "request_id=abc") {
		t.Fatalf("text log = %q, want key=value pairs at debug level", out)
	}
	if _, err := New("text", "loud", &b); err == nil {
		t.Fatal("level loud accepted")
	}
}
