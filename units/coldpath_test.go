//go:build systemtest

package units

// The cold path under a real systemd: from the socket to the engine unit
// and back to zero, the engine unit's permissions and failures, and the
// cold-start overhead.

import (
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The whole cold path under a real systemd: the socket starts llmlabd, the
// first request starts the engine unit over D-Bus (as the llmlab user,
// through the polkit rule) and is answered; after the idle timeouts the
// engine unit is inactive, llmlabd has exited and the socket still listens;
// the next request starts both again.
func TestSocketToEngineAndBackToZero(t *testing.T) {
	c, api := setup(t)
	if s := c.active("llmlab.service"); s == "active" {
		t.Fatal("llmlab.service runs before any connection")
	}
	c.status("before any connection", 0, "llmlab: scaled to zero", "llmlab.socket active (listening) on 127.0.0.1:")
	code, took, body := completion(t, api)
	if code != 200 {
		journal, _ := c.exec("journalctl", "--no-pager", "-n", "80")
		t.Fatalf("first request: %d %s\n%s", code, body, journal)
	}
	t.Logf("first request answered in %s (engine start-up delay 2s)", took)
	if s := c.active("llmlab-vllm.service"); s != "active" {
		t.Fatalf("engine unit %s after the first request", s)
	}
	user := strings.TrimSpace(c.must("sh", "-c", "stat -c %U /proc/$(systemctl show -p MainPID --value llmlab.service)"))
	if user != "llmlab" {
		t.Fatalf("llmlabd runs as %q, want llmlab", user)
	}
	c.checkHardening()
	c.status("while serving", 0, "llmlab: serving since", "engine:   ready since", "unit llmlab-vllm.service", "last cold start")
	c.waitActive("llmlab-vllm.service", "inactive", 20*time.Second)
	c.waitActive("llmlab.service", "inactive", 20*time.Second)
	if s := c.active("llmlab.socket"); s != "active" {
		t.Fatalf("llmlab.socket is %s after the daemon exited on idle", s)
	}
	c.status("after the exit on idle", 0, "llmlab: scaled to zero since")
	// The second cold start gets a burst: all answered, none refused for
	// concurrency while the engine starts.
	codes := make(chan int, 24)
	for range 24 {
		go func() {
			code, _, _ := completion(t, api)
			codes <- code
		}()
	}
	for range 24 {
		if code := <-codes; code != 200 {
			t.Fatalf("a request of the burst during the cold start got %d", code)
		}
	}
	if s := c.active("llmlab-vllm.service"); s != "active" {
		t.Fatalf("engine unit %s after the second cold start", s)
	}
	c.must("systemctl", "stop", "llmlab.socket", "llmlab.service")
	c.status("with the socket stopped", 3, "llmlab: not running", "systemctl start llmlab.socket")
}

// status runs llmlab status in the container and checks its exit code and
// output; it must not have started llmlabd where it was not running.
func (c *container) status(when string, code int, want ...string) {
	c.t.Helper()
	before := c.active("llmlab.service")
	out, err := c.exec("llmlab", "status")
	got := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		got = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("llmlab status %s: %v\n%s", when, err, out)
	}
	if got != code {
		c.t.Fatalf("llmlab status %s: exit %d, want %d\n%s", when, got, code, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			c.t.Fatalf("llmlab status %s says\n%s\nwithout %q", when, out, w)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if after := c.active("llmlab.service"); before != "active" && after == "active" {
		c.t.Fatalf("llmlab status %s started llmlab.service\n%s", when, out)
	}
}

// The daemon's user may start and stop exactly the engine unit; a failing
// engine unit gives 503 with Retry-After and a journal line naming it, and
// a later request succeeds once the unit can start.
func TestPermissionsAndEngineFailure(t *testing.T) {
	c, api := setup(t)
	call := func(verb, unit string) (string, error) {
		return c.exec("runuser", "-u", "llmlab", "--", "busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
			"org.freedesktop.systemd1.Manager", verb, "ss", unit, "replace")
	}
	if out, err := call("StartUnit", "llmlab-vllm.service"); err != nil {
		t.Fatalf("the llmlab user cannot start the engine unit: %v %s", err, out)
	}
	if out, err := call("StopUnit", "llmlab-vllm.service"); err != nil {
		t.Fatalf("the llmlab user cannot stop the engine unit: %v %s", err, out)
	}
	for _, other := range []string{"dbus.service", "systemd-journald.service", "llmlab.service"} {
		if out, err := call("StopUnit", other); err == nil {
			t.Fatalf("the llmlab user stopped %s: %s", other, out)
		}
	}
	c.waitActive("dbus.service", "active", 5*time.Second)

	// Break the engine, then mend it.
	c.write("/etc/systemd/system/llmlab-vllm.service.d/zz-broken.conf", "[Service]\nExecStart=\nExecStart=/bin/false\n")
	c.must("systemctl", "daemon-reload")
	expect503(t, api, "engine unit failing")
	// Structured fields carry the unit and its result; -o verbose shows them.
	journal := c.must("journalctl", "--no-pager", "-o", "verbose", "_COMM=llmlabd")
	if !strings.Contains(journal, "ENGINE_UNIT=llmlab-vllm.service") || !strings.Contains(journal, "RESULT=exit-code") ||
		!strings.Contains(journal, "ENGINE_STATE=failed") {
		all, _ := c.exec("sh", "-c", "journalctl --no-pager -o verbose -n 300 | grep -E 'MESSAGE=|IDENTIFIER|^ *ERR|_COMM' | tail -60")
		t.Fatalf("no journal line names the engine unit:\n%s\nlast entries:\n%s", journal, all)
	}
	c.must("rm", "/etc/systemd/system/llmlab-vllm.service.d/zz-broken.conf")
	c.must("systemctl", "daemon-reload")
	c.must("systemctl", "reset-failed", "llmlab-vllm.service")
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, _, _ := completion(t, api)
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("requests still get %d after the engine unit was mended", code)
		}
		time.Sleep(time.Second)
	}
}

// Cold-start overhead under systemd, over ten cold starts: the request's
// time to answer minus the engine's own start (from the start job's
// creation to its first healthy answer, as llmlabd measured and logged it).
func TestColdStartOverhead(t *testing.T) {
	c, api := setup(t)
	var overheads []time.Duration
	for i := 0; i < 10; i++ {
		c.waitActive("llmlab-vllm.service", "inactive", 30*time.Second)
		before := strings.Count(c.must("journalctl", "--no-pager", "-o", "verbose", "_COMM=llmlabd"), "MESSAGE=engine ready")
		code, took, body := completion(t, api)
		if code != 200 {
			t.Fatalf("cold start %d: %d %s", i, code, body)
		}
		journal := c.must("journalctl", "--no-pager", "-o", "verbose", "_COMM=llmlabd")
		if strings.Count(journal, "MESSAGE=engine ready") != before+1 {
			t.Fatalf("cold start %d: no new 'engine ready' line", i)
		}
		// The last START_TIME field (microseconds) is this start's.
		idx := strings.LastIndex(journal, "START_TIME=")
		us, err := strconv.ParseInt(strings.Fields(journal[idx+len("START_TIME="):])[0], 10, 64)
		if err != nil {
			t.Fatalf("cold start %d: reading START_TIME: %v", i, err)
		}
		overheads = append(overheads, took-time.Duration(us)*time.Microsecond)
	}
	sorted := append([]time.Duration(nil), overheads...)
	for i := range sorted {
		for j := i + 1; j < len(sorted); j++ {
			if sorted[j] < sorted[i] {
				sorted[i], sorted[j] = sorted[j], sorted[i]
			}
		}
	}
	median, p95 := sorted[len(sorted)/2], sorted[len(sorted)-1]
	// A measurement, reported (docs/scale-to-zero.md), not a timed
	// assertion: these machines are shared.
	t.Logf("cold-start overhead beyond the engine's own start, 10 starts under systemd: median %s, p95 %s (all: %v)", median, p95, overheads)
}
