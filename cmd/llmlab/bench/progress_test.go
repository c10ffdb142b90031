package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/progressline"
)

// llmlab bench --progress on into a log (no terminal): plain lines, no
// carriage returns or erase codes.
func TestBenchProgressOffATerminal(t *testing.T) {
	var b strings.Builder
	p := newProgress(Options{Duration: time.Second}, progressline.New(&b, 0))
	p.add(Sample{Status: 200, Latency: 30 * time.Millisecond})
	out := b.String()
	if !strings.HasSuffix(out, "\n") || !strings.Contains(out, "answered 1 (ok 1)") || strings.ContainsAny(out, "\r\033") {
		t.Errorf("progress written %q, want one plain line", out)
	}
}
