//go:build systemtest

// Real-systemd tests: they boot a Debian rootfs with systemd-nspawn (as
// root; `make test-system`, part of `make test` when run as root), install
// llmlab's units and binaries in it, and check from outside. They follow
// ../shared/docs/real-systemd.md's safety rules: the container's systemd
// runs in a cgroup subtree of its own, the host's /sys is never bound in,
// only the processes started here are killed, and the host's cgroup mounts
// are checked before and after.
package units

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// container is a booted systemd-nspawn machine.
type container struct {
	t      *testing.T
	nspawn *exec.Cmd
	pid1   int
	log    *bytes.Buffer
	cgname string
}

func cgroupMounts(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "/sys/fs/cgroup") {
			f := strings.Fields(l)
			if len(f) > 5 {
				out = append(out, f[4]+" "+f[5])
			}
		}
	}
	return strings.Join(out, "\n")
}

// boot starts the container with dist bound read-only at /mnt/dist.
func boot(t *testing.T, rootfs, dist string) *container {
	t.Helper()
	before := cgroupMounts(t)
	c := &container{t: t, log: &bytes.Buffer{}, cgname: fmt.Sprintf("llmlab-test-%d", os.Getpid())}
	// The launcher moves itself into a cgroup subtree of its own in every
	// hierarchy, then execs nspawn, so the container's systemd never sees
	// the host's root cgroup.
	script := `set -e
for h in /sys/fs/cgroup/*/; do
  [ -e "$h/cgroup.procs" ] || continue
  mkdir -p "$h$CG"
  # cpuset takes tasks only once the group has CPUs and memory nodes.
  if [ -e "$h$CG/cpuset.cpus" ]; then
    cat "$h/cpuset.cpus" > "$h$CG/cpuset.cpus"
    cat "$h/cpuset.mems" > "$h$CG/cpuset.mems"
  fi
  echo $$ > "$h$CG/cgroup.procs"
done
[ -e /sys/fs/cgroup/cgroup.procs ] && { mkdir -p /sys/fs/cgroup/$CG && echo $$ > /sys/fs/cgroup/$CG/cgroup.procs; }
exec systemd-nspawn -D "$ROOT" --boot --register=no --keep-unit --console=passive --volatile=overlay --machine=llmlabtest --bind-ro="$DIST:/mnt/dist"`
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = append(os.Environ(), "CG="+c.cgname, "ROOT="+rootfs, "DIST="+dist)
	cmd.Stdout, cmd.Stderr = c.log, c.log
	cmd.Stdin = nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.nspawn = cmd
	done := make(chan struct{})
	go func() { c.nspawn.Wait(); close(done) }()
	t.Cleanup(func() {
		c.nspawn.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			c.nspawn.Process.Kill()
			<-done
		}
		c.removeCgroups()
		if after := cgroupMounts(t); after != before {
			t.Errorf("the host's cgroup mounts changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if t.Failed() {
			t.Logf("nspawn output:\n%s", c.log.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for c.pid1 == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no systemd in the container:\n%s", c.log.String())
		}
		select {
		case <-done:
			t.Fatalf("systemd-nspawn exited:\n%s", c.log.String())
		default:
		}
		out, _ := exec.Command("pgrep", "-P", strconv.Itoa(cmd.Process.Pid), "-x", "systemd").Output()
		if p, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil {
			c.pid1 = p
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		out, _ := c.exec("systemctl", "is-system-running")
		s := strings.TrimSpace(out)
		if s == "running" || s == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's systemd is %q, not running", s)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return c
}

func (c *container) removeCgroups() {
	// Deepest first: systemd inside may have made subtrees.
	var dirs []string
	filepath.Walk("/sys/fs/cgroup", func(p string, info os.FileInfo, err error) error {
		if err == nil && info.IsDir() && strings.Contains(p, c.cgname) {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
}

// exec runs a command inside the container.
func (c *container) exec(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(c.pid1), "-a"}, args...)...).CombinedOutput()
	return string(out), err
}

func (c *container) must(args ...string) string {
	c.t.Helper()
	out, err := c.exec(args...)
	if err != nil {
		c.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *container) write(path, content string) {
	c.t.Helper()
	c.must("sh", "-c", fmt.Sprintf("mkdir -p %s && cat > %s <<'LLMLAB_EOF'\n%sLLMLAB_EOF", filepath.Dir(path), path, content))
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// install builds the binaries and the units into dist, boots a container
// and installs llmlab in it, with the simulator as the engine.
func setup(t *testing.T) (*container, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the real-systemd tests need root (make test-system)")
	}
	var stderr bytes.Buffer
	build := exec.Command("sh", "testdata/build-rootfs.sh")
	build.Stderr = &stderr
	rootfs, err := build.Output()
	if err != nil {
		t.Fatalf("building the rootfs (needs debootstrap and the Debian mirror): %v\n%s", err, stderr.String())
	}
	dist := t.TempDir()
	for _, b := range []string{"llmlabd", "llmlab"} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dist, b), "../cmd/"+b).CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", b, err, out)
		}
	}
	for _, f := range []string{"llmlab.socket", "llmlab.service", "llmlab-vllm.service", "50-llmlab.rules"} {
		data, _ := os.ReadFile(f)
		os.WriteFile(filepath.Join(dist, f), data, 0o644)
	}
	c := boot(t, strings.TrimSpace(string(rootfs)), dist)
	apiPort, enginePort := freePort(t), freePort(t)
	c.must("sh", "-c", `install -m755 /mnt/dist/llmlabd /mnt/dist/llmlab /usr/bin/ &&
cp /mnt/dist/*.service /mnt/dist/*.socket /etc/systemd/system/ &&
mkdir -p /etc/polkit-1/rules.d && cp /mnt/dist/50-llmlab.rules /etc/polkit-1/rules.d/ &&
useradd --system --no-create-home --shell /usr/sbin/nologin llmlab`)
	c.write("/etc/systemd/system/llmlab.socket.d/test.conf", fmt.Sprintf("[Socket]\nListenStream=\nListenStream=127.0.0.1:%d\n", apiPort))
	c.write("/etc/systemd/system/llmlab-vllm.service.d/test.conf", fmt.Sprintf(
		"[Service]\nExecStart=\nExecStart=/usr/bin/llmlab sim --profile instant --startup-delay 2s --port %d\n", enginePort))
	c.write("/etc/llmlab/llmlab.toml", fmt.Sprintf(`[gateway]
exit_idle_timeout = "4s"
[engine]
url = "http://127.0.0.1:%d"
unit = "llmlab-vllm.service"
idle_timeout = "2s"
expected_start_time = "2s"
[metrics]
listen = ""
`, enginePort))
	c.must("systemctl", "daemon-reload")
	c.must("systemctl", "start", "llmlab.socket")
	return c, fmt.Sprintf("http://127.0.0.1:%d", apiPort)
}

func (c *container) active(unit string) string {
	out, _ := c.exec("systemctl", "is-active", unit)
	return strings.TrimSpace(out)
}

func (c *container) waitActive(unit, want string, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for c.active(unit) != want {
		if time.Now().After(deadline) {
			journal, _ := c.exec("journalctl", "--no-pager", "-n", "60")
			c.t.Fatalf("%s is %q, want %q\n%s", unit, c.active(unit), want, journal)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func completion(t *testing.T, api string) (int, time.Duration, string) {
	t.Helper()
	start := time.Now()
	resp, err := http.Post(api+"/v1/completions", "application/json",
		strings.NewReader(`{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, time.Since(start), string(b)
}

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
	c.waitActive("llmlab-vllm.service", "inactive", 20*time.Second)
	c.waitActive("llmlab.service", "inactive", 20*time.Second)
	if s := c.active("llmlab.socket"); s != "active" {
		t.Fatalf("llmlab.socket is %s after the daemon exited on idle", s)
	}
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
	resp, err := http.Post(api+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("engine unit failing: %d %s (Retry-After %q), want 503 with Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	// Structured fields carry the unit and its result; -o verbose shows them.
	journal := c.must("journalctl", "--no-pager", "-o", "verbose", "_COMM=llmlabd")
	if !strings.Contains(journal, "UNIT=llmlab-vllm.service") || !strings.Contains(journal, "RESULT=exit-code") {
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
