//go:build systemtest

// Real-systemd tests: they boot a Debian rootfs with systemd-nspawn (as
// root; `make test-system`, part of `make test` when run as root), install
// llmlab's .deb in it with dpkg, and check from outside. They follow
// ../shared/docs/real-systemd.md's safety rules: the container's systemd
// runs in a cgroup subtree of its own, the host's /sys is never bound in,
// only the processes started here are killed, and the host's cgroup mounts
// are checked before and after.
package units

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
	before []string // the files before the package was installed
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

// debs are the packages under test, built once per test run by
// packaging/build-deb.sh: the current commit's, and a later build of it
// (SOURCE_DATE_EPOCH a minute on) for the upgrade.
var debs struct {
	once        sync.Once
	dir         string
	first, next string
	err         error
}

func buildDebs(t *testing.T) (dir, first, next string) {
	t.Helper()
	debs.once.Do(func() {
		debs.dir, debs.err = os.MkdirTemp("", "llmlab-debs")
		if debs.err != nil {
			return
		}
		epoch, err := exec.Command("git", "log", "-1", "--format=%ct").Output()
		if err != nil {
			debs.err = fmt.Errorf("git log: %v", err)
			return
		}
		e, _ := strconv.ParseInt(strings.TrimSpace(string(epoch)), 10, 64)
		build := func(epoch int64) (string, error) {
			cmd := exec.Command("sh", "../packaging/build-deb.sh")
			cmd.Env = append(os.Environ(), "DIST="+debs.dir, fmt.Sprintf("SOURCE_DATE_EPOCH=%d", epoch))
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return "", fmt.Errorf("build-deb.sh: %v\n%s", err, stderr.String())
			}
			return filepath.Base(strings.TrimSpace(string(out))), nil
		}
		if debs.first, debs.err = build(e); debs.err == nil {
			debs.next, debs.err = build(e + 60)
		}
	})
	if debs.err != nil {
		t.Fatal(debs.err)
	}
	return debs.dir, debs.first, debs.next
}

func TestMain(m *testing.M) {
	code := m.Run()
	if debs.dir != "" {
		os.RemoveAll(debs.dir)
	}
	os.Exit(code)
}

// bootWithPackage boots a container with the packages at /mnt/dist and
// installs the current one with dpkg, as an operator would.
func bootWithPackage(t *testing.T) (*container, string, string) {
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
	dist, first, next := buildDebs(t)
	c := boot(t, strings.TrimSpace(string(rootfs)), dist)
	c.before = c.snapshot()
	c.must("dpkg", "-i", "/mnt/dist/"+first)
	return c, first, next
}

// snapshot lists the container's files, but for those that change on
// their own (logs, caches, dpkg's and systemd's own state).
func (c *container) snapshot() []string {
	c.t.Helper()
	out := c.must("sh", "-c", `find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp \
 -o -path /var/log -o -path /var/cache -o -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/systemd -o -path /mnt \) -prune -o -print | sort`)
	return strings.Split(strings.TrimSpace(out), "\n")
}

// useSimulator points the installed package at the simulator (a drop-in
// for the engine unit, the API socket on a free port, short idle
// timeouts) and returns the API's URL.
func useSimulator(c *container, t *testing.T) string {
	t.Helper()
	return useSimulatorWith(c, t, "", "4s")
}

// useSimulatorWith is useSimulator with llmlabd's metrics listener at
// metrics ("": none) and exiting after exitIdle with nothing to do.
func useSimulatorWith(c *container, t *testing.T, metrics, exitIdle string) string {
	t.Helper()
	apiPort, enginePort := freePort(t), freePort(t)
	c.write("/etc/systemd/system/llmlab.socket.d/test.conf", fmt.Sprintf("[Socket]\nListenStream=\nListenStream=127.0.0.1:%d\n", apiPort))
	c.write("/etc/systemd/system/llmlab-vllm.service.d/test.conf", fmt.Sprintf(
		"[Service]\nExecStart=\nExecStart=/usr/bin/llmlab sim --profile instant --startup-delay 2s --port %d\n", enginePort))
	c.write("/etc/llmlab/llmlab.toml", fmt.Sprintf(`[gateway]
exit_idle_timeout = %q
[engine]
url = "http://127.0.0.1:%d"
unit = "llmlab-vllm.service"
idle_timeout = "2s"
expected_start_time = "2s"
[metrics]
listen = %q
`, exitIdle, enginePort, metrics))
	c.must("systemctl", "daemon-reload")
	c.must("systemctl", "restart", "llmlab.socket")
	return fmt.Sprintf("http://127.0.0.1:%d", apiPort)
}

// setup boots a container with the package installed and the simulator
// as its engine.
func setup(t *testing.T) (*container, string) {
	t.Helper()
	c, _, _ := bootWithPackage(t)
	return c, useSimulator(c, t)
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

// expect503 sends a completion and requires 503 with Retry-After, as an
// engine that cannot start gets.
func expect503(t *testing.T, api, when string) {
	t.Helper()
	resp, err := http.Post(api+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%s: %d %s (Retry-After %q), want 503 with Retry-After", when, resp.StatusCode, body, resp.Header.Get("Retry-After"))
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

// The package's life as an operator sees it: dpkg -i on a box without
// vLLM (the socket listens, nothing else runs; a request gets 503 and the
// engine unit's journal says how to install vLLM), then with an engine,
// answers, journald fields, /metrics and node_exporter's textfile; an
// upgrade that keeps an edited conffile and never stops the socket
// listening; apt-get remove, then purge, which leaves no file behind.
func TestPackageLifecycle(t *testing.T) {
	c, first, next := bootWithPackage(t)

	// Installed: the socket enabled and listening; no daemon, no engine.
	if out := strings.TrimSpace(c.must("systemctl", "is-enabled", "llmlab.socket")); out != "enabled" {
		t.Fatalf("llmlab.socket is %q after installation, want enabled", out)
	}
	c.waitActive("llmlab.socket", "active", 5*time.Second)
	for _, u := range []string{"llmlab.service", "llmlab-vllm.service"} {
		if s := c.active(u); s == "active" {
			t.Fatalf("%s runs right after installation", u)
		}
	}
	c.must("id", "llmlab")
	c.must("test", "-f", "/usr/share/man/man8/llmlabd.8.gz", "-a", "-f", "/usr/share/man/man1/llmlab.1.gz",
		"-a", "-f", "/usr/share/bash-completion/completions/llmlab", "-a", "-f", "/usr/share/doc/llmlab/copyright")

	// The operator edits the conffile (the metrics port; the engine's URL)
	// and moves the API socket to a free port.
	apiPort, enginePort, metricsPort := freePort(t), freePort(t), freePort(t)
	c.must("sed", "-i", "-e", fmt.Sprintf(`s|^listen = "127.0.0.1:9180"|listen = "127.0.0.1:%d"|`, metricsPort),
		"-e", fmt.Sprintf(`s|^url = "http://127.0.0.1:8000"|url = "http://127.0.0.1:%d"|`, enginePort),
		"-e", `s|^max_num_seqs = 0|max_num_seqs = 16|`, "/etc/llmlab/llmlab.toml")
	edited := c.must("cat", "/etc/llmlab/llmlab.toml")
	if !strings.Contains(edited, fmt.Sprint(metricsPort)) || !strings.Contains(edited, fmt.Sprint(enginePort)) || !strings.Contains(edited, "max_num_seqs = 16\n") {
		t.Fatalf("the shipped llmlab.toml no longer has the lines this test edits:\n%s", edited)
	}
	c.write("/etc/systemd/system/llmlab.socket.d/test.conf", fmt.Sprintf("[Socket]\nListenStream=\nListenStream=127.0.0.1:%d\n", apiPort))
	c.must("systemctl", "daemon-reload")
	c.must("systemctl", "restart", "llmlab.socket")
	api := fmt.Sprintf("http://127.0.0.1:%d", apiPort)

	// No vLLM on this box: 503 with Retry-After, and the engine unit's
	// journal says how to install it.
	expect503(t, api, "without vLLM")
	if j := c.must("journalctl", "--no-pager", "-u", "llmlab-vllm.service"); !strings.Contains(j, "vLLM is not installed") || !strings.Contains(j, "LLMLAB_VLLM=") {
		t.Fatalf("the engine unit's journal does not say how to install vLLM:\n%s", j)
	}

	// With an engine, requests are answered. The engine is a stand-in for
	// vLLM run by the package's own ExecStart (llmlab-engine) under the
	// unit's hardening: it writes where vLLM and its kernels write at start
	// (Triton, FlashInfer, CUDA's JIT, vLLM's config and cache), each
	// fatal when not writable, refuses to run with usage stats on, notes
	// its arguments, and then runs the simulator.
	c.write("/usr/local/bin/vllm-standin", standinVLLM)
	c.must("chmod", "755", "/usr/local/bin/vllm-standin")
	c.write("/etc/systemd/system/llmlab-vllm.service.d/test.conf", fmt.Sprintf(
		"[Service]\nEnvironment=LLMLAB_VLLM=/usr/local/bin/vllm-standin LLMLAB_PORT=%d\n", enginePort))
	c.must("systemctl", "daemon-reload")
	c.must("systemctl", "reset-failed", "llmlab-vllm.service")
	deadline := time.Now().Add(60 * time.Second)
	for {
		req, _ := http.NewRequest("POST", api+"/v1/completions", strings.NewReader(`{"prompt":"x","max_tokens":2}`))
		req.Header.Set("X-Request-Id", "pkgtest-1")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer once the engine can start: %v %v", resp, err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// The stand-in found every cache writable (it would have failed
	// otherwise) in the state directory, and was given llmlabd's output cap.
	for _, f := range []string{"cache/triton/standin", ".triton/dump/standin", ".cache/flashinfer/standin", "cache/flashinfer/standin",
		"cache/nv/standin", "config/vllm/standin", "vllm/standin"} {
		c.must("test", "-f", "/var/lib/llmlab-vllm/"+f)
	}
	if args := c.must("cat", "/var/lib/llmlab-vllm/args"); !strings.Contains(args, `--override-generation-config {"max_new_tokens": 1024}`) ||
		!strings.Contains(args, "serve Qwen/Qwen2.5-0.5B-Instruct") || !strings.Contains(args, "--max-num-seqs 16") || strings.Contains(args, "--max-model-len") {
		t.Fatalf("llmlab-engine ran vLLM with %q, want serve MODEL, the max_new_tokens cap from limits.max_tokens and engine.max_num_seqs (and no --max-model-len: engine.max_model_len is 0)", args)
	}

	// journald: the access line carries the request id as a field.
	j := c.must("journalctl", "--no-pager", "-u", "llmlab.service", "-o", "json", "REQUEST_ID=pkgtest-1")
	var found bool
	for _, line := range strings.Split(strings.TrimSpace(j), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && e["REQUEST_ID"] == "pkgtest-1" && e["_COMM"] == "llmlabd" {
			if status, _ := e["STATUS"].(string); status == "200" {
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("no journal entry of llmlab.service with REQUEST_ID=pkgtest-1 and STATUS=200:\n%s", j)
	}

	// Prometheus's scrape, and node_exporter's textfile.
	mresp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(metrics), `llmlab_requests_total{code="200"`) {
		t.Fatalf("/metrics lacks the answered request:\n%s", metrics)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		out, _ := c.exec("cat", "/var/lib/prometheus/node-exporter/llmlab.prom")
		if strings.Contains(out, "llmlab_up 1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node_exporter's textfile is not written:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// Upgrade under load: the socket never stops listening, the edited
	// conffile stays, the daemon is restarted.
	listening := func() string {
		return strings.TrimSpace(c.must("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value", "llmlab.socket"))
	}
	socketSince := listening()
	oldPID := strings.TrimSpace(c.must("systemctl", "show", "-p", "MainPID", "--value", "llmlab.service"))
	if oldPID == "0" {
		t.Fatal("llmlabd is not running before the upgrade")
	}
	stop := make(chan struct{})
	results := make(chan []string)
	go func() {
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
		var bad []string
		n := 0
		for {
			select {
			case <-stop:
				results <- append(bad, fmt.Sprintf("%d requests", n))
				return
			default:
			}
			resp, err := client.Post(api+"/v1/completions", "application/json", strings.NewReader(`{"prompt":"x","max_tokens":2}`))
			n++
			if err != nil {
				bad = append(bad, err.Error())
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				bad = append(bad, resp.Status)
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	c.must("dpkg", "-i", "/mnt/dist/"+next)
	time.Sleep(2 * time.Second)
	close(stop)
	during := <-results
	if len(during) > 1 {
		t.Errorf("requests during the upgrade failed: %v", during)
	}
	t.Logf("during the upgrade: %v", during)
	if got := listening(); got != socketSince {
		t.Errorf("llmlab.socket was restarted by the upgrade (active since %s, then %s)", socketSince, got)
	}
	if got := c.must("cat", "/etc/llmlab/llmlab.toml"); got != edited {
		t.Errorf("the upgrade changed the edited /etc/llmlab/llmlab.toml")
	}
	version := strings.TrimSpace(c.must("dpkg-query", "-W", "-f=${Version}", "llmlab"))
	if !strings.Contains(next, "_"+version+"_") || first == next {
		t.Errorf("installed version %s after upgrading from %s to %s", version, first, next)
	}
	if newPID := strings.TrimSpace(c.must("systemctl", "show", "-p", "MainPID", "--value", "llmlab.service")); newPID == oldPID || newPID == "0" {
		// With requests arriving, the socket starts the new daemon at once.
		t.Errorf("llmlabd's PID %s -> %s: not restarted by the upgrade", oldPID, newPID)
	}
	code, _, _ := completion(t, api)
	if code != 200 {
		t.Fatalf("after the upgrade: %d", code)
	}

	// Remove: everything stopped, the conffile kept.
	c.must("apt-get", "remove", "-y", "llmlab")
	for _, u := range []string{"llmlab.socket", "llmlab.service", "llmlab-vllm.service"} {
		if s := c.active(u); s == "active" || s == "activating" {
			t.Errorf("%s is %s after apt-get remove", u, s)
		}
	}
	if _, err := http.Get(api + "/healthz"); err == nil {
		t.Error("the API port still answers after apt-get remove")
	}
	if got, _ := c.exec("cat", "/etc/llmlab/llmlab.toml"); got != edited {
		t.Error("apt-get remove did not keep the edited conffile")
	}
	if _, err := c.exec("test", "-e", "/usr/bin/llmlabd"); err == nil {
		t.Error("/usr/bin/llmlabd is still there after apt-get remove")
	}

	// Purge, once the operator's own drop-ins and the stand-in for vLLM
	// are gone: nothing is left but the llmlab system user (in /etc/passwd
	// and friends).
	c.must("rm", "-r", "/etc/systemd/system/llmlab.socket.d", "/etc/systemd/system/llmlab-vllm.service.d", "/usr/local/bin/vllm-standin")
	c.must("apt-get", "purge", "-y", "llmlab")
	if st, _ := c.exec("dpkg-query", "-W", "-f=${db:Status-Status}", "llmlab"); strings.TrimSpace(st) == "config-files" {
		t.Error("dpkg still lists llmlab's config files after purge")
	}
	after := c.snapshot()
	var added, removed []string
	inBefore := map[string]bool{}
	for _, f := range c.before {
		inBefore[f] = true
	}
	inAfter := map[string]bool{}
	for _, f := range after {
		inAfter[f] = true
		if !inBefore[f] {
			added = append(added, f)
		}
	}
	for _, f := range c.before {
		if !inAfter[f] {
			removed = append(removed, f)
		}
	}
	if len(added) > 0 || len(removed) > 0 {
		t.Errorf("purge left the system changed:\nadded: %v\nremoved: %v", added, removed)
	}
	c.must("id", "llmlab") // stays, as Debian does with system users
}

// checkHardening looks at the running llmlabd from the inside: the
// sandbox that llmlab.service asks for is the one it runs in.
// standinVLLM stands in for vLLM's CLI under llmlab-vllm.service: it
// writes each place vLLM and its kernels write at start (docs/engine-contract.md,
// "Caches"), failing as Triton does when one is not writable, refuses to
// start with usage reporting on, and then serves the simulator.
const standinVLLM = `#!/bin/sh
set -eu
echo "$*" > "$HOME/args"
[ "${VLLM_NO_USAGE_STATS:-0}" = 1 ] || { echo "usage stats are on" >&2; exit 1; }
for d in "${TRITON_CACHE_DIR:-$HOME/.triton/cache}" "${TRITON_HOME:-$HOME}/.triton/dump" \
	"$HOME/.cache/flashinfer" "${XDG_CACHE_HOME:-$HOME/.cache}/flashinfer" \
	"${CUDA_CACHE_PATH:-$HOME/.nv/ComputeCache}" "${VLLM_CONFIG_ROOT:-${XDG_CONFIG_HOME:-$HOME/.config}/vllm}" \
	"${VLLM_CACHE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/vllm}"; do
	mkdir -p "$d"
	touch "$d/standin"
done
shift 2 # serve MODEL
exec /usr/bin/llmlab sim --profile instant --startup-delay 1s "$@"
`

func (c *container) checkHardening() {
	c.t.Helper()
	pid := strings.TrimSpace(c.must("systemctl", "show", "-p", "MainPID", "--value", "llmlab.service"))
	status := c.must("cat", "/proc/"+pid+"/status")
	for _, want := range []string{
		"NoNewPrivs:\t1",            // NoNewPrivileges=yes
		"Seccomp:\t2",               // SystemCallFilter, RestrictAddressFamilies
		"CapEff:\t0000000000000000", // no capabilities
		"CapBnd:\t0000000000000000", // CapabilityBoundingSet=
		"CapAmb:\t0000000000000000", // AmbientCapabilities=
	} {
		if !strings.Contains(status, want+"\n") {
			c.t.Errorf("llmlabd's /proc/%s/status lacks %q:\n%s", pid, want, status)
		}
	}
	c.must("sh", "-c", "echo marker > /tmp/llmlab-host-marker")
	inside := func(script string) (string, error) {
		return c.exec("nsenter", "-t", pid, "-m", "--", "sh", "-c", script)
	}
	for _, ro := range []string{"/usr", "/etc", "/var/lib"} { // ProtectSystem=strict
		if out, err := inside("touch " + ro + "/llmlab-probe"); err == nil || !strings.Contains(out, "Read-only file system") {
			c.t.Errorf("%s is writable in llmlabd's namespace (%v %s)", ro, err, out)
		}
	}
	for _, rw := range []string{"/var/lib/llmlab", "/var/lib/prometheus/node-exporter"} { // StateDirectory, ReadWritePaths
		if out, err := inside("touch " + rw + "/llmlab-probe && rm " + rw + "/llmlab-probe"); err != nil {
			c.t.Errorf("%s is not writable in llmlabd's namespace: %v %s", rw, err, out)
		}
	}
	if out, _ := inside("test -e /tmp/llmlab-host-marker && echo shared"); strings.Contains(out, "shared") { // PrivateTmp
		c.t.Error("llmlabd sees the host's /tmp")
	}
	if out, _ := inside("ls -A /root"); strings.TrimSpace(out) != "" { // ProtectHome
		c.t.Errorf("llmlabd sees /root: %s", out)
	}
	// PrivateDevices: a /dev of its own, not the machine's.
	outer := strings.TrimSpace(c.must("stat", "-c", "%d", "/dev"))
	if own, _ := inside("stat -c %d /dev"); strings.TrimSpace(own) == outer {
		c.t.Errorf("llmlabd's /dev is the machine's (device %s)", outer)
	}
	if out, _ := inside("ls /dev"); !strings.Contains(out, "null") {
		c.t.Errorf("llmlabd's /dev lacks null: %s", out)
	}
}

// llmlab smoke right after install, through the socket: it waits through
// the cold start and times it; with the engine unit failing on a model
// missing from the cache it says so, with the unit's journal; with the
// socket stopped it says that.
func TestSmoke(t *testing.T) {
	c, _, _ := bootWithPackage(t)
	useSimulatorWith(c, t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), "4s")
	out, err := c.exec("llmlab", "smoke", "--timeout", "60s")
	if err != nil || !strings.Contains(out, "engine ready") || !strings.Contains(out, "ok: ") {
		journal, _ := c.exec("journalctl", "--no-pager", "-n", "60")
		t.Fatalf("llmlab smoke after install: %v\n%s\n%s", err, out, journal)
	}
	t.Logf("llmlab smoke:\n%s", out)

	// An engine whose model is not in the cache, as vLLM fails offline.
	c.write("/usr/local/bin/vllm-offline", "#!/bin/sh\necho 'huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for the specified revision on the local disk' >&2\nexit 1\n")
	c.must("chmod", "755", "/usr/local/bin/vllm-offline")
	c.write("/etc/systemd/system/llmlab-vllm.service.d/zz-offline.conf", "[Service]\nExecStart=\nExecStart=/usr/local/bin/vllm-offline\n")
	c.must("systemctl", "daemon-reload")
	c.must("systemctl", "stop", "llmlab-vllm.service")
	out, err = c.exec("llmlab", "smoke", "--timeout", "60s")
	if err == nil || !strings.Contains(out, "FAIL: the model is not in the local cache") || !strings.Contains(out, "LocalEntryNotFoundError") {
		t.Fatalf("llmlab smoke with the model missing: %v\n%s", err, out)
	}
	c.must("systemctl", "stop", "llmlab.socket", "llmlab.service")
	out, err = c.exec("llmlab", "smoke", "--timeout", "10s")
	if err == nil || !strings.Contains(out, "llmlab.socket is inactive (dead): the socket is not listening") {
		t.Fatalf("llmlab smoke with nothing listening: %v\n%s", err, out)
	}
}

// Every command on a "$ " line of docs/operations.md works as written on
// the installed package, after one request: it succeeds and prints
// something (systemctl reload says nothing on success).
func TestOperationsCommands(t *testing.T) {
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	for _, line := range strings.Split(string(doc), "\n") {
		if cmd, ok := strings.CutPrefix(line, "$ "); ok {
			cmds = append(cmds, cmd)
		}
	}
	if len(cmds) < 10 {
		t.Fatalf("docs/operations.md lists %d commands", len(cmds))
	}
	c, _, _ := bootWithPackage(t)
	// The documented metrics address, 127.0.0.1:9180, as shipped.
	api := useSimulatorWith(c, t, "127.0.0.1:9180", "5m")
	if code, _, body := completion(t, api); code != 200 {
		t.Fatalf("first request: %d %s", code, body)
	}
	for _, cmd := range cmds {
		out, err := c.exec("sh", "-c", cmd)
		silent := strings.HasPrefix(cmd, "systemctl reload") // says nothing on success
		if err != nil || (!silent && strings.TrimSpace(out) == "") || strings.Contains(out, "-- No entries --") {
			journal, _ := c.exec("journalctl", "--no-pager", "-n", "40")
			t.Fatalf("docs/operations.md: %q: %v\n%s\njournal:\n%s", cmd, err, out, journal)
		}
	}
}
