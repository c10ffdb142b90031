package fleet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// rewrite returns text with each old string replaced by its new one,
// failing when one is missing: the tests run the shipped file with only
// these changes, and must notice when the file no longer has them.
func rewrite(t *testing.T, text string, pairs ...string) string {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		if !strings.Contains(text, pairs[i]) {
			t.Fatalf("the shipped configuration no longer has %q", pairs[i])
		}
		text = strings.ReplaceAll(text, pairs[i], pairs[i+1])
	}
	return text
}

func lookPath(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/sbin"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				return filepath.Join(dir, name)
			}
		}
		t.Fatalf("%s is required (apt-get install %s)", name, pkg)
	}
	return p
}

// haproxyConfig is the shipped haproxy.cfg with the paths it names on an
// installed system moved into dir, and the servers and ports given.
func haproxyConfig(t *testing.T, dir string, pairs ...string) string {
	t.Helper()
	data, err := os.ReadFile("../../../etc/balancer/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs("../../../etc/balancer/llmlab-503.http")
	base := []string{
		"/etc/haproxy/errors/llmlab-503.http", abs,
		"/run/haproxy/admin.sock", filepath.Join(dir, "admin.sock"),
		"log /dev/log local0", "log stderr format raw local0",
	}
	return rewrite(t, string(data), append(base, pairs...)...)
}

// The shipped HAProxy configuration passes HAProxy's own check (haproxy
// -c), as an operator would run it after copying it into place.
func TestHAProxyConfigChecks(t *testing.T) {
	haproxy := lookPath(t, "haproxy", "haproxy")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxyConfig(t, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(haproxy, "-c", "-f", cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "[WARNING]") {
		t.Fatalf("haproxy -c warns:\n%s", out)
	}
	// A check that cannot fail proves nothing: a broken line must fail it.
	broken := filepath.Join(dir, "broken.cfg")
	if err := os.WriteFile(broken, []byte(haproxyConfig(t, dir, "retry-on conn-failure empty-response 503", "retry-on conn-failure 429")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(haproxy, "-c", "-f", broken).CombinedOutput(); err == nil {
		t.Fatalf("haproxy -c accepted retry-on 429, which HAProxy 2.6 cannot retry:\n%s", out)
	}
	// The 503 HAProxy sends when every host is full is OpenAI-shaped and
	// says when to come back.
	page, err := os.ReadFile("../../../etc/balancer/llmlab-503.http")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"HTTP/1.0 503 ", "\r\nRetry-After: ", "\r\nContent-Type: application/json\r\n", `{"error":{"message":`} {
		if !strings.Contains(string(page), want) {
			t.Errorf("llmlab-503.http lacks %q", want)
		}
	}
}

// The shipped nginx configuration passes nginx's own check (nginx -t)
// inside a main configuration like Debian's, which includes conf.d/*.conf
// in its http block.
func TestNginxConfigChecks(t *testing.T) {
	nginx := lookPath(t, "nginx", "nginx-light")
	dir := t.TempDir()
	abs, _ := filepath.Abs("../../../etc/balancer/nginx.conf")
	main := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(main, []byte("pid "+filepath.Join(dir, "nginx.pid")+";\nerror_log stderr;\nevents {}\nhttp {\n    access_log off;\n    include "+abs+";\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nginx, "-t", "-q", "-e", "stderr", "-p", dir, "-c", main).CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	data, _ := os.ReadFile(abs)
	for _, want := range []string{"proxy_next_upstream error timeout http_429 http_503 non_idempotent;", "max_fails=0", "proxy_buffering off;"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("nginx.conf lacks %q", want)
		}
	}
}
