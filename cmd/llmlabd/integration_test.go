package main_test

// Integration tests: they build the real llmlabd, run it as a process in
// front of a fake engine, and check from the client's side.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/daemon/enginemodel"
	"github.com/llmlab/llmlab/internal/fakeengine"
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
	logs    *syncBuffer
	exited  chan error
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
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
	d := &daemon{cmd: cmd, logs: &syncBuffer{}, exited: make(chan error, 1)}
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

func TestProxiesStreamedAndNonStreamed(t *testing.T) {
	eng := &fakeengine.Engine{}
	es := httptest.NewServer(eng)
	defer es.Close()
	d := start(t, nil, nil, "--config", writeConfig(t, baseConfig(es.URL, "")))

	resp, body := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"hi","max_tokens":7}`)
	var c struct {
		Choices []struct{ Text string }
		Usage   struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if err := json.Unmarshal(body, &c); err != nil || resp.StatusCode != 200 || len(c.Choices) != 1 || c.Usage.CompletionTokens != 7 {
		t.Fatalf("non-streamed: %d %s", resp.StatusCode, body)
	}
	if c.Choices[0].Text != strings.Repeat(" tok", 7) {
		t.Errorf("text = %q", c.Choices[0].Text)
	}

	resp, body = post(t, d.api+"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":200,"stream":true}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("streamed: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := strings.Count(string(body), "data: ")
	if events != 201 || !strings.HasSuffix(string(body), "data: [DONE]\n\n") {
		t.Fatalf("stream had %d events, want 200 tokens and [DONE]", events)
	}

	// /metrics counts both, on the metrics listener only.
	mresp, err := http.Get(d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mdata, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`llmlab_requests_total{code="200",outcome="ok",route="completions"} 1`,
		`llmlab_requests_total{code="200",outcome="ok",route="chat"} 1`,
	} {
		if !strings.Contains(string(mdata), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if r, _ := http.Get(d.api + "/metrics"); r.StatusCode != 404 {
		t.Errorf("/metrics on the API listener: %d, want 404", r.StatusCode)
	}
	var st struct {
		Engine struct{ State string }
		Queue  struct {
			MaxInflight int `json:"max_inflight"`
		}
	}
	r, _ := http.Get(d.api + "/status")
	json.NewDecoder(r.Body).Decode(&st)
	r.Body.Close()
	if st.Engine.State == "" || st.Queue.MaxInflight != 256 {
		t.Errorf("/status = %+v", st)
	}
	// Access log line with the request id.
	if !strings.Contains(d.logs.String(), "msg=request request_id=") {
		t.Errorf("no access-log line:\n%s", d.logs.String())
	}
}

// A flood beyond max_inflight + max_queued gets fast 429/503 with
// Retry-After, and the engine never runs more than max_inflight.
func TestFlood(t *testing.T) {
	eng := &fakeengine.Engine{Delay: 300 * time.Millisecond}
	es := httptest.NewServer(eng)
	defer es.Close()
	d := start(t, nil, nil, "--config", writeConfig(t, baseConfig(es.URL,
		"max_inflight = 4\nmax_queued = 4\nmax_batch = 4\nmax_wait = \"5s\"")))

	const total = 40
	type answer struct {
		code  int
		retry string
		took  time.Duration
	}
	ch := make(chan answer, total)
	var wg sync.WaitGroup
	for range total {
		wg.Go(func() {
			start := time.Now()
			resp, _ := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"x","max_tokens":1}`)
			ch <- answer{resp.StatusCode, resp.Header.Get("Retry-After"), time.Since(start)}
		})
	}
	wg.Wait()
	close(ch)
	ok, refused := 0, 0
	for a := range ch {
		switch a.code {
		case 200:
			ok++
		case 429, 503:
			refused++
			if a.retry == "" {
				t.Errorf("%d without Retry-After", a.code)
			}
			if a.took > 250*time.Millisecond {
				// Refusals come at once, well before the engine's 300 ms answer.
				t.Errorf("refusal took %s", a.took)
			}
		default:
			t.Errorf("unexpected status %d", a.code)
		}
	}
	if ok < 8 || ok+refused != total {
		t.Errorf("%d ok, %d refused of %d; want at least max_inflight+max_queued = 8 ok and the rest refused", ok, refused, total)
	}
	if m := eng.Stats().MaxRunning; m > 4 {
		t.Errorf("engine ran %d at once, want at most 4", m)
	}
}

// SIGTERM: queued requests get 503 at once, the in-flight one finishes,
// the process exits 0.
// drainingDaemon starts llmlabd with one engine slot and a request held in
// it; release lets the engine answer, and waitExit checks that the held
// request got 200 and llmlabd then exited 0.
func drainingDaemon(t *testing.T) (d *daemon, release func(), waitExit func()) {
	t.Helper()
	hold := make(chan struct{})
	eng := &fakeengine.Engine{Hold: hold}
	es := httptest.NewServer(eng)
	t.Cleanup(es.Close)
	d = start(t, nil, nil, "--config", writeConfig(t, baseConfig(es.URL, "max_inflight = 1\nmax_batch = 1\nmax_wait = \"30s\"")))
	started := eng.Started()
	inflight := make(chan int, 1)
	go func() {
		resp, _ := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"a","max_tokens":3}`)
		inflight <- resp.StatusCode
	}()
	<-started
	waitExit = func() {
		t.Helper()
		if code := <-inflight; code != 200 {
			t.Errorf("in-flight request finished with %d, want 200", code)
		}
		select {
		case err := <-d.exited:
			if err != nil {
				t.Fatalf("exit: %v, want 0", err)
			}
			d.exited <- nil
		case <-time.After(10 * time.Second):
			t.Fatal("did not exit after draining")
		}
	}
	return d, func() { close(hold) }, waitExit
}

func TestSIGTERMDrains(t *testing.T) {
	d, release, waitExit := drainingDaemon(t)
	queued := make(chan *http.Response, 1)
	go func() {
		resp, _ := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"b","max_tokens":3}`)
		queued <- resp
	}()
	waitStatus(t, d, func(q queueStatus) bool { return q.Queued == 1 })

	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case resp := <-queued:
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("queued request on SIGTERM: %d, want 503 with Retry-After", resp.StatusCode)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued request not answered on SIGTERM")
	}
	select {
	case err := <-d.exited:
		t.Fatalf("exited (%v) while a request was still in flight", err)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	waitExit()
}

// A connection accepted before SIGTERM whose request comes after it is
// answered: net/http's Shutdown alone closes such a connection unanswered,
// which a client sees as a bare EOF.
func TestSIGTERMAnswersAcceptedConnection(t *testing.T) {
	d, release, waitExit := drainingDaemon(t)
	addr := strings.TrimPrefix(d.api, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Let llmlabd accept it (a connection still in the kernel's backlog
	// when the listener closes is reset, which is another matter).
	time.Sleep(time.Second)
	d.cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break // the listener is closed: the drain has begun
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections 5 s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}

	body := `{"model":"m","prompt":"b","max_tokens":3}`
	fmt.Fprintf(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("request on a connection accepted before SIGTERM: %v, want an answer", err)
	}
	resp.Body.Close()
	// The engine's one slot is taken, so it would have to queue: 503.
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !resp.Close {
		t.Errorf("answer %d, Retry-After %q, Connection: close %v; want 503 with Retry-After, closing", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close)
	}
	release()
	waitExit()
}

// A client that disconnects frees its slot: with max_inflight 1, the next
// request is served as soon as the first client leaves, and the engine saw
// the first request cancelled.
func TestDisconnectFreesSlot(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	eng := &fakeengine.Engine{Hold: hold}
	es := httptest.NewServer(eng)
	defer es.Close()
	d := start(t, nil, nil, "--config", writeConfig(t, baseConfig(es.URL, "max_inflight = 1\nmax_batch = 1\nmax_wait = \"30s\"")))
	started := eng.Started()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", d.api+"/v1/completions", strings.NewReader(`{"model":"m","prompt":"a","stream":true}`))
	go http.DefaultClient.Do(req)
	<-started
	waitStatus(t, d, func(q queueStatus) bool { return q.Inflight == 1 })
	cancel()
	waitStatus(t, d, func(q queueStatus) bool { return q.Inflight == 0 })
	deadline := time.Now().Add(5 * time.Second)
	for eng.Stats().Cancelled != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the engine did not see the client leave")
		}
		time.Sleep(5 * time.Millisecond)
	}
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

// SIGHUP applies a new config without dropping connections, and refuses a
// bad one, keeping the old.
func TestSIGHUPReloads(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	path := writeConfig(t, baseConfig(es.URL, ""))
	d := start(t, nil, nil, "--config", path)
	req := `{"model":"m","prompt":"x","max_tokens":500}`
	if resp, body := post(t, d.api+"/v1/completions", req); resp.StatusCode != 200 {
		t.Fatalf("before reload: %d %s", resp.StatusCode, body)
	}
	os.WriteFile(path, []byte(baseConfig(es.URL, "")+"[limits]\nmax_tokens = 100\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "msg=reloaded")
	if !strings.Contains(d.logs.String(), "limits.max_tokens: 1024 -> 100") {
		t.Errorf("reload log does not say what changed:\n%s", d.logs.String())
	}
	if resp, _ := post(t, d.api+"/v1/completions", req); resp.StatusCode != 400 {
		t.Fatalf("after reload to max_tokens=100: %d, want 400", resp.StatusCode)
	}
	os.WriteFile(path, []byte(baseConfig(es.URL, "max_inflight = -1")), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "reload refused")
	if !strings.Contains(d.logs.String(), "queue.max_inflight = -1") {
		t.Errorf("refusal does not name key and value:\n%s", d.logs.String())
	}
	if resp, _ := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"x","max_tokens":50}`); resp.StatusCode != 200 {
		t.Fatalf("after a refused reload: %d, want 200 (old config kept)", resp.StatusCode)
	}
}

// A file written for the deleted adaptive law still starts llmlabd, in
// the model mode, and each load of it (the start and a reload) warns,
// naming the file, the key and the value.
func TestAdaptiveConfigReadAsModel(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	path := writeConfig(t, baseConfig(es.URL, "concurrency = \"adaptive\"\nnominal_rps = 8"))
	d := start(t, nil, nil, "--config", path)
	if resp, body := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"x","max_tokens":5}`); resp.StatusCode != 200 {
		t.Fatalf("request: %d %s", resp.StatusCode, body)
	}
	resp, err := http.Get(d.api + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Limits struct {
			Concurrency string `json:"concurrency"`
		} `json:"limits"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Limits.Concurrency != "model" {
		t.Errorf("/status concurrency %q, want \"model\"", st.Limits.Concurrency)
	}
	warned := func() int {
		n := 0
		for _, l := range strings.Split(d.logs.String(), "\n") {
			if strings.Contains(l, "level=WARN") && strings.Contains(l, "deprecated setting") && strings.Contains(l, "config="+path) &&
				strings.Contains(l, `queue.concurrency = \"adaptive\": read as \"model\"`) {
				n++
			}
		}
		return n
	}
	if warned() != 1 || !strings.Contains(d.logs.String(), "queue.nominal_rps = 8: obsolete, ignored") {
		t.Fatalf("no warning at start naming the file, queue.concurrency and queue.nominal_rps:\n%s", d.logs.String())
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "msg=reloaded")
	if warned() != 2 {
		t.Fatalf("no warning on reload:\n%s", d.logs.String())
	}
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

func TestBadConfigStops(t *testing.T) {
	path := writeConfig(t, "[queue]\nmax_wait = \"soon\"\n")
	out, err := exec.Command(binary, "--config", path).CombinedOutput()
	if err == nil {
		t.Fatal("llmlabd started with a bad config")
	}
	if !strings.Contains(string(out), path) || !strings.Contains(string(out), "queue.max_wait") || !strings.Contains(string(out), `"soon"`) {
		t.Errorf("error does not name file, key and value: %s", out)
	}
}

func TestNoConfigFileWithFlags(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	// No --config: the default file need not exist, flags are enough.
	d := start(t, nil, nil, "--listen", "127.0.0.1:0", "--engine-url", es.URL, "--metrics-listen", "127.0.0.1:0")
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

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

func engineState(t *testing.T, d *daemon) string {
	t.Helper()
	r, err := http.Get(d.metrics + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	var st struct{ Engine struct{ State string } }
	json.NewDecoder(r.Body).Decode(&st)
	return st.Engine.State
}

func waitState(t *testing.T, d *daemon, want string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for engineState(t, d) != want {
		if time.Now().After(deadline) {
			t.Fatalf("engine state %q, want %q\n%s", engineState(t, d), want, d.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Scale to zero with the exec backend: the first requests start the
// engine (the real simulator, with a start-up delay) and are all answered,
// none refused for concurrency; after the idle timeout the engine process
// is gone; the next request starts it again.
func TestScaleToZeroExec(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	stateDir := t.TempDir()
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
state_dir = %q
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "1s", "--host", %q, "--port", %q]
idle_timeout = "1s"
expected_start_time = "2s"
max_cold_start_wait = "20s"
stop_grace = "2s"
[queue]
max_inflight = 4
max_batch = 4
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, stateDir, engineAddr, toolBinary, host, port)
	cfgPath := writeConfig(t, cfg)
	d := start(t, nil, nil, "--config", cfgPath)
	if s := engineState(t, d); s != "stopped" {
		t.Fatalf("before any request the engine is %q, want stopped", s)
	}
	// A health check and a scrape do not start it.
	http.Get(d.api + "/healthz")
	http.Get(d.metrics + "/metrics")
	http.Get(d.api + "/v1/models")
	time.Sleep(300 * time.Millisecond)
	if s := engineState(t, d); s != "stopped" {
		t.Fatalf("after /healthz, /metrics and /v1/models the engine is %q, want stopped", s)
	}

	const burst = 12 // three times max_inflight, all during the cold start
	codes := make(chan int, burst)
	for range burst {
		go func() {
			resp, _ := post(t, d.api+"/v1/completions", `{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":3,"ignore_eos":true}`)
			codes <- resp.StatusCode
		}()
	}
	for range burst {
		if c := <-codes; c != 200 {
			t.Fatalf("a request during the cold start got %d, want 200\n%s", c, d.logs.String())
		}
	}
	waitState(t, d, "stopped")
	if _, err := http.Get("http://" + engineAddr + "/health"); err == nil {
		t.Fatal("the engine still answers after the idle stop")
	}
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":"again","max_tokens":2}`)
	if resp.StatusCode != 200 {
		t.Fatalf("after scale to zero: %d %s", resp.StatusCode, body)
	}

	// What it learned survives a restart: the measured start time (about
	// 1 s, not the configured 2 s) is kept in the state directory.
	d.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-d.exited; err != nil {
		t.Fatalf("exit: %v", err)
	}
	d.exited <- nil
	data, err := os.ReadFile(filepath.Join(stateDir, "learned.json"))
	if err != nil {
		t.Fatal(err)
	}
	var kept struct {
		EngineStartSeconds float64 `json:"engine_start_seconds"`
	}
	json.Unmarshal(data, &kept)
	if kept.EngineStartSeconds < 1 || kept.EngineStartSeconds > 1.9 {
		t.Fatalf("kept start time %.2fs (%s), want the average of 2s and two starts of about 1s", kept.EngineStartSeconds, data)
	}
	d2 := start(t, nil, nil, "--config", cfgPath)
	r, err := http.Get(d2.metrics + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Engine struct {
			ExpectedStartSeconds float64 `json:"expected_start_seconds"`
		}
	}
	json.NewDecoder(r.Body).Decode(&st)
	r.Body.Close()
	// Kept in seconds, restored in nanoseconds: equal to the nanosecond.
	if d := st.Engine.ExpectedStartSeconds - kept.EngineStartSeconds; d > 1e-6 || d < -1e-6 {
		t.Fatalf("after a restart the expected start is %.3fs, want the kept %.3fs", st.Engine.ExpectedStartSeconds, kept.EngineStartSeconds)
	}
}

// An engine that cannot start: waiting requests get 503 with Retry-After
// and a clear message, and the failure is logged.
func TestEngineStartFailure(t *testing.T) {
	cfg := `[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://127.0.0.1:9"
command = ["sh", "-c", "echo no model here >&2; exit 1"]
max_cold_start_wait = "20s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	start := time.Now()
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "engine") {
		t.Fatalf("engine failing to start: %d %s (Retry-After %q), want 503 naming the engine with Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("the refusal took %s; it should come when the engine fails, not at the deadline", time.Since(start))
	}
	waitLog(t, d, "engine exited")
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

// A reload that changes the engine's settings drains the engine and
// restarts it once, without refusing the requests that arrive meanwhile.
func TestReloadRestartsEngine(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	conf := func(maxSeqs string) string {
		return fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "500ms", "--max-num-seqs", %q, "--host", %q, "--port", %q]
idle_timeout = "0s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, engineAddr, toolBinary, maxSeqs, host, port)
	}
	path := writeConfig(t, conf("64"))
	d := start(t, nil, nil, "--config", path)
	req := `{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":2}`
	if resp, body := post(t, d.api+"/v1/completions", req); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	os.WriteFile(path, []byte(conf("32")), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "engine.command:")
	codes := make(chan int, 6)
	for range 6 {
		go func() {
			resp, _ := post(t, d.api+"/v1/completions", req)
			codes <- resp.StatusCode
		}()
	}
	for range 6 {
		if c := <-codes; c != 200 {
			t.Fatalf("a request during the engine restart got %d\n%s", c, d.logs.String())
		}
	}
	waitLog(t, d, "restarting the engine with its new settings")
	waitState(t, d, "ready")
}

// vLLM's knobs are llmlabd's settings: the engine gets them (and its
// memory share) at each start, and a reload that changes one restarts the
// engine with the new values, which the engine then reports as vLLM does
// (max_model_len in /v1/models, the share in vllm:cache_config_info).
func TestReloadChangesEngineKnobs(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	envFile := filepath.Join(t.TempDir(), "engine.env")
	conf := func(maxLen int, share float64) string {
		return fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "300ms", "--host", %q, "--port", %q]
idle_timeout = "0s"
runtime_env = %q
max_num_seqs = 32
max_num_batched_tokens = 4096
max_model_len = %d
[gpu]
enabled = false
memory_fraction = %g
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
`, engineAddr, toolBinary, host, port, envFile, maxLen, share)
	}
	engineSays := func(maxLen int, share float64) {
		t.Helper()
		req := `{"model":"Qwen/Qwen2.5-0.5B-Instruct","prompt":"x","max_tokens":2}`
		deadline := time.Now().Add(15 * time.Second)
		for {
			resp, body := post(t, "http://"+engineAddr+"/v1/completions", req)
			models := ""
			if resp.StatusCode == 200 {
				models = fetch(t, "http://"+engineAddr+"/v1/models") + fetch(t, "http://"+engineAddr+"/metrics")
			}
			if strings.Contains(models, fmt.Sprintf(`"max_model_len":%d`, maxLen)) && strings.Contains(models, fmt.Sprintf(`gpu_memory_utilization="%g"`, share)) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the engine never reported max_model_len %d and share %g (last answer %d %s):\n%s", maxLen, share, resp.StatusCode, body, models)
			}
			time.Sleep(100 * time.Millisecond)
		}
		env, err := os.ReadFile(envFile)
		want := fmt.Sprintf("LLMLAB_GPU_MEMORY_UTILIZATION=%g\nLLMLAB_MAX_NEW_TOKENS=1024\nLLMLAB_MAX_NUM_SEQS=32\nLLMLAB_MAX_NUM_BATCHED_TOKENS=4096\nLLMLAB_MAX_MODEL_LEN=%d\n", share, maxLen)
		if err != nil || !strings.HasSuffix(string(env), want) {
			t.Fatalf("engine.runtime_env = %q (%v), want it to end with %q", env, err, want)
		}
	}
	path := writeConfig(t, conf(2048, 0.5))
	d := start(t, nil, nil, "--config", path)
	if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s\n%s", resp.StatusCode, body, d.logs.String())
	}
	engineSays(2048, 0.5)

	os.WriteFile(path, []byte(conf(1024, 0.6)), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "restarting the engine with its new settings")
	if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`); resp.StatusCode != 200 {
		t.Fatalf("%d %s\n%s", resp.StatusCode, body, d.logs.String())
	}
	engineSays(1024, 0.6)
	if strings.Contains(d.logs.String(), "needs a restart") {
		t.Fatalf("a knob or the share was logged as needing a restart of llmlabd:\n%s", d.logs.String())
	}
}

// activated is llmlabd behind systemd-socket-activate, which listens first
// and starts llmlabd on the first connection, as systemd does with
// llmlab.socket.
type activated struct {
	addr   string
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan error
}

func socketActivate(t *testing.T, cfgPath string, env ...string) *activated {
	t.Helper()
	a := &activated{addr: freeAddr(t), logs: &syncBuffer{}, exited: make(chan error, 1)}
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

// On a machine without an NVIDIA driver (as CI's): NVML's failure is
// logged once and reported as "no GPU" in /status and /metrics, the engine
// still starts, and its GPU share (gpu.memory_fraction) reaches it through
// its environment and engine.runtime_env.
func TestGPUReadingsAndEngineShare(t *testing.T) {
	engineAddr := freeAddr(t)
	host, port, _ := net.SplitHostPort(engineAddr)
	envFile := filepath.Join(t.TempDir(), "run", "engine.env")
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
command = [%q, "sim", "--profile", "instant", "--startup-delay", "200ms", "--host", %q, "--port", %q]
runtime_env = %q
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
[gpu]
poll_interval = "50ms"
memory_fraction = 0.55
`, engineAddr, toolBinary, host, port, envFile)
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s\n%s", resp.StatusCode, body, d.logs.String())
	}
	_, driver := os.Stat("/dev/nvidiactl")
	hasGPU := driver == nil

	sresp, err := http.Get(d.api + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		GPU struct {
			Available bool   `json:"available"`
			Reason    string `json:"reason"`
			Devices   []struct {
				MemoryTotal uint64 `json:"memory_total_bytes"`
			} `json:"devices"`
		} `json:"gpu"`
	}
	json.NewDecoder(sresp.Body).Decode(&st)
	sresp.Body.Close()
	if st.GPU.Available != hasGPU || (!hasGPU && !strings.Contains(st.GPU.Reason, "no GPU")) || (hasGPU && len(st.GPU.Devices) == 0) {
		t.Fatalf("/status gpu = %+v (an NVIDIA driver here: %v)", st.GPU, hasGPU)
	}
	metrics := fetch(t, d.metrics+"/metrics")
	wantUp := "llmlab_gpu_up 0\n"
	if hasGPU {
		wantUp = "llmlab_gpu_up 1\n"
	}
	if !strings.Contains(metrics, wantUp) || !strings.Contains(metrics, `llmlab_engine_start_refusals_total{reason="gpu_memory"} 0`) {
		t.Fatalf("/metrics lacks %q or the refusal counter:\n%s", wantUp, metrics)
	}
	if !hasGPU {
		time.Sleep(200 * time.Millisecond) // several polls
		if n := strings.Count(d.logs.String(), "GPU readings unavailable"); n != 1 {
			t.Fatalf("the missing GPU was logged %d times, want once:\n%s", n, d.logs.String())
		}
	}

	// The engine got its share: in its environment (the simulator shows it
	// as vLLM does, in vllm:cache_config_info) and in the runtime file.
	em := fetch(t, "http://"+engineAddr+"/metrics")
	if !hasGPU && !strings.Contains(em, `gpu_memory_utilization="0.55"`) {
		t.Fatalf("the engine did not get its share:\n%s", em)
	}
	env, err := os.ReadFile(envFile)
	if err != nil || (!hasGPU && !strings.Contains(string(env), "LLMLAB_GPU_MEMORY_UTILIZATION=0.55\n")) ||
		!strings.Contains(string(env), "LLMLAB_MAX_NEW_TOKENS=1024\n") {
		t.Fatalf("engine.runtime_env: %v %q, want the share and limits.max_tokens as LLMLAB_MAX_NEW_TOKENS", err, env)
	}
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

// The shipped defaults (the limit chosen from the engine model) in front
// of the simulator, at a load far past what fits the objective: every
// request is answered or refused with Retry-After, none is lost, the limit
// stays within what the engine runs (engine.max_num_seqs), the model learns
// from the answers, and what it learned survives a restart. Ratios against
// other settings are the benchmark's (llmlab tune-admission), not this
// test's.
func TestModelAdmissionOverload(t *testing.T) {
	engineAddr := startSim(t, "--step-fixed", "10ms", "--per-token", "1ms", "--max-num-seqs", "32")
	stateDir := t.TempDir()
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
state_dir = %q
[engine]
url = "http://%s"
max_num_seqs = 32
[slo]
latency = "2s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
level = "debug"
access_log = false
[gpu]
enabled = false
`, stateDir, engineAddr)
	cfgPath := writeConfig(t, cfg)
	d := start(t, nil, nil, "--config", cfgPath)
	client := bench.NewClient(512)
	o := bench.Options{Target: d.api, Model: "Qwen/Qwen2.5-0.5B-Instruct", PromptTokens: 50, MaxTokens: 50, Stream: true,
		Rate: 400, Poisson: true, Seed: 3, Duration: 10 * time.Second, Timeout: 30 * time.Second}
	samples, err := bench.Run(context.Background(), client, o)
	if err != nil {
		t.Fatal(err)
	}
	ok, refused := 0, 0
	for _, s := range samples {
		switch {
		case s.Status == 200 && s.Error == "":
			ok++
		case s.Status == 429 || s.Status == 503:
			refused++
		default:
			t.Errorf("a request ended with status %d: %s", s.Status, s.Error)
		}
	}
	st := readLimit(t, d)
	t.Logf("%d answered, %d refused; limit %d; engine model %+v", ok, refused, st.Queue.Limit, st.Queue.Model)
	if ok == 0 || refused == 0 {
		t.Errorf("%d answered and %d refused at 400 req/s: want both", ok, refused)
	}
	if st.Queue.Limit < 4 || st.Queue.Limit > 32 {
		t.Errorf("limit %d, want within [min_inflight 4, engine.max_num_seqs 32]", st.Queue.Limit)
	}
	if st.Queue.Model.Observed < ok/2 {
		t.Errorf("the engine model learned from %d requests of %d answered", st.Queue.Model.Observed, ok)
	}
	m := fetch(t, d.metrics+"/metrics")
	if counted := metricSum(t, d.metrics+"/metrics", "llmlab_requests_total"); int(counted) != len(samples) {
		t.Errorf("llmlab_requests_total sums to %v, want the %d requests sent", counted, len(samples))
	}
	if !strings.Contains(m, `llmlab_admission_decisions_total{class="interactive",decision="refuse",reason="slo"}`) {
		t.Errorf("/metrics lacks the objective's refusals:\n%s", grepLines(m, "llmlab_admission_decisions_total"))
	}
	// What the model learned is kept: a restarted daemon starts with it.
	kept := st.Queue.Model.Observed
	d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.exited
	d.exited <- nil
	data, err := os.ReadFile(filepath.Join(stateDir, "learned.json"))
	if err != nil || !strings.Contains(string(data), `"engine_model"`) {
		t.Fatalf("the state file: %v\n%s", err, data)
	}
	again := start(t, nil, nil, "--config", cfgPath)
	if got := readLimit(t, again).Queue.Model.Observed; got < kept {
		t.Fatalf("after a restart the model has seen %d requests, want the kept %d", got, kept)
	}
}

// An engine whose KV cache is full with requests waiting inside it gets no
// more requests while it has llmlab's work: they wait in llmlab's queue
// (counted as engine_saturated), and every one is still answered. The
// simulator's cache holds two of these requests at a time.
func TestHoldsWhileEngineSaturated(t *testing.T) {
	engineAddr := startSim(t, "--step-fixed", "2ms", "--per-token", "20us", "--num-gpu-blocks-override", "30", "--max-model-len", "450")
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s"
metrics_interval = "20ms"
[queue]
max_inflight = 16
max_queued = 256
max_wait = "30s"
[slo]
latency = "0s"
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
access_log = false
[gpu]
enabled = false
`, engineAddr)
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	var sawHold atomic.Bool
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			resp, err := http.Get(d.metrics + "/metrics")
			if err != nil {
				continue
			}
			m, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(m), "llmlab_engine_saturated 1\n") {
				sawHold.Store(true)
			}
		}
	}()
	o := bench.Options{Target: d.api, Model: "Qwen/Qwen2.5-0.5B-Instruct", PromptTokens: 100, MaxTokens: 100,
		Concurrency: 12, Requests: 48, Timeout: 60 * time.Second}
	samples, err := bench.Run(context.Background(), bench.NewClient(16), o)
	close(done)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		if s.Status != 200 {
			t.Fatalf("a request got %d %s; every one should be answered", s.Status, s.Error)
		}
	}
	if len(samples) != 48 {
		t.Fatalf("%d answers, want 48", len(samples))
	}
	m := fetch(t, d.metrics+"/metrics")
	if !sawHold.Load() || !strings.Contains(m, `llmlab_admission_decisions_total{class="interactive",decision="queue",reason="engine_saturated"}`) {
		t.Fatalf("the saturated engine was not held (seen %v):\n%s", sawHold.Load(), grepLines(m, "llmlab_admission|llmlab_engine_"))
	}
}

// startSim runs the simulator (profile instant, no start-up delay, plus
// args) on a free address and returns it once the engine answers /health.
func startSim(t *testing.T, args ...string) string {
	t.Helper()
	addr := freeAddr(t)
	host, port, _ := net.SplitHostPort(addr)
	argv := append([]string{"sim", "--profile", "instant", "--startup-delay", "0s", "--host", host, "--port", port}, args...)
	cmd := exec.Command(toolBinary, argv...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; {
		if resp, err := http.Get("http://" + addr + "/health"); err == nil {
			resp.Body.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatal("the simulator did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
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

func grepLines(s, pattern string) string {
	re := regexp.MustCompile(pattern)
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// `llmlab overhead` (make bench-overhead) runs end to end: every target
// answers both workloads without a failed request, and the report has a
// row per target and workload with a capacity, and the verdict lines.
func TestOverheadBenchmarkRuns(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Fatal("nginx is required (apt-get install nginx-light)")
	}
	out, err := exec.Command(toolBinary, "overhead", "--duration", "200ms", "--rounds", "1", "--concurrency", "4").CombinedOutput()
	if err != nil {
		t.Fatalf("llmlab overhead: %v\n%s", err, out)
	}
	report := string(out)
	for _, w := range []struct {
		name   string
		stream bool
	}{{"short, non-streamed (1 token)", false}, {"200-token stream", true}} {
		for _, target := range []string{"direct", "nginx", "go-reverseproxy", "llmlabd"} {
			row := regexp.MustCompile(`(?m)^\| ` + regexp.QuoteMeta(w.name) + ` \| ` + target + ` \| ([0-9]+) \|`).FindStringSubmatch(report)
			if row == nil || row[1] == "0" {
				t.Errorf("%s, %s: no row with a capacity in\n%s", w.name, target, report)
			}
		}
		if !w.stream && !regexp.MustCompile(`(?m)^\| `+regexp.QuoteMeta(w.name)+` \| nginx, answering itself \| \| \| \| [0-9]+us \|`).MatchString(report) {
			t.Errorf("%s: no unloaded round trip to nginx answering by itself in\n%s", w.name, report)
		}
		if !strings.Contains(report, "| "+w.name+" | direct, again |") {
			t.Errorf("%s: no second measurement of direct access in\n%s", w.name, report)
		}
		if !strings.Contains(report, "- "+w.name+": llmlabd capacity ") {
			t.Errorf("%s: no verdict line in\n%s", w.name, report)
		}
	}
}

// In front of the simulator (which follows vLLM: docs/engine-contract.md),
// llmlabd adds no max_tokens, so a request without one gets the engine's
// default instead of a 400; it learns the engine's context length from
// /v1/models and refuses a max_tokens that cannot fit; a stream that did
// not ask for usage is counted as unreported, not silently left out.
func TestEngineContextLength(t *testing.T) {
	addr := startSim(t, "--max-model-len", "512")
	d := start(t, nil, nil, "--config", writeConfig(t, baseConfig("http://"+addr, "")))

	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(fetch(t, d.api+"/status"), `"max_model_len":512`) {
		if time.Now().After(deadline) {
			t.Fatalf("/status never showed the engine's max_model_len 512: %s", fetch(t, d.api+"/status"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if m := fetch(t, d.metrics+"/metrics"); !strings.Contains(m, "llmlab_engine_max_model_len 512") {
		t.Errorf("/metrics lacks llmlab_engine_max_model_len 512:\n%s", grepLines(m, "max_model_len"))
	}

	prompt := `"Write` + strings.Repeat(" word", 199) + `"`
	// limits.max_tokens (1024 by default) is above this engine's context:
	// before, llmlabd added max_tokens 1024 and the engine refused every
	// request that named none.
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":`+prompt+`,"ignore_eos":true}`)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"completion_tokens":16`) {
		t.Fatalf("completion without max_tokens: %d %.300s, want 200 with vLLM's default 16 tokens", resp.StatusCode, body)
	}
	resp, body = post(t, d.api+"/v1/chat/completions", `{"messages":[{"role":"user","content":`+prompt+`}],"max_tokens":null}`)
	if resp.StatusCode != 200 {
		t.Fatalf("chat without a cap: %d %.300s, want 200", resp.StatusCode, body)
	}
	resp, body = post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":600}`)
	if resp.StatusCode != 400 || !strings.Contains(string(body), "maximum context length is 512") || !strings.Contains(string(body), `"param":"max_tokens"`) {
		t.Fatalf("max_tokens 600 on a 512-token engine: %d %.300s, want 400 from llmlabd naming the context length", resp.StatusCode, body)
	}
	if !strings.Contains(d.logs.String(), "limits.max_tokens does not fit the engine's context") {
		t.Errorf("no warning that limits.max_tokens (1024) exceeds the context (512)")
	}

	post(t, d.api+"/v1/completions", `{"prompt":"hi","max_tokens":3,"stream":true}`)
	post(t, d.api+"/v1/completions", `{"prompt":"hi","max_tokens":3,"stream":true,"stream_options":{"include_usage":true}}`)
	m := fetch(t, d.metrics+"/metrics")
	if !strings.Contains(m, `llmlab_client_usage_unreported_total{client="anonymous"} 1`) {
		t.Errorf("want one unreported stream:\n%s", grepLines(m, "unreported|client_tokens"))
	}
	if !strings.Contains(d.logs.String(), "usage=unreported") {
		t.Errorf("the access log does not mark the stream without usage")
	}
}
