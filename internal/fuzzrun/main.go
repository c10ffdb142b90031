// Command fuzzrun runs each fuzz target for a number of executions and
// fails when one stalls, so that `make fuzz` measures fuzzing rather than
// trusting it.
//
// Two defects of Go's duration budget (-fuzztime 15s) are why it exists:
//   - a race in the fuzz coordinator reports "context deadline exceeded" as
//     a failure when the time runs out while a worker is mid-call
//     (golang/go#75804, fixed in Go 1.27; this module builds with 1.26);
//   - a target can sit at 0 executions a second (minimizing, or hung in the
//     code under test) and still pass when its time is up.
//
// A count budget (-fuzztime Nx) has no deadline to race, and go test applies
// no -timeout while fuzzing, so a stall would wait forever; fuzzrun reads the
// coordinator's progress lines and ends the run when the executions (or the
// baseline pass over the corpus) stop growing for -stall, or when the whole
// run takes longer than -limit.
//
//	go run ./internal/fuzzrun -execs 100000 ./daemon/config:FuzzParse ...
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	execs := flag.Int("execs", 100000, "executions per target")
	stall := flag.Duration("stall", 20*time.Second, "fail a target whose executions stop growing for this long once fuzzing has begun")
	limit := flag.Duration("limit", 5*time.Minute, "fail a target that has not finished in this long, compilation included")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: fuzzrun [flags] package:FuzzTarget ...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	failed := 0
	for _, arg := range flag.Args() {
		pkg, target, ok := strings.Cut(arg, ":")
		if !ok || !strings.HasPrefix(target, "Fuzz") {
			fmt.Fprintf(os.Stderr, "fuzzrun: %q: want package:FuzzTarget\n", arg)
			os.Exit(2)
		}
		cmd := exec.Command("go", "test", pkg, "-run", "^$", "-fuzz", "^"+target+"$",
			"-fuzztime", strconv.Itoa(*execs)+"x", "-fuzzminimizetime", "0s")
		fmt.Printf("fuzzrun: %s %s\n", pkg, target)
		res, err := run(context.Background(), cmd, os.Stdout, *stall, *limit)
		switch {
		case err != nil:
			failed++
			fmt.Printf("fuzzrun: FAIL %s %s: %v\n", pkg, target, err)
		default:
			fmt.Printf("fuzzrun: ok %s %s: %d executions in %s fuzzing (%.0f/s)\n",
				pkg, target, res.execs, res.fuzzing.Round(time.Second), res.rate())
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}

// result is what a finished run measured.
type result struct {
	execs   int64
	fuzzing time.Duration // from the first progress line after the baseline to the end
}

func (r result) rate() float64 {
	if r.fuzzing <= 0 {
		return 0
	}
	return float64(r.execs) / r.fuzzing.Seconds()
}

// errStalled and errTooLong say why a run was ended.
var (
	errStalled = errors.New("stalled")
	errTooLong = errors.New("did not finish")
)

// progress matches the coordinator's lines, "fuzz: elapsed: 6s, execs: 21480
// (6972/sec), new interesting: 11 (total: 574)"; baseline matches those of
// the corpus's first pass, "fuzz: elapsed: 3s, gathering baseline coverage:
// 40/563 completed", which count as progress too.
var (
	progress = regexp.MustCompile(`^fuzz: elapsed: \S+, execs: (\d+) `)
	baseline = regexp.MustCompile(`^fuzz: elapsed: \S+, gathering baseline coverage: (\d+)/`)
)

// run starts cmd, copies its output to out, and watches it: the run fails
// when the executions stop growing for stall once fuzzing has begun, when
// it exceeds limit, or when cmd fails.
func run(ctx context.Context, cmd *exec.Cmd, out io.Writer, stall, limit time.Duration) (result, error) {
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // the test binary and its workers end with it
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	exited := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		pw.Close()
		exited <- err
	}()

	type sample struct {
		execs    int64
		at       time.Time
		baseline bool
	}
	lines := make(chan sample)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintln(out, sc.Text())
			if m := progress.FindStringSubmatch(sc.Text()); m != nil {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				lines <- sample{n, time.Now(), false}
			} else if m := baseline.FindStringSubmatch(sc.Text()); m != nil {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				lines <- sample{n, time.Now(), true}
			}
		}
		io.Copy(io.Discard, pr)
	}()

	kill := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var (
		started  time.Time // first progress line after the baseline
		last     sample    // the last line whose count grew
		watching bool      // once the baseline or fuzzing has begun
		res      result
		stallErr error
	)
	for {
		select {
		case s := <-lines:
			if !watching || s.baseline != last.baseline || s.execs > last.execs {
				watching, last = true, s
			}
			if !s.baseline {
				if started.IsZero() {
					started = s.at
				}
				res.execs = s.execs
			}
		case <-tick.C:
			if watching && stallErr == nil && time.Since(last.at) > stall {
				what := "executions"
				if last.baseline {
					what = "baseline inputs"
				}
				stallErr = fmt.Errorf("%w: %d %s, none in the last %s", errStalled, last.execs, what, stall)
				kill()
			}
		case <-deadline.C:
			if stallErr == nil {
				stallErr = fmt.Errorf("%w in %s: %d executions", errTooLong, limit, res.execs)
				kill()
			}
		case <-ctx.Done():
			kill()
			<-exited
			return res, ctx.Err()
		case err := <-exited:
			for more := true; more; { // the lines still in the pipe
				select {
				case s := <-lines:
					if !s.baseline {
						res.execs = s.execs
					}
				case <-scanDone:
					more = false
				}
			}
			if !started.IsZero() {
				res.fuzzing = time.Since(started)
			}
			if stallErr != nil {
				return res, stallErr
			}
			return res, err
		}
	}
}
