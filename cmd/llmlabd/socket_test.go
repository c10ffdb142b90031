package main_test

// Integration: socket activation, and exiting once idle.

import (
	"bufio"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

// Socket activation: systemd-socket-activate passes the listener as fd 3
// named "http"; llmlabd serves on it.
func TestSocketActivation(t *testing.T) {
	if _, err := exec.LookPath("systemd-socket-activate"); err != nil {
		t.Fatal("systemd-socket-activate is required (apt-get install systemd)")
	}
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	// With a notify socket, READY=1 and STATUS= arrive there.
	sock := filepath.Join(t.TempDir(), "notify")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	msgs := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, _, err := nl.ReadFromUnix(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	cfg := strings.Replace(baseConfig(es.URL, ""), `listen = "127.0.0.1:0"`, `listen = "127.0.0.1:1"`, 1)
	a := socketActivate(t, writeConfig(t, cfg), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=200000")
	cmd, addr, logs := a.cmd, a.addr, a.logs
	if resp, body := post(t, "http://"+addr+"/v1/completions", `{"model":"m","prompt":"x"}`); resp.StatusCode != 200 {
		t.Fatalf("through the activated socket: %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(logs.String(), "socket_activated=true") {
		t.Fatalf("llmlabd did not serve the activated socket:\n%s", logs.String())
	}
	want := map[string]bool{"READY=1": false, "STATUS=engine external": false, "WATCHDOG=1": false, "RELOADING=1": false, "STOPPING=1": false}
	all := func() bool {
		for _, ok := range want {
			if !ok {
				return false
			}
		}
		return true
	}
	cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.After(10 * time.Second)
	sentTerm := false
	for !all() {
		if !sentTerm && want["RELOADING=1"] && want["WATCHDOG=1"] {
			cmd.Process.Signal(syscall.SIGTERM)
			sentTerm = true
		}
		select {
		case m := <-msgs:
			sc := bufio.NewScanner(strings.NewReader(m))
			for sc.Scan() {
				for k := range want {
					if strings.HasPrefix(sc.Text(), k) {
						want[k] = true
					}
				}
			}
		case <-deadline:
			t.Fatalf("sd_notify messages seen: %v", want)
		}
	}
}

// Socket-activated, llmlabd exits once idle (never while a request is in
// flight), and exits 0; node_exporter's textfile then says it is down, with
// its counters continuing across the next activation.
func TestExitOnIdle(t *testing.T) {
	eng := &fakeengine.Engine{Delay: 1500 * time.Millisecond}
	es := httptest.NewServer(eng)
	defer es.Close()
	collector, stateDir := t.TempDir(), t.TempDir()
	textfile := filepath.Join(collector, "llmlab.prom")
	cfg := strings.Replace(baseConfig(es.URL, ""), "[gateway]\n",
		fmt.Sprintf("[gateway]\nexit_idle_timeout = \"1s\"\nstate_dir = %q\n", stateDir), 1)
	cfg = strings.Replace(cfg, `textfile = ""`, fmt.Sprintf("textfile = %q", textfile), 1)
	cfgPath := writeConfig(t, cfg)
	for run := 1; run <= 2; run++ {
		activateOnce(t, cfgPath)
		data, err := os.ReadFile(textfile)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`llmlab_requests_total{code="200",outcome="ok",route="completions"} %d`, run)
		if !strings.Contains(string(data), "llmlab_up 0") || !strings.Contains(string(data), want) {
			t.Fatalf("run %d: textfile after the exit lacks llmlab_up 0 or %s:\n%s", run, want, data)
		}
	}
}

// activateOnce starts llmlabd through socket activation, sends one request
// and waits for the daemon to exit on idle.
func activateOnce(t *testing.T, cfgPath string) {
	t.Helper()
	a := socketActivate(t, cfgPath)
	addr, exited, logs := a.addr, a.exited, a.logs
	start := time.Now()
	// The engine takes 1.5 s, longer than the idle timeout: the daemon must
	// not leave while the request is in flight.
	if resp, body := post(t, "http://"+addr+"/v1/completions", `{"model":"m","prompt":"x"}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	select {
	case err := <-exited:
		t.Fatalf("exited (%v) %s after start, while busy or before the idle timeout", err, time.Since(start))
	default:
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit on idle: %v, want status 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not exit after the idle timeout")
	}
	if !strings.Contains(logs.String(), "exiting on idle") {
		t.Fatalf("no log line says why it exited:\n%s", logs.String())
	}
}
