//go:build systemtest

package units

// The operator's commands on the installed package: llmlab smoke, and
// every command docs/operations.md lists.

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

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
