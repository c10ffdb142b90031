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

// boot starts the container with dist bound read-only at /mnt/dist;
// extra are more systemd-nspawn options (--private-network).
func boot(t *testing.T, rootfs, dist string, extra ...string) *container {
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
exec systemd-nspawn -D "$ROOT" --boot --register=no --keep-unit --console=passive --volatile=overlay --machine=llmlabtest --bind-ro="$DIST:/mnt/dist" $EXTRA`
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = append(os.Environ(), "CG="+c.cgname, "ROOT="+rootfs, "DIST="+dist, "EXTRA="+strings.Join(extra, " "))
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
	c, first, next := bootFresh(t)
	c.must("dpkg", "-i", "/mnt/dist/"+first)
	return c, first, next
}

// bootFresh boots a fresh container with the packages at /mnt/dist, not
// installed; extra are more systemd-nspawn options.
func bootFresh(t *testing.T, extra ...string) (*container, string, string) {
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
	c := boot(t, strings.TrimSpace(string(rootfs)), dist, extra...)
	c.before = c.snapshot()
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

// checkHardening looks at the running llmlabd from the inside: the
// sandbox that llmlab.service asks for is the one it runs in.
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
