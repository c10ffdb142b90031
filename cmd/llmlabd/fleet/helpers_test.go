//go:build fleettest

package fleet

// The fleet the test builds: network namespaces with a bridge, an llmlabd
// per host with its simulated engine, HAProxy in front, and readers of
// the hosts' metrics and HAProxy's server stats.

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The fleet lives on 10.199.0.0/24 inside namespaces the test creates:
// the balancer's (with the bridge) and one per host. Nothing is added to
// the namespace the test runs in.
const (
	subnet   = "10.199.0"
	lbAddr   = subnet + ".1"
	slo      = 5 * time.Second
	hostPort = "8080"
)

type fleet struct {
	t       *testing.T
	dir     string
	llmlabd string
	llmlab  string
	lbNS    string
	hosts   []*host
	haproxy *exec.Cmd
	hlog    *lockedWriter
}

type host struct {
	ns   string
	addr string
	cmd  *exec.Cmd
}

func (h *host) api() string     { return "http://" + h.addr + ":" + hostPort }
func (h *host) metrics() string { return "http://" + h.addr + ":9180/metrics" }

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newFleet builds the binaries, creates the namespaces and the bridge,
// starts n llmlabd hosts (each with a simulated engine it starts on
// demand) and HAProxy with the shipped configuration. Everything is torn
// down when the test ends.
func newFleet(t *testing.T, n int) *fleet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the fleet test creates network namespaces: run it as root (make test-fleet)")
	}
	haproxy := lookPath(t, "haproxy", "haproxy")
	f := &fleet{t: t, dir: t.TempDir()}
	f.llmlabd, f.llmlab = filepath.Join(f.dir, "llmlabd"), filepath.Join(f.dir, "llmlab")
	run(t, "go", "build", "-o", f.llmlabd, "..")
	run(t, "go", "build", "-o", f.llmlab, "../../llmlab")

	tag := fmt.Sprintf("llf%d", os.Getpid()%100000)
	f.lbNS = tag + "lb"
	var made []string
	t.Cleanup(func() {
		for _, ns := range made {
			// Whatever still runs in a namespace (an orphaned engine of a
			// killed host) goes with it.
			if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
				for _, p := range strings.Fields(string(out)) {
					if pid, err := strconv.Atoi(p); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	addNS := func(ns string) {
		run(t, "ip", "netns", "add", ns)
		made = append(made, ns)
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	addNS(f.lbNS)
	run(t, "ip", "-n", f.lbNS, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", f.lbNS, "addr", "add", lbAddr+"/24", "dev", "br0")
	run(t, "ip", "-n", f.lbNS, "link", "set", "br0", "up")
	for i := 1; i <= n; i++ {
		h := &host{ns: fmt.Sprintf("%sh%d", tag, i), addr: fmt.Sprintf("%s.%d", subnet, 10+i)}
		addNS(h.ns)
		veth := fmt.Sprintf("v%d", i)
		run(t, "ip", "-n", f.lbNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
		run(t, "ip", "-n", f.lbNS, "link", "set", veth, "master", "br0", "up")
		run(t, "ip", "-n", h.ns, "addr", "add", h.addr+"/24", "dev", "eth0")
		run(t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
		f.hosts = append(f.hosts, h)
		f.startHost(h)
	}

	// The shipped haproxy.cfg, with this fleet's addresses; a second
	// frontend beside it does plain round-robin over the same hosts (no
	// agent, no retry of refusals), for the side-by-side measurement.
	servers := ""
	for i, h := range f.hosts {
		servers += fmt.Sprintf("    server box%d %s:%s\n", i+1, h.addr, hostPort)
	}
	cfg := haproxyConfig(t, f.dir,
		"bind :8080", "bind "+lbAddr+":8080",
		"    server box1 192.0.2.11:8080\n    server box2 192.0.2.12:8080\n    server box3 192.0.2.13:8080\n", servers,
	)
	cfg += "\nfrontend roundrobin\n    bind " + lbAddr + ":8081\n    default_backend roundrobin\n\nbackend roundrobin\n    balance roundrobin\n    retry-on conn-failure\n" + servers
	path := filepath.Join(f.dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	f.haproxy = exec.Command("ip", "netns", "exec", f.lbNS, haproxy, "-db", "-f", path)
	f.hlog = startLogged(t, "haproxy", f.haproxy)
	hlog := f.hlog
	// HAProxy has asked every agent once it reports their maxconn.
	deadline := time.Now().Add(20 * time.Second)
	for {
		if st := f.serverStats(); len(st) == n && allAsked(st) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("HAProxy's servers never took their agents' maxconn: %v\n%s", f.serverStats(), hlog.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return f
}

func allAsked(st map[string]serverStat) bool {
	for _, s := range st {
		if !s.agentSeen {
			return false
		}
	}
	return true
}

func (f *fleet) startHost(h *host) {
	t := f.t
	cfg := fmt.Sprintf(`[gateway]
listen = "%[1]s:%[2]s"
allow_public_without_keys = true
shutdown_grace = "5s"
[engine]
url = "http://127.0.0.1:8000"
command = [%[3]q, "sim", "--profile", "gtx1650", "--max-num-seqs", "16", "--startup-delay", "2s", "--port", "8000"]
idle_timeout = "10s"
expected_start_time = "2s"
[queue]
# The fleet's figures (docs/scaling.md) were measured with this fixed
# limit; the engine model's limit starts at min_inflight on a fresh host.
concurrency = "fixed"
max_inflight = 16
[metrics]
listen = "%[1]s:9180"
textfile = ""
[balancer]
agent_listen = "%[1]s:9182"
[gpu]
enabled = false
[log]
format = "text"
access_log = false
`, h.addr, hostPort, f.llmlab)
	path := filepath.Join(f.dir, h.ns+".toml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	h.cmd = exec.Command("ip", "netns", "exec", h.ns, f.llmlabd, "--config", path)
	startLogged(t, "llmlabd "+h.addr, h.cmd)
	deadline := time.Now().Add(20 * time.Second)
	for f.inNS(h.ns, "curl", "-sf", "-o", "/dev/null", h.api()+"/healthz") != nil {
		if time.Now().After(deadline) {
			t.Fatalf("llmlabd on %s never served", h.addr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startLogged starts cmd with its output kept, and kills it when the test
// ends, showing the output if the test failed.
func startLogged(t *testing.T, name string, cmd *exec.Cmd) *lockedWriter {
	t.Helper()
	w := &lockedWriter{mu: &sync.Mutex{}, b: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s:\n%s", name, w.String())
		}
	})
	return w
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// take returns what was written since the last take.
func (w *lockedWriter) take() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.b.String()
	w.b.Reset()
	return s
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (f *fleet) inNS(ns string, name string, args ...string) error {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).Run()
}

// get fetches url from inside the balancer's namespace.
func (f *fleet) get(url string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", f.lbNS, "curl", "-sf", "--max-time", "5", url).Output()
	return string(out), err
}

// metric sums the samples of name (whose labels contain match) in text.
func metric(text, name string, match ...string) float64 {
	sum := 0.0
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// engineStarts is how often h's engine became ready.
func (f *fleet) engineStarts(h *host) float64 {
	return metricOf(f, h, "llmlab_engine_starts_total", `result="ready"`)
}

type serverStat struct {
	maxconn   int
	agentSeen bool
}

// serverStats reads HAProxy's "show stat" for the llmlab backend's servers
// from its admin socket: their maxconn (slim) and whether an agent check
// has run (agent_status).
func (f *fleet) serverStats() map[string]serverStat {
	c, err := net.Dial("unix", filepath.Join(f.dir, "admin.sock"))
	if err != nil {
		return nil
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("show stat\n")); err != nil {
		return nil
	}
	out, err := io.ReadAll(c)
	if err != nil {
		return nil
	}
	lines := strings.Split(string(out), "\n")
	if len(lines) == 0 {
		return nil
	}
	head := strings.Split(strings.TrimPrefix(lines[0], "# "), ",")
	col := map[string]int{}
	for i, h := range head {
		col[h] = i
	}
	st := map[string]serverStat{}
	for _, l := range lines[1:] {
		c := strings.Split(l, ",")
		if len(c) < len(head) || c[0] != "llmlab" || !strings.HasPrefix(c[1], "box") {
			continue
		}
		n, _ := strconv.Atoi(c[col["slim"]])
		st[c[1]] = serverStat{maxconn: n, agentSeen: c[col["agent_status"]] != "" && c[col["agent_status"]] != "INI"}
	}
	return st
}

func metricOf(f *fleet, h *host, name string, match ...string) float64 {
	m, err := f.get(h.metrics())
	if err != nil {
		f.t.Errorf("metrics of %s: %v", h.addr, err)
		return 0
	}
	return metric(m, name, match...)
}
