package lockedbuf

import (
	"fmt"
	"sync"
	"testing"
)

// Writers and readers in several goroutines (run with -race), and Lines
// finds what was written.
func TestConcurrentWritesAndLines(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(2)
		go func() { defer wg.Done(); fmt.Fprintf(&b, "line %d ok\n", i) }()
		go func() { defer wg.Done(); _ = b.String() }()
	}
	wg.Wait()
	if got := b.Lines("ok"); len(got) != 4 {
		t.Fatalf("Lines(ok) = %q, want 4 lines", got)
	}
	if got := b.Lines("line 2"); len(got) != 1 || got[0] != "line 2 ok" {
		t.Fatalf("Lines(line 2) = %q", got)
	}
}
