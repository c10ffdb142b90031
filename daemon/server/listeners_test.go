package server

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/config"
)

// The no-keys guard reasons about the real exposure: a loopback listener
// behind trusted proxies is as public as the proxy makes it, so without
// keys it needs gateway.allow_public_without_keys, as a listener beyond
// loopback does, and the accepted risk is logged.
func TestCheckPublicBehindProxy(t *testing.T) {
	keysPath := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keysPath, []byte("alice sk-0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := auth.Load(keysPath)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	nginx := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	tests := []struct {
		name    string
		api     net.Listener
		trusted []netip.Prefix
		allow   bool
		keys    *auth.Keys
		refused string // "": accepted
		warned  string // "": nothing logged
	}{
		{"loopback, no proxy, no keys", l, nil, false, nil, "", ""},
		{"loopback behind a proxy, no keys", l, nginx, false, nil, "behind a reverse proxy (gateway.trusted_proxies = [127.0.0.1/32]), as public as the proxy makes it, without API keys: set auth.keys_file, or gateway.allow_public_without_keys = true", ""},
		{"loopback behind a proxy, no keys, risk accepted", l, nginx, true, nil, "", "api behind a reverse proxy without api keys"},
		{"loopback behind a proxy, keys", l, nginx, false, keys, "", ""},
		{"beyond loopback behind a proxy, no keys", publicListener{l}, nginx, false, nil, "beyond loopback, without API keys", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Gateway.TrustedProxies, cfg.Gateway.AllowPublicWithoutKeys = tt.trusted, tt.allow
			var logs bytes.Buffer
			err := checkPublic([]net.Listener{tt.api}, cfg, tt.keys, slog.New(slog.NewTextHandler(&logs, nil)))
			switch {
			case tt.refused == "" && err != nil:
				t.Errorf("checkPublic = %v, want accepted", err)
			case tt.refused != "" && (err == nil || !strings.Contains(err.Error(), tt.refused)):
				t.Errorf("checkPublic = %v, want a refusal saying %q", err, tt.refused)
			}
			if got := logs.String(); (tt.warned == "") != (got == "") || !strings.Contains(got, tt.warned) {
				t.Errorf("logged %q, want %q", got, tt.warned)
			}
		})
	}
}
