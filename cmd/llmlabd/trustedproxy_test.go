package main_test

// Integration: llmlabd behind Debian's nginx, configured with the server
// block docs/operations.md gives ("Behind a reverse proxy").

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"github.com/llmlab/llmlab/internal/lockedbuf"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

// docBlock returns the first fenced block of language lang after heading
// in the Markdown file at path.
func docBlock(t *testing.T, path, heading, lang string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("%s has no heading %q", path, heading)
	}
	_, block, ok := strings.Cut(after, "\n```"+lang+"\n")
	if !ok {
		t.Fatalf("%s: no ```%s block under %q", path, lang, heading)
	}
	block, _, ok = strings.Cut(block, "\n```\n")
	if !ok {
		t.Fatalf("%s: the ```%s block under %q is not closed", path, lang, heading)
	}
	return block + "\n"
}

// replaceEach returns text with each old string replaced by its new one,
// failing when one is missing, so that a change to the documented block
// that the test no longer runs is noticed.
func replaceEach(t *testing.T, text string, pairs ...string) string {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		if !strings.Contains(text, pairs[i]) {
			t.Fatalf("the documented nginx block no longer has %q:\n%s", pairs[i], text)
		}
		text = strings.ReplaceAll(text, pairs[i], pairs[i+1])
	}
	return text
}

// selfSigned writes a certificate for 127.0.0.1 and its key as PEM files
// in dir, and returns their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "llmlab test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "fullchain.pem"), filepath.Join(dir, "privkey.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// startNginx runs Debian's nginx with the server block in front of api
// (llmlabd's base URL) and returns its https address.
func startNginx(t *testing.T, block, api string) (string, *x509.CertPool) {
	t.Helper()
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		t.Fatal("nginx is required (apt-get install nginx-light)")
	}
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	addr := freeAddr(t)
	server := replaceEach(t, block,
		"listen 443 ssl;", "listen "+addr+" ssl;",
		"    listen [::]:443 ssl;\n", "",
		"/etc/letsencrypt/live/llm.example.com/fullchain.pem", certFile,
		"/etc/letsencrypt/live/llm.example.com/privkey.pem", keyFile,
		"http://127.0.0.1:8080", api,
	)
	conf := fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
%[2]s}
`, dir, server)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginx, "-c", confPath, "-p", dir, "-g", "daemon off;")
	out := &lockedbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		// SIGTERM: the master stops its workers before it exits.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx.conf:\n%s\nnginx output:\n%s\nerror.log:\n%s", conf, out, errLog)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr, pool
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("nginx exited: %v\n%s", err, out)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx does not listen on %s:\n%s", addr, out)
		}
	}
}

// httpsClientFrom is a client of nginx's TLS listener that connects from
// the loopback address from (127.0.0.0/8 is all loopback on Linux), so
// that nginx sees a client of that address.
func httpsClientFrom(from string, pool *x509.CertPool) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: pool},
	}}
}

// Two clients behind Debian's nginx, running the server block
// docs/operations.md gives, get a rate-limit bucket each and are named in
// the access log when nginx is in gateway.trusted_proxies; an
// X-Forwarded-For a client sends itself does not make it another client;
// without the key (a reload takes it away) both are nginx, and share
// one bucket. Without API keys, trusting a proxy needs
// allow_public_without_keys, as a public listener does.
func TestTrustedProxyBehindNginx(t *testing.T) {
	block := docBlock(t, "../../docs/operations.md", "## Behind a reverse proxy", "nginx")

	// The documented timeout outlasts what llmlabd may leave unanswered.
	m := regexp.MustCompile(`(?m)^\s*proxy_read_timeout (\d+s);`).FindStringSubmatch(block)
	if m == nil {
		t.Fatalf("the documented block sets no proxy_read_timeout in seconds:\n%s", block)
	}
	timeout, _ := time.ParseDuration(m[1])
	def := config.Default()
	if need := def.Engine.MaxColdStartWait + def.Queue.BatchMaxWait + def.Engine.ResponseTimeout; timeout <= need {
		t.Errorf("proxy_read_timeout %s: want more than a cold start, a batch request's wait and engine.response_timeout (%s)", timeout, need)
	}
	for _, d := range []string{"proxy_buffering off;", "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;", "ssl_certificate "} {
		if !strings.Contains(block, d) {
			t.Errorf("the documented block lacks %q", d)
		}
	}

	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	cfgText := func(gateway string) string {
		return fmt.Sprintf(`[gateway]
listen = "127.0.0.1:0"
%s
[engine]
url = %q
models = ["m"]
[limits]
rate = 0.001
burst = 1
[metrics]
listen = "127.0.0.1:0"
textfile = ""
[log]
format = "text"
access_log = true
`, gateway, es.URL)
	}

	// The guard: a proxy trusted, no keys, no permission.
	refused := writeConfig(t, cfgText(`trusted_proxies = ["127.0.0.1", "::1"]`))
	out, err := exec.Command(binary, "--config", refused).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "key gateway.trusted_proxies") || !strings.Contains(string(out), "set auth.keys_file, or gateway.allow_public_without_keys = true") {
		t.Errorf("llmlabd with trusted_proxies and no keys: %v\n%s\nwant a refusal naming the keys", err, out)
	}

	path := writeConfig(t, cfgText("allow_public_without_keys = true\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]"))
	d := start(t, nil, nil, "--config", path)
	waitLog(t, d, "msg=\"api behind a reverse proxy without api keys\"")
	nginxAddr, pool := startNginx(t, block, d.api)

	alice, bob := httpsClientFrom("127.0.0.2", pool), httpsClientFrom("127.0.0.3", pool)
	ask := func(c *http.Client, spoof string) int {
		t.Helper()
		req, _ := http.NewRequest("POST", "https://"+nginxAddr+"/v1/completions", strings.NewReader(`{"model":"m","prompt":"x","max_tokens":1}`))
		req.Header.Set("Content-Type", "application/json")
		if spoof != "" {
			req.Header.Set("X-Forwarded-For", spoof)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	remotes := func() []string {
		var rs []string
		for _, m := range regexp.MustCompile(`msg=request .*remote=(\S+)`).FindAllStringSubmatch(d.logs.String(), -1) {
			rs = append(rs, m[1])
		}
		return rs
	}
	waitRequests := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(remotes()) < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		return remotes()
	}

	// Trusted: a bucket each; bob's own header naming alice is not
	// believed, and alice's second request finds her bucket spent.
	got := []int{ask(alice, ""), ask(bob, "127.0.0.2"), ask(alice, "")}
	if want := []int{200, 200, 429}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("behind trusted nginx: alice, bob (claiming to be alice), alice: %v, want %v", got, want)
	}
	if rs := waitRequests(3); fmt.Sprint(rs) != "[127.0.0.2 127.0.0.3 127.0.0.2]" {
		t.Errorf("access log remote= behind trusted nginx: %v, want [127.0.0.2 127.0.0.3 127.0.0.2]", rs)
	}

	// Not trusted: both are nginx, one bucket.
	if err := os.WriteFile(path, []byte(cfgText("allow_public_without_keys = true")), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "msg=reloaded")
	got = []int{ask(alice, ""), ask(bob, "")}
	if want := []int{200, 429}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("behind nginx not trusted: alice, bob: %v, want %v (one bucket)", got, want)
	}
	if rs := waitRequests(5); fmt.Sprint(rs[3:]) != "[127.0.0.1 127.0.0.1]" {
		t.Errorf("access log remote= behind nginx not trusted: %v, want nginx's 127.0.0.1 twice", rs[3:])
	}
}
