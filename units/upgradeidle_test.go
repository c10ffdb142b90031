//go:build systemtest

package units

import (
	"strings"
	"testing"
	"time"
)

// An upgrade while llmlabd has exited on idle (the socket listening,
// llmlab.service inactive), as docs/install.md's "upgrade" row says:
// postinst's restart leaves the service stopped (deb-systemd-invoke does
// not start a unit that is not running and is enabled only through
// Also=, and says so), the socket keeps listening, and nothing else
// starts.
func TestUpgradeWhileIdle(t *testing.T) {
	c, _, next := bootWithPackage(t)
	c.waitActive("llmlab.socket", "active", 10*time.Second)
	if s := c.active("llmlab.service"); s == "active" {
		t.Fatalf("llmlab.service runs before any request")
	}
	socketSince := c.must("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value", "llmlab.socket")
	out := c.must("sh", "-c", "dpkg -i /mnt/dist/"+next+" 2>&1")
	const said = "llmlab.service is a disabled or a static unit not running, not starting it."
	if !strings.Contains(out, said) {
		t.Errorf("dpkg -i did not say %q, which docs/install.md quotes:\n%s", said, out)
	}
	for unit, want := range map[string]string{"llmlab.service": "inactive", "llmlab-vllm.service": "inactive", "llmlab.socket": "active"} {
		if got := c.active(unit); got != want {
			t.Errorf("after an upgrade while idle, %s is %s, want %s", unit, got, want)
		}
	}
	if got := c.must("systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value", "llmlab.socket"); got != socketSince {
		t.Errorf("llmlab.socket was restarted by the upgrade")
	}
}
