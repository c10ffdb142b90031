//go:build systemtest

package units

// The package's life under a real systemd: install, upgrade, remove and
// purge.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

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
	// It is installed as uv installs vLLM: a virtual environment whose
	// console script names the environment's interpreter, and whose vLLM
	// source knows --max-num-queued-reqs, so that llmlab-engine passes it.
	c.write("/opt/vllm/bin/vllm", strings.Replace(standinVLLM, "#!/bin/sh", "#!/opt/vllm/bin/python3", 1))
	c.must("chmod", "755", "/opt/vllm/bin/vllm")
	c.must("ln", "-s", "/bin/sh", "/opt/vllm/bin/python3")
	c.write("/opt/vllm/lib/python3.12/site-packages/vllm/engine/arg_utils.py", "    max_num_queued_reqs: int | None = None\n")
	c.write("/etc/systemd/system/llmlab-vllm.service.d/test.conf", fmt.Sprintf(
		"[Service]\nEnvironment=LLMLAB_VLLM=/opt/vllm/bin/vllm LLMLAB_PORT=%d\n", enginePort))
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
		!strings.Contains(args, "serve Qwen/Qwen2.5-0.5B-Instruct") || !strings.Contains(args, "--max-num-seqs 16") || strings.Contains(args, "--max-model-len") ||
		!strings.Contains(args, "--max-num-queued-reqs 512") {
		t.Fatalf("llmlab-engine ran vLLM with %q, want serve MODEL, the max_new_tokens cap from limits.max_tokens, engine.max_num_seqs, "+
			"the engine's queue bound of twice queue.max_inflight (256) and no --max-model-len (engine.max_model_len is 0)", args)
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
	c.must("rm", "-r", "/etc/systemd/system/llmlab.socket.d", "/etc/systemd/system/llmlab-vllm.service.d", "/opt/vllm")
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
