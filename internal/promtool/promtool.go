// Package promtool finds Debian's promtool for the tests that check the
// alert rules and llmlabd's /metrics with it.
package promtool

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Path returns promtool: $LLMLAB_PROMTOOL (make test sets it), one on
// PATH, or the one monitoring/promtool.sh unpacks from Debian's
// prometheus package into its cache.
func Path() (string, error) {
	if p := os.Getenv("LLMLAB_PROMTOOL"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		return p, nil
	}
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "monitoring", "promtool.sh")
	out, err := exec.Command("sh", script).Output()
	if err != nil {
		return "", fmt.Errorf("no promtool (sh monitoring/promtool.sh fetches Debian's): %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}
