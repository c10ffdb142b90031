package server

import (
	"fmt"
	"github.com/llmlab/llmlab/internal/lockedbuf"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testConfig is a configuration file for a daemon built in a test: its
// own API port, no metrics listener or textfile, no GPU, text logs, and
// the settings in set ("section.key = value", TOML) over those.
func testConfig(set ...string) string {
	sections := map[string]map[string]string{
		"gateway": {"listen": `"127.0.0.1:0"`},
		"metrics": {"listen": `""`, "textfile": `""`},
		"gpu":     {"enabled": "false"},
		"log":     {"format": `"text"`},
	}
	for _, s := range set {
		k, v, _ := strings.Cut(s, " = ")
		sec, key, _ := strings.Cut(k, ".")
		if sections[sec] == nil {
			sections[sec] = map[string]string{}
		}
		sections[sec][key] = v
	}
	var b strings.Builder
	for _, sec := range slices.Sorted(maps.Keys(sections)) {
		fmt.Fprintf(&b, "[%s]\n", sec)
		for _, key := range slices.Sorted(maps.Keys(sections[sec])) {
			fmt.Fprintf(&b, "%s = %s\n", key, sections[sec][key])
		}
	}
	return b.String()
}

// writeConfig writes text to the configuration file at path.
func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// newTestDaemon builds, with newDaemon, the daemon that the configuration
// text describes, written to a file of its own; nothing runs until the
// test says so. It returns the daemon, its logs and its file.
func newTestDaemon(t *testing.T, text string) (*daemon, *lockedbuf.Buffer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "llmlab.toml")
	writeConfig(t, path, text)
	logs := &lockedbuf.Buffer{}
	d, err := newDaemon(Options{ConfigPath: path, Explicit: true, Stderr: logs})
	if err != nil {
		t.Fatalf("newDaemon: %v", err)
	}
	t.Cleanup(func() { closeAll(d.lns.api) })
	return d, logs, path
}
