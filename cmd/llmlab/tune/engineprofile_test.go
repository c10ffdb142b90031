package tune

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmlab/llmlab/cmd/llmlab/sim"
)

// A simulator sweep's folder records the profile its points were measured
// on; --report names that one, and a sweep on changed numbers is refused
// rather than mixed into the folder.
func TestSweepFolderKeepsItsProfile(t *testing.T) {
	dir := t.TempDir()
	p := sim.Profiles["gtx1650"]
	if err := recordProfile(dir, p); err != nil {
		t.Fatal(err)
	}
	if err := recordProfile(dir, p); err != nil {
		t.Fatalf("the same profile again: %v", err)
	}
	changed := p
	changed.Description = "recalibrated"
	changed.Source = "another measurement"
	err := recordProfile(dir, changed)
	if err == nil || !strings.Contains(err.Error(), "measured on another profile") || !strings.Contains(err.Error(), "new --results folder") {
		t.Fatalf("a sweep on changed numbers into the folder: %v", err)
	}
	if got := measuredProfile(dir, changed); got.Description != p.Description || got.Name != p.Name {
		t.Fatalf("--report names %q (%s), want the measured %q", got.Name, got.Description, p.Name)
	}
	if got := measuredProfile(filepath.Join(dir, "none"), changed); got.Description != "recalibrated" {
		t.Fatalf("a folder without profile.txt: %q, want the current profile", got.Description)
	}
	if _, err := os.Stat(filepath.Join(dir, profileFile)); err != nil {
		t.Fatal(err)
	}
}
