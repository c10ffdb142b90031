package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sh runs a script in place of go test, printing the coordinator's lines.
func sh(script string) *exec.Cmd { return exec.Command("sh", "-c", script) }

const baselineLines = `echo "fuzz: elapsed: 0s, gathering baseline coverage: 0/3 completed"
echo "fuzz: elapsed: 1s, gathering baseline coverage: 3/3 completed, now fuzzing with 2 workers"
`

func TestRunFinishes(t *testing.T) {
	var out strings.Builder
	res, err := run(context.Background(), sh(baselineLines+`
echo "fuzz: elapsed: 3s, execs: 30 (10/sec), new interesting: 0 (total: 3)"
echo "fuzz: elapsed: 6s, execs: 100 (23/sec), new interesting: 1 (total: 4)"
echo PASS`), &out, time.Minute, time.Minute)
	if err != nil || res.execs != 100 {
		t.Fatalf("run: %+v, %v; want 100 executions and no error", res, err)
	}
	if !strings.Contains(out.String(), "PASS") || !strings.Contains(out.String(), "baseline") {
		t.Errorf("the command's output was not passed through:\n%s", out.String())
	}
}

// A run whose executions stop growing is ended and reported, and the whole
// process group goes with it (the sleep would otherwise hold the pipe open).
func TestRunStalls(t *testing.T) {
	start := time.Now()
	res, err := run(context.Background(), sh(baselineLines+`
echo "fuzz: elapsed: 3s, execs: 5 (2/sec), new interesting: 5 (total: 8)"
echo "fuzz: elapsed: 6s, execs: 8 (1/sec), new interesting: 7 (total: 10)"
echo "fuzz: elapsed: 9s, execs: 8 (0/sec), new interesting: 7 (total: 10)"
sleep 60 & wait`), io.Discard, 2*time.Second, time.Minute)
	if !errors.Is(err, errStalled) || res.execs != 8 {
		t.Fatalf("run: %+v, %v; want a stall at 8 executions", res, err)
	}
	if !strings.Contains(err.Error(), "8 executions") {
		t.Errorf("the error does not say where it stalled: %v", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the stalled run took %s to end; its process group was not killed", d)
	}
}

// Before the first progress line (compiling) only the limit applies.
func TestRunLimit(t *testing.T) {
	_, err := run(context.Background(), sh(`echo "# compiling"; sleep 60 & wait`), io.Discard, time.Second, 3*time.Second)
	if !errors.Is(err, errTooLong) {
		t.Fatalf("run: %v; want the limit to end it", err)
	}
}

// A failing target fails the run, with the output that says why.
func TestRunFails(t *testing.T) {
	var out strings.Builder
	_, err := run(context.Background(), sh(baselineLines+`
echo "--- FAIL: FuzzParse (0.10s)"
echo "    Failing input written to testdata/fuzz/FuzzParse/abc"
exit 1`), &out, time.Minute, time.Minute)
	if err == nil || errors.Is(err, errStalled) || errors.Is(err, errTooLong) {
		t.Fatalf("run: %v; want the command's own failure", err)
	}
	if !strings.Contains(out.String(), "Failing input written") {
		t.Errorf("the failure's output was not passed through:\n%s", out.String())
	}
}

// The real thing: go test -fuzz on a target that hangs on some inputs is
// ended as a stall, where a count budget alone would wait forever.
func TestRunStallsOnAHangingTarget(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module hang\n\ngo 1.26\n")
	write("hang_test.go", `package hang

import (
	"testing"
	"time"
)

func FuzzHang(f *testing.F) {
	f.Add("a")
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 2 {
			time.Sleep(time.Hour)
		}
	})
}
`)
	cmd := exec.Command("go", "test", ".", "-run", "^$", "-fuzz", "^FuzzHang$", "-fuzztime", "1000000x", "-fuzzminimizetime", "0s")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	res, err := run(context.Background(), cmd, io.Discard, 5*time.Second, 3*time.Minute)
	if !errors.Is(err, errStalled) {
		t.Fatalf("run: %+v, %v; want a stall", res, err)
	}
}

// A hang in the corpus's first pass is a stall too.
func TestRunStallsInTheBaseline(t *testing.T) {
	_, err := run(context.Background(), sh(`
echo "fuzz: elapsed: 0s, gathering baseline coverage: 0/30 completed"
echo "fuzz: elapsed: 3s, gathering baseline coverage: 7/30 completed"
sleep 60 & wait`), io.Discard, 2*time.Second, time.Minute)
	if !errors.Is(err, errStalled) || !strings.Contains(err.Error(), "7 baseline inputs") {
		t.Fatalf("run: %v; want a stall at 7 baseline inputs", err)
	}
}
