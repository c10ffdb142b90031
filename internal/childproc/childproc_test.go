package childproc

import (
	"os"
	"os/signal"
	"strings"
	"testing"
	"time"
)

// The test binary is the child: TestMain runs the helper below when asked.
func TestMain(m *testing.M) {
	switch os.Getenv("CHILDPROC_TEST_HELPER") {
	case "":
		os.Exit(m.Run())
	case "say":
		os.Stdout.WriteString("starting\nlistening on 127.0.0.1:12345\n")
		time.Sleep(time.Minute)
	case "exit":
		os.Stderr.WriteString("cannot bind\n")
		os.Exit(1)
	case "deaf":
		// Ignores the interrupt, as a stuck child would.
		signal.Ignore(os.Interrupt)
		os.Stdout.WriteString("up\n")
		for {
			time.Sleep(time.Hour)
		}
	}
}

func start(t *testing.T, mode string) *Proc {
	t.Helper()
	t.Setenv("CHILDPROC_TEST_HELPER", mode)
	p, err := Start(t.Context(), t.TempDir(), "helper", os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWaitLineReadsWhatTheChildSays(t *testing.T) {
	p := start(t, "say")
	defer p.Stop(5 * time.Second)
	line, err := p.WaitLine(10*time.Second, func(l string) bool { return strings.HasPrefix(l, "listening on ") })
	if err != nil || line != "listening on 127.0.0.1:12345" {
		t.Fatalf("WaitLine = %q, %v; want the listening line", line, err)
	}
	if !p.Running() || p.PID() == 0 {
		t.Errorf("Running() = %v, PID() = %d; want a running child", p.Running(), p.PID())
	}
	p.Stop(5 * time.Second)
	if p.Running() {
		t.Errorf("Running() after Stop = true")
	}
	p.Stop(5 * time.Second) // a second Stop does nothing
}

func TestWaitLineFailsWhenTheChildExits(t *testing.T) {
	p := start(t, "exit")
	defer p.Stop(5 * time.Second)
	_, err := p.WaitLine(10*time.Second, func(string) bool { return false })
	if err == nil || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("WaitLine = %v, want the child's exit with its output", err)
	}
}

func TestStopKillsPastTheGrace(t *testing.T) {
	p := start(t, "deaf")
	if _, err := p.WaitLine(10*time.Second, func(l string) bool { return l == "up" }); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	p.Stop(200 * time.Millisecond)
	if p.Running() {
		t.Fatal("Running() after Stop = true")
	}
	if took := time.Since(t0); took < 200*time.Millisecond || took > 5*time.Second {
		t.Errorf("Stop(200ms) of a child that ignores the interrupt took %s, want it killed after 200ms", took)
	}
}
