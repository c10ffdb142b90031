package tune

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The sweeps kept in docs/tuning are reproduced by --report from their
// points.jsonl alone: the table, the best point and the frontier come out
// byte for byte as stored (the frontier as today's plotter draws it), and
// nothing is measured or appended. A plotter change fails here until the
// pictures are redrawn with the command the failure prints.
func TestReportRedrawsTheStoredSweeps(t *testing.T) {
	folders, err := filepath.Glob("../../../docs/tuning/*/points.jsonl")
	older, err2 := filepath.Glob("../../../docs/tuning/*/*/points.jsonl") // measured on older profiles
	folders = append(folders, older...)
	if err != nil || err2 != nil || len(folders) == 0 {
		t.Fatalf("no sweep in docs/tuning (%v, %v)", err, err2)
	}
	for _, points := range folders {
		stored := filepath.Dir(points)
		t.Run(strings.TrimPrefix(stored, "../../../docs/tuning/"), func(t *testing.T) {
			args := commandArgs(t, filepath.Join(stored, "command.txt"))
			dir := t.TempDir()
			for _, f := range []string{"points.jsonl", "command.txt", profileFile} {
				if _, err := os.Stat(filepath.Join(stored, f)); f == profileFile && err != nil {
					continue // a sweep of a real engine's configuration
				}
				copyFile(t, filepath.Join(stored, f), filepath.Join(dir, f))
			}
			fs := flag.NewFlagSet("tune-engine", flag.ContinueOnError)
			run := tuneEngineFlags(fs)
			if err := fs.Parse(append(args, "--results", dir, "--report", "--quiet")); err != nil {
				t.Fatal(err)
			}
			if rc := run(context.Background(), nil); rc != 0 {
				t.Fatalf("--report on %s: exit %d", stored, rc)
			}
			name := strings.TrimPrefix(stored, "../../../")
			for _, f := range []string{"points.jsonl", "command.txt", "table.md", "best.toml", "frontier.svg"} {
				want, _ := os.ReadFile(filepath.Join(stored, f))
				got, err := os.ReadFile(filepath.Join(dir, f))
				switch {
				case err != nil:
					t.Errorf("--report wrote no %s: %v", f, err)
				case !bytes.Equal(got, want):
					t.Errorf("%s/%s is not what --report writes from its points.jsonl; redraw it with\n\tbin/llmlab tune-engine %s --results %s --report",
						name, f, strings.Join(args, " "), name)
				}
			}
		})
	}
}

// commandArgs are the flags of the first tune-engine command in a sweep's
// command.txt, less its --results and --quiet.
func commandArgs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		_, rest, ok := strings.Cut(line, " tune-engine ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		var args []string
		fields := strings.Fields(rest)
		for i := 0; i < len(fields); i++ {
			switch fields[i] {
			case "--results":
				i++
			case "--quiet":
			default:
				args = append(args, fields[i])
			}
		}
		return args
	}
	t.Fatalf("%s names no tune-engine command", path)
	return nil
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
