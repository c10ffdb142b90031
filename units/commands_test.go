//go:build systemtest

package units

// llmlab smoke on the installed package. Every command that
// docs/operations.md lists runs in TestOperatorPath (operatorpath_test.go).

import (
	"fmt"
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
