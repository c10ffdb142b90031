// Package promtool finds the Prometheus tools the tests run for real:
// Debian's promtool, prometheus and prometheus-node-exporter. The shell
// side lives here too: debian-tool.sh unpacks them (.ci/run fills the
// cache with it), and promtool.sh prints promtool's path for make test.
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
// PATH, or the one debian-tool.sh unpacks from Debian's prometheus
// package into its cache.
func Path() (string, error) {
	if p := os.Getenv("LLMLAB_PROMTOOL"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		return p, nil
	}
	return Debian("prometheus", "promtool")
}

// Debian returns the path of bin from Debian's package pkg, unpacked (not
// installed, so no service starts) by debian-tool.sh, next to this file,
// into its cache, fetched with apt-get download the first time.
func Debian(pkg, bin string) (string, error) {
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "debian-tool.sh")
	out, err := exec.Command("sh", script, pkg, bin).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		return "", fmt.Errorf("no %s from Debian's %s (sh internal/promtool/debian-tool.sh %s %s): %w\n%s", bin, pkg, pkg, bin, err, stderr)
	}
	return strings.TrimSpace(string(out)), nil
}
