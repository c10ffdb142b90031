package tune

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/llmlab/llmlab/cmd/llmlab/sim"
)

// profileFile records, in a simulator sweep's results folder, the profile
// its points were measured on: its name and description, one line each.
// A profile's numbers change when the simulator is calibrated again
// (docs/calibration.md); a folder's points keep the numbers they were
// measured with, so --report names the profile they had, and a sweep
// refuses to add points measured on other numbers to them.
const profileFile = "profile.txt"

func profileLine(p sim.Profile) string {
	return p.Name + "\n" + p.Description + "\n" + p.Source + "\n"
}

// recordProfile writes the folder's profile.txt on a first measurement, and
// refuses a folder whose points were measured on other numbers.
func recordProfile(dir string, p sim.Profile) error {
	path := filepath.Join(dir, profileFile)
	got, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return os.WriteFile(path, []byte(profileLine(p)), 0o644)
	case err != nil:
		return err
	case string(got) != profileLine(p):
		return fmt.Errorf("%s was measured on another profile (%s): the simulator's numbers have changed since (docs/calibration.md); measure into a new --results folder",
			dir, firstLines(string(got), 2))
	}
	return nil
}

// measuredProfile is p as the folder's points were measured: its recorded
// name and description where the folder has them.
func measuredProfile(dir string, p sim.Profile) sim.Profile {
	data, err := os.ReadFile(filepath.Join(dir, profileFile))
	if err != nil {
		return p
	}
	lines := strings.SplitN(string(data), "\n", 3)
	if len(lines) >= 2 && lines[0] != "" {
		p.Name, p.Description = lines[0], lines[1]
	}
	return p
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "; ")
}
