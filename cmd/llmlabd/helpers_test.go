package main_test

// The integration tests' harness: TestMain builds the real llmlabd (and
// llmlab), start runs it as a process in front of a fake engine, and the
// helpers here talk to it from the client's side. The tests using it are
// in the files named for what they check.

import (
	"encoding/json"
	"fmt"
	"github.com/llmlab/llmlab/internal/lockedbuf"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/enginemodel"
)

var binary, toolBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "llmlabd-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "llmlabd")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building llmlabd: %v\n%s", err, out)
		os.Exit(1)
	}
	toolBinary = filepath.Join(dir, "llmlab")
	if out, err := exec.Command("go", "build", "-o", toolBinary, "../llmlab").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building llmlab: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// daemon is a running llmlabd.
type daemon struct {
	cmd     *exec.Cmd
	api     string // base URL
	metrics string
	logs    *lockedbuf.Buffer
	exited  chan error
}

var servingRE = regexp.MustCompile(`msg=serving api=(\S+) .*metrics=(\S+)`)

// writeConfig writes a config file for an engine at engineURL with the
// extra TOML appended (sections may repeat keys only once).
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "llmlab.toml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func baseConfig(engineURL, queue string) string {
	return fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
shutdown_grace = "10s"
[engine]
url = %q
models = ["m"]
[queue]
%s
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, engineURL, queue)
}

// start runs llmlabd (through wrapper, if given) and waits until it serves.
func start(t *testing.T, env []string, wrapper []string, args ...string) *daemon {
	t.Helper()
	argv := append(append([]string{}, wrapper...), binary)
	argv = append(argv, args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	// A child that keeps the output pipe open must not hang the test.
	cmd.WaitDelay = 5 * time.Second
	d := &daemon{cmd: cmd, logs: &lockedbuf.Buffer{}, exited: make(chan error, 1)}
	cmd.Stderr = d.logs
	cmd.Stdout = d.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGKILL)
		<-d.exited
		if t.Failed() {
			t.Logf("llmlabd output:\n%s", d.logs.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := servingRE.FindStringSubmatch(d.logs.String()); m != nil {
			d.api = "http://" + m[1]
			d.metrics = "http://" + m[2]
			return d
		}
		select {
		case err := <-d.exited:
			d.exited <- err
			t.Fatalf("llmlabd exited before serving: %v\n%s", err, d.logs.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("llmlabd did not report serving:\n%s", d.logs.String())
		}
	}
}

func post(t *testing.T, url, body string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, data
}

type queueStatus struct {
	Queued   int `json:"queued"`
	Inflight int `json:"inflight_sequences"`
}

func waitStatus(t *testing.T, d *daemon, cond func(queueStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r, err := http.Get(d.metrics + "/status")
		if err == nil {
			var st struct{ Queue queueStatus }
			json.NewDecoder(r.Body).Decode(&st)
			r.Body.Close()
			if cond(st.Queue) {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("status condition not reached")
}

func waitLog(t *testing.T, d *daemon, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(d.logs.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q:\n%s", s, d.logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// freeAddr is a free address for a child process to listen on, below the
// kernel's ephemeral range: one taken from that range and closed was handed
// again to one of llmlabd's own listeners on port 0 (the agent's) before the
// child bound it, and the engine failed with "address already in use".
func freeAddr(t *testing.T) string {
	t.Helper()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				lo = n
			}
		}
	}
	for range 100 {
		port := 10000 + rand.IntN(max(lo-10000, 1))
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}

// activated is llmlabd behind systemd-socket-activate, which listens first
// and starts llmlabd on the first connection, as systemd does with
// llmlab.socket.
type activated struct {
	addr   string
	cmd    *exec.Cmd
	logs   *lockedbuf.Buffer
	exited chan error
}

func socketActivate(t *testing.T, cfgPath string, env ...string) *activated {
	t.Helper()
	a := &activated{addr: freeAddr(t), logs: &lockedbuf.Buffer{}, exited: make(chan error, 1)}
	args := []string{"-l", a.addr, "--fdname=http"}
	for _, e := range env {
		name, _, _ := strings.Cut(e, "=")
		args = append(args, "-E", name)
	}
	a.cmd = exec.Command("systemd-socket-activate", append(args, binary, "--config", cfgPath)...)
	a.cmd.Env = append(os.Environ(), env...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	a.cmd.WaitDelay = 5 * time.Second
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.exited <- a.cmd.Wait() }()
	t.Cleanup(func() {
		a.cmd.Process.Kill()
		if t.Failed() {
			t.Logf("output:\n%s", a.logs.String())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.logs.String(), "Listening on") {
		if time.Now().After(deadline) {
			t.Fatal("systemd-socket-activate did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return a
}

type limitStatus struct {
	Queue struct {
		Limit int                `json:"inflight_limit"`
		Model enginemodel.Status `json:"engine_model"`
	} `json:"queue"`
}

func readLimit(t *testing.T, d *daemon) limitStatus {
	t.Helper()
	resp, err := http.Get(d.api + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s limitStatus
	json.NewDecoder(resp.Body).Decode(&s)
	return s
}

// fetch returns the body of a GET of url.
func fetch(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
