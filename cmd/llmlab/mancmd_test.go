package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The manual pages carry every command and every flag the binaries take,
// and render without groff warnings.
func TestManPages(t *testing.T) {
	dir := t.TempDir()
	if code := manCmd(context.Background(), []string{dir}); code != 0 {
		t.Fatalf("llmlab man exited %d", code)
	}
	page1, _ := os.ReadFile(filepath.Join(dir, "llmlab.1"))
	for _, c := range subcommands() {
		if !strings.Contains(string(page1), `.SS "`+strings.ReplaceAll(c.Name, "-", `\-`)) {
			t.Errorf("llmlab.1 lacks the command %s", c.Name)
		}
		if c.Flags != nil {
			c.Flags.VisitAll(func(f *flag.Flag) {
				if !strings.Contains(string(page1), `\fB\-\-`+strings.ReplaceAll(f.Name, "-", `\-`)+`\fR`) {
					t.Errorf("llmlab.1 lacks %s --%s", c.Name, f.Name)
				}
			})
		}
	}
	page8, _ := os.ReadFile(filepath.Join(dir, "llmlabd.8"))
	daemonFlags().VisitAll(func(f *flag.Flag) {
		if !strings.Contains(string(page8), `\fB\-\-`+strings.ReplaceAll(f.Name, "-", `\-`)+`\fR`) {
			t.Errorf("llmlabd.8 lacks --%s", f.Name)
		}
	})
	if _, err := exec.LookPath("groff"); err != nil {
		t.Fatal("groff is needed to check the pages (apt-get install groff-base)")
	}
	for _, f := range []string{"llmlab.1", "llmlabd.8"} {
		out, err := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", filepath.Join(dir, f)).CombinedOutput()
		if err != nil || len(out) > 0 {
			t.Errorf("groff %s: %v\n%s", f, err, out)
		}
	}
}

func TestCompletionScriptParses(t *testing.T) {
	var b bytes.Buffer
	if err := writeCompletion(&b); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "llmlab")
	os.WriteFile(f, b.Bytes(), 0o644)
	out, err := exec.Command("bash", "-c", `source "$1" && complete -p llmlab llmlabd`, "bash", f).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "_llmlabd llmlabd") {
		t.Fatalf("bash: %v\n%s", err, out)
	}
}
