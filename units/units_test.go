// Package units holds llmlab's systemd units; its test checks them with
// systemd-analyze (the real-systemd tests boot them in a container).
package units

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// copyUnits writes the units to a temporary folder with their ExecStart
// binaries pointed at an executable that exists here (verify checks that).
func copyUnits(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"llmlab.socket", "llmlab.service", "llmlab-vllm.service"} {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.NewReplacer("/usr/bin/llmlabd", self, "/usr/libexec/llmlab/llmlab-engine", self).Replace(string(data))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestVerify(t *testing.T) {
	dir := copyUnits(t)
	cmd := exec.Command("systemd-analyze", "verify", "--man=no",
		filepath.Join(dir, "llmlab.socket"), filepath.Join(dir, "llmlab.service"), filepath.Join(dir, "llmlab-vllm.service"))
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The daemon's unit rates "OK" or better: exposure at most 2.0.
func TestSecurityExposure(t *testing.T) {
	dir := copyUnits(t)
	out, _ := exec.Command("systemd-analyze", "security", "--offline=true", filepath.Join(dir, "llmlab.service")).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for llmlab.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	level, _ := strconv.ParseFloat(string(m[1]), 64)
	if level > 2.0 {
		t.Fatalf("exposure %.1f, want <= 2.0:\n%s", level, out)
	}
}
