package main_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

// metricSum scrapes url and sums the samples of family name whose labels
// include match (name=value pairs).
func metricSum(t *testing.T, url, name string, match ...string) float64 {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(fetch(t, url)))
	if err != nil {
		t.Fatal(err)
	}
	f, ok := fams[name]
	if !ok {
		return 0
	}
	var sum float64
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		ok := true
		for _, kv := range match {
			k, v, _ := strings.Cut(kv, "=")
			ok = ok && labels[k] == v
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		}
	}
	return sum
}

// managedSimConfig is a configuration of llmlabd managing the simulator
// (gtx1650 profile, a 1 s start, the model named "m", never stopped for
// idleness) on a free port, with extra lines for [engine], [queue] and
// [log].
func managedSimConfig(t *testing.T, engine, queue, log string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(freeAddr(t))
	return fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
[engine]
url = "http://%s:%s"
models = ["m"]
command = [%q, "sim", "--profile", "gtx1650", "--startup-delay", "1s", "--served-model-name", "m", "--host", %q, "--port", %q]
idle_timeout = "0s"
%s[queue]
%s[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
%s`, host, port, toolBinary, host, port, engine, queue, log)
}

// childPIDs lists a process's children.
func childPIDs(t *testing.T, pid int) []int {
	t.Helper()
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		data, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(s); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// The engine llmlabd manages (the simulator, gtx1650 profile) is killed
// with SIGKILL while two requests run in it and three wait in llmlabd's
// queue. The streamed one, whose answer had begun, ends with an
// OpenAI-shaped SSE error event; the non-streamed one, of which the client
// had received nothing, is sent once more to the restarted engine and
// answered; llmlabd restarts the engine at once and the three waiting
// requests are served by the new one, none refused. Slots are freed, and
// the counters add up: every request sent is counted once.
func TestEngineCrashMidStream(t *testing.T) {
	// An objective of 30 s: the three waiting requests are not refused for
	// it (each waits for a 400-token answer, about 5 s on this profile).
	cfg := managedSimConfig(t, "max_cold_start_wait = \"30s\"\n", "max_inflight = 2\nmax_queued = 8\nmax_wait = \"30s\"\n[slo]\nlatency = \"30s\"\n", "")
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	// Warm: the engine starts with the first request.
	if resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d %s", resp.StatusCode, body)
	}
	enginePIDs := childPIDs(t, d.cmd.Process.Pid)
	if len(enginePIDs) != 1 {
		t.Fatalf("llmlabd's children: %v, want the engine alone", enginePIDs)
	}

	// The streamed request: read its first event, then keep reading.
	streamed := make(chan string, 1)
	resp, err := http.Post(d.api+"/v1/completions", "application/json",
		strings.NewReader(`{"prompt":"x","max_tokens":400,"stream":true,"ignore_eos":true}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("streamed request: %v %v", err, resp)
	}
	br := bufio.NewReader(resp.Body)
	if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "data: ") {
		t.Fatalf("first event: %q %v", line, err)
	}
	go func() {
		rest, _ := io.ReadAll(br)
		resp.Body.Close()
		streamed <- string(rest)
	}()
	type answer struct {
		code int
		body string
	}
	send := func(c chan<- answer, body string) {
		resp, b := post(t, d.api+"/v1/completions", body)
		c <- answer{resp.StatusCode, string(b)}
	}
	inflight := make(chan answer, 1)
	go send(inflight, `{"prompt":"x","max_tokens":400,"ignore_eos":true}`)
	waiting := make(chan answer, 3)
	deadline := time.Now().Add(10 * time.Second)
	for metricSum(t, d.metrics+"/metrics", "llmlab_inflight_sequences") != 2 {
		if time.Now().After(deadline) {
			t.Fatal("the two requests did not reach the engine")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 3 {
		go send(waiting, `{"prompt":"x","max_tokens":8}`)
	}
	for metricSum(t, d.metrics+"/metrics", "llmlab_queue_depth") != 3 {
		if time.Now().After(deadline) {
			t.Fatal("the three requests did not queue")
		}
		time.Sleep(10 * time.Millisecond)
	}

	crashed := time.Now()
	syscall.Kill(enginePIDs[0], syscall.SIGKILL)

	select {
	case rest := <-streamed:
		if !strings.Contains(rest, `"code":"engine_error"`) || !strings.Contains(rest, `"type":"server_error"`) {
			t.Fatalf("the stream ended without an OpenAI-shaped error event:\n%.2000s", rest)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the streamed request did not end after the crash")
	}
	select {
	case a := <-inflight:
		if a.code != 200 {
			t.Fatalf("the non-streamed request in the engine: %d %s, want it sent again to the restarted engine and answered", a.code, a.body)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the non-streamed request in the engine did not end after the crash")
	}
	for range 3 {
		select {
		case a := <-waiting:
			if a.code != 200 {
				t.Fatalf("a request waiting in the queue during the crash: %d %s, want it served after the restart\n%s", a.code, a.body, d.logs.String())
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a waiting request was not answered within 30 s of the crash")
		}
	}
	t.Logf("the three waiting requests were served %s after the crash", time.Since(crashed).Round(time.Millisecond))

	m := d.metrics + "/metrics"
	if n := metricSum(t, m, "llmlab_engine_crashes_total"); n != 1 {
		t.Errorf("llmlab_engine_crashes_total = %v, want 1", n)
	}
	if n := metricSum(t, m, "llmlab_engine_starts_total", "result=ready"); n != 2 {
		t.Errorf("llmlab_engine_starts_total{result=ready} = %v, want 2 (the restart)", n)
	}
	deadline = time.Now().Add(5 * time.Second)
	for metricSum(t, m, "llmlab_inflight_sequences")+metricSum(t, m, "llmlab_queue_depth") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("slots still held after every request ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// 1 warm-up + 1 streamed + 1 in the engine + 3 waiting, each counted once.
	if n := metricSum(t, m, "llmlab_requests_total"); n != 6 {
		t.Errorf("llmlab_requests_total = %v, want 6: every request counted once", n)
	}
	if n := metricSum(t, m, "llmlab_requests_total", "outcome=engine_unavailable"); n != 0 {
		t.Errorf("%v requests refused as engine_unavailable during the restart", n)
	}
}

// Ten thousand idle connections against gateway.max_connections = 500:
// llmlabd holds at most 500 (its open file descriptors say so), answers
// each of the others 503 with Retry-After and closes it, keeps serving a
// client whose connection it already held, and serves new connections
// once the idle ones go. A connection that sends no request, or its
// headers a byte at a time, is closed after gateway.client_timeout.
func TestIdleConnectionFlood(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	cfg := strings.Replace(baseConfig(es.URL, ""), "[gateway]\n", "[gateway]\nmax_connections = 500\nclient_timeout = \"4s\"\n", 1)
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	addr := strings.TrimPrefix(d.api, "http://")
	// A client connected before the flood.
	early := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	if resp, err := early.Post(d.api+"/v1/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"x","max_tokens":1}`)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("before the flood: %v %v", err, resp)
	} else {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	fdsBefore := metricSum(t, d.metrics+"/metrics", "process_open_fds")

	const flood = 10000
	conns := make([]net.Conn, 0, flood)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range flood {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	open := metricSum(t, d.metrics+"/metrics", "llmlab_connections_open")
	// Each connection past the cap reads a 503 at once; those within it
	// read nothing (they are idle, awaiting a request).
	var refusedN atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err == nil {
				if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
					t.Errorf("past the cap: %d %v", resp.StatusCode, resp.Header)
				}
				refusedN.Add(1)
			}
		})
	}
	wg.Wait()
	refused := int(refusedN.Load())
	// Each refusal holds a descriptor while it is written (a moment, or
	// longer on a busy machine); once they are delivered, what remains is
	// the connections within the cap.
	fds := metricSum(t, d.metrics+"/metrics", "process_open_fds")
	for deadline := time.Now().Add(3 * time.Second); fds > fdsBefore+500+20 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		fds = metricSum(t, d.metrics+"/metrics", "process_open_fds")
	}
	t.Logf("%d connections: %d refused with 503; llmlabd holds %v of them, %v file descriptors open (%v before)", flood, refused, open, fds, fdsBefore)
	if open > 500 || refused < flood-500 || fds > fdsBefore+500+20 {
		t.Fatalf("open %v, refused %d, fds %v (before %v): want at most 500 held and the rest refused", open, refused, fds, fdsBefore)
	}
	if n := metricSum(t, d.metrics+"/metrics", "llmlab_connections_refused_total"); n < float64(flood-500) {
		t.Errorf("llmlab_connections_refused_total = %v", n)
	}
	// The client connected before the flood is still served on its
	// connection.
	if resp, err := early.Post(d.api+"/v1/completions", "application/json", strings.NewReader(`{"model":"m","prompt":"x","max_tokens":1}`)); err != nil || resp.StatusCode != 200 {
		t.Fatalf("during the flood, on a held connection: %v %v", err, resp)
	} else {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	// A client sending its headers a byte at a time is cut off.
	for _, c := range conns[:100] {
		c.Close()
	}
	conns = conns[100:]
	// The cap frees their slots as llmlabd sees them close: wait for it,
	// or the slow client could be refused as one over the cap.
	for deadline := time.Now().Add(5 * time.Second); metricSum(t, d.metrics+"/metrics", "llmlab_connections_open") > 400; {
		if time.Now().After(deadline) {
			t.Fatal("closing 100 idle connections freed no room under the cap in 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	cut := make(chan time.Duration, 1)
	go func() {
		begin := time.Now()
		// 120 bytes at 10 a second: 12 s unless llmlabd cuts it.
		headers := "POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", 71) + "\r\n"
		for _, b := range []byte(headers) {
			if _, err := slow.Write([]byte{b}); err != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		cut <- time.Since(begin)
	}()
	slow.SetReadDeadline(time.Now().Add(15 * time.Second))
	// Closed by llmlabd: an end of file, or a reset when the client's next
	// byte reaches the closed socket before the read.
	if _, err := io.ReadAll(slow); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("slow headers: %v, want the connection closed", err)
	}
	// Cut after client_timeout (4 s), well before the 12 s its headers
	// would take: its writes fail once the socket is closed.
	select {
	case took := <-cut:
		if took > 8*time.Second {
			t.Errorf("the slow client wrote for %s, want it cut after the 4s client_timeout", took)
		}
	case <-time.After(15 * time.Second):
		t.Error("the slow client was never cut off")
	}
	// Once the idle connections go, new ones are served.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	deadline := time.Now().Add(10 * time.Second)
	for metricSum(t, d.metrics+"/metrics", "llmlab_connections_open") > 2 {
		if time.Now().After(deadline) {
			t.Fatalf("connections still counted open: %v", metricSum(t, d.metrics+"/metrics", "llmlab_connections_open"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp, body := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"x","max_tokens":1}`); resp.StatusCode != 200 {
		t.Fatalf("after the flood: %d %s", resp.StatusCode, body)
	}
}

// API keys never leave llmlabd: after requests with a good key, a wrong
// one and none, neither key appears in its logs (debug level, access log
// on), /status or /metrics, while the key's name does.
func TestAPIKeysNeverExposed(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	const good, wrong = "sk-llmlab-test-0123456789abcdef", "sk-wrong-fedcba9876543210"
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("alice "+good+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig(es.URL, "") + fmt.Sprintf("level = \"debug\"\naccess_log = true\n[auth]\nkeys_file = %q\n", keys)
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	for _, key := range []string{good, wrong, ""} {
		req, _ := http.NewRequest("POST", d.api+"/v1/completions", strings.NewReader(`{"model":"m","prompt":"x","max_tokens":1}`))
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := map[bool]int{true: 200, false: 401}[key == good]; resp.StatusCode != want {
			t.Fatalf("key %q: %d %s, want %d", key, resp.StatusCode, body, want)
		}
		if strings.Contains(string(body), wrong) {
			t.Fatalf("the answer repeats the key: %s", body)
		}
	}
	waitLog(t, d, "client=alice")
	for where, text := range map[string]string{
		"the logs": d.logs.String(), "/status": fetch(t, d.metrics+"/status"), "/metrics": fetch(t, d.metrics+"/metrics"),
	} {
		for _, key := range []string{good, wrong, good[:12], wrong[:12]} {
			if strings.Contains(text, key) {
				t.Errorf("%s hold the key %q", where, key)
			}
		}
	}
	if !strings.Contains(fetch(t, d.metrics+"/metrics"), `llmlab_client_requests_total{client="alice"} 1`) {
		t.Error("/metrics does not count alice's request by name")
	}
	// A keys file open to other users stops llmlabd at start, naming it.
	os.Chmod(keys, 0o644)
	out, err := exec.Command(binary, "--config", writeConfig(t, cfg)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), keys) || !strings.Contains(string(out), "0644") {
		t.Fatalf("llmlabd with a world-readable keys file: %v\n%s", err, out)
	}
}

// readOnly makes dir unwritable for llmlabd until the returned function
// runs: as root (as CI runs), by a read-only bind mount of it onto itself,
// which binds root as well; otherwise by its permissions.
func readOnly(t *testing.T, dir string) (restore func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		return func() { os.Chmod(dir, 0o755) }
	}
	for _, args := range [][]string{{"--bind", dir, dir}, {"-o", "remount,ro,bind", dir}} {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			exec.Command("umount", dir).Run()
			t.Fatalf("mount %v: %v\n%s", args, err, out)
		}
	}
	done := false
	restore = func() {
		if !done {
			done = true
			if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v\n%s", dir, err, out)
			}
		}
	}
	t.Cleanup(restore)
	return restore
}

// The textfile's directory and the state directory turn read-only while
// llmlabd serves (a full or read-only disk): it keeps serving, says so
// once rather than at every attempt (one each 500 ms), and writes the
// textfile again once it can, with the requests served meanwhile.
func TestUnwritableTextfileAndState(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	collector, stateDir := t.TempDir(), t.TempDir()
	textfile := filepath.Join(collector, "llmlab.prom")
	cfg := strings.Replace(baseConfig(es.URL, ""), "[gateway]\n", fmt.Sprintf("[gateway]\nstate_dir = %q\n", stateDir), 1)
	cfg = strings.Replace(cfg, `textfile = ""`, fmt.Sprintf("textfile = %q", textfile), 1)
	d := start(t, nil, nil, "--config", writeConfig(t, cfg))
	req := `{"model":"m","prompt":"x","max_tokens":1}`
	if resp, body := post(t, d.api+"/v1/completions", req); resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	restoreCollector, restoreState := readOnly(t, collector), readOnly(t, stateDir)
	for range 5 {
		if resp, body := post(t, d.api+"/v1/completions", req); resp.StatusCode != 200 {
			t.Fatalf("with the disk read-only: %d %s", resp.StatusCode, body)
		}
		time.Sleep(600 * time.Millisecond) // a textfile attempt each 500 ms
	}
	waitLog(t, d, "cannot write the textfile")
	if n := strings.Count(d.logs.String(), "cannot write the textfile"); n != 1 {
		t.Errorf("the unwritable textfile was logged %d times in 3 s, want once", n)
	}
	restoreCollector()
	restoreState()
	waitLog(t, d, "the textfile is written again")
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(textfile)
		if strings.Contains(string(data), `llmlab_requests_total{code="200",outcome="ok",route="completions"} 6`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the textfile after the disk came back:\n%s", data)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
