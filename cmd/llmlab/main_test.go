package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The benchmark's helper commands stay out of what lists an operator's
// commands (the usage text, llmlab.1, the completion), and stay callable.
func TestHelpersAreUnlistedButCallable(t *testing.T) {
	var usage strings.Builder
	printUsage(&usage)
	dir := t.TempDir()
	if code := manCmd(context.Background(), []string{dir}); code != 0 {
		t.Fatalf("llmlab man exited %d", code)
	}
	page, _ := os.ReadFile(filepath.Join(dir, "llmlab.1"))
	var completion strings.Builder
	if err := writeCompletion(&completion); err != nil {
		t.Fatal(err)
	}
	for _, h := range helpers() {
		for what, text := range map[string]string{"the usage text": usage.String(), "llmlab.1": string(page), "the completion": completion.String()} {
			if strings.Contains(text, h.Name) || strings.Contains(text, strings.ReplaceAll(h.Name, "-", `\-`)) {
				t.Errorf("%s lists the helper %s", what, h.Name)
			}
		}
		if h.Flags(flag.NewFlagSet(h.Name, flag.ContinueOnError)) == nil {
			t.Errorf("the helper %s has nothing to run", h.Name)
		}
	}
	for _, c := range commands() {
		if !strings.Contains(usage.String(), "  "+c.Name) {
			t.Errorf("the usage text lacks %s", c.Name)
		}
	}
}
