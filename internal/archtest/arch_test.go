// Package archtest holds the house rules that the compiler does not
// check: which packages may import what (docs/architecture.md).
package archtest

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/llmlab/llmlab/"

// imports lists every package of the module, the test-only ones aside,
// with the packages it imports directly.
func imports(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-tags", "realengine,fleettest,systemtest", "-f", "{{.ImportPath}} {{join .Imports \" \"}}", "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		m[strings.TrimPrefix(f[0], module)] = f[1:]
	}
	if len(m) < 20 {
		t.Fatalf("go list found %d packages, want the module's", len(m))
	}
	return m
}

// The queue, the engine model and the rate limiter decide; the gateway
// speaks HTTP for them (a refusal's status and error type are its own).
// The daemon and the shared internal packages never import a command.
func TestImportRules(t *testing.T) {
	m := imports(t)
	for _, p := range []string{"daemon/queue", "daemon/enginemodel", "daemon/ratelimit"} {
		if _, ok := m[p]; !ok {
			t.Fatalf("package %s not found", p)
		}
		for _, imp := range m[p] {
			if imp == "net/http" || strings.HasPrefix(imp, "net/http/") {
				t.Errorf("%s imports %s: HTTP belongs to the gateway", p, imp)
			}
		}
	}
	for p, imps := range m {
		if !strings.HasPrefix(p, "daemon/") && !strings.HasPrefix(p, "internal/") {
			continue
		}
		for _, imp := range imps {
			if strings.HasPrefix(imp, module+"cmd/") {
				t.Errorf("%s imports the command package %s", p, imp)
			}
		}
	}
}
