package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDurationsIgnoreTheWallClock checks that no code of llmlabd does
// arithmetic on the wall clock. Issue 15 asks what happens when the wall
// clock jumps (an NTP step, an operator's date -s). Every duration
// llmlabd acts on (timeouts, rates, idle timers, start times, the
// status window) is the difference of two time.Now readings, which Go
// takes on the monotonic clock that a jump does not move; a jump then
// changes only the timestamps in logs and /status. What would break
// that is a wall-clock reading turned into a number or stripped of its
// monotonic part: t.Unix and its kin, time.Unix, t.Round(0),
// t.Truncate(0). Setting the clock of the machine the tests run on is
// not something a test here may do, so this check is what stands guard.
func TestDurationsIgnoreTheWallClock(t *testing.T) {
	var found []string
	for _, dir := range []string{".", "../../daemon"} {
		found = append(found, wallClockReads(t, dir)...)
	}
	for _, f := range found {
		t.Errorf("wall-clock arithmetic: %s", f)
	}

	// The check must see each form it looks for.
	bad := wallClockReads(t, "testdata/wallclock")
	for _, want := range []string{"Unix", "UnixNano", "UnixMilli", "UnixMicro", "time.Unix", "Round(0)", "Truncate(0)"} {
		if !slices.ContainsFunc(bad, func(f string) bool { return strings.HasSuffix(f, " "+want) }) {
			t.Errorf("the check missed %s in testdata/wallclock; it found %q", want, bad)
		}
	}
}

// wallClockReads lists, as "file:line form", each wall-clock reading
// used as a number in the non-test Go files under dir.
func wallClockReads(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" && path != dir {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			var form string
			switch name := sel.Sel.Name; name {
			case "Unix":
				form = name
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "time" {
					form = "time.Unix"
				}
			case "UnixNano", "UnixMilli", "UnixMicro":
				form = name
			case "Round", "Truncate":
				if len(call.Args) == 1 {
					if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Value == "0" {
						form = name + "(0)"
					}
				}
			}
			if form != "" {
				found = append(found, fmt.Sprintf("%s %s", fset.Position(call.Pos()), form))
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}
