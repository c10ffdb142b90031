package gateway

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/llmlab/llmlab/daemon/ratelimit"
	"github.com/llmlab/llmlab/internal/fakeengine"
)

func prefixes(t *testing.T, list ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, s := range list {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestClientAddr(t *testing.T) {
	nginx := prefixes(t, "127.0.0.1/32", "::1/128")
	twoHops := prefixes(t, "127.0.0.1/32", "::1/128", "10.0.0.0/8", "fd00::/8")
	tests := []struct {
		name      string
		peer      string
		xff       []string // header lines, as received
		trusted   []netip.Prefix
		want      string
		forwarded bool
	}{
		{"no proxies trusted: the peer", "192.0.2.1:4000", []string{"198.51.100.7"}, nil, "192.0.2.1", false},
		{"spoofed header from an untrusted peer is ignored", "192.0.2.1:4000", []string{"127.0.0.1, 10.0.0.1"}, nginx, "192.0.2.1", false},
		{"trusted peer without the header: the peer", "127.0.0.1:4000", nil, nginx, "127.0.0.1", false},
		{"nginx appends the client", "127.0.0.1:4000", []string{"198.51.100.7"}, nginx, "198.51.100.7", true},
		{"what the client wrote left of it is not believed", "127.0.0.1:4000", []string{"203.0.113.9, 198.51.100.7"}, nginx, "198.51.100.7", true},
		{"a chain through two trusted proxies", "127.0.0.1:4000", []string{"203.0.113.9, 198.51.100.7, 10.1.2.3"}, twoHops, "198.51.100.7", true},
		{"the chain over several header lines", "127.0.0.1:4000", []string{"203.0.113.9", "198.51.100.7", "10.1.2.3"}, twoHops, "198.51.100.7", true},
		{"a hop not trusted stops the walk", "127.0.0.1:4000", []string{"198.51.100.7, 192.0.2.50, 10.1.2.3"}, twoHops, "192.0.2.50", true},
		{"every hop trusted: the leftmost", "127.0.0.1:4000", []string{"10.9.9.9, 10.1.2.3"}, twoHops, "10.9.9.9", true},
		{"garbage ends the walk at the trusted hop right of it", "127.0.0.1:4000", []string{"unknown, 10.1.2.3"}, twoHops, "10.1.2.3", true},
		{"empty entries are skipped", "127.0.0.1:4000", []string{"198.51.100.7, ,", ""}, nginx, "198.51.100.7", true},
		{"entries with ports", "127.0.0.1:4000", []string{"198.51.100.7:5555"}, nginx, "198.51.100.7", true},
		{"IPv6 peer and client", "[::1]:4000", []string{"2001:db8::7"}, nginx, "2001:db8::7", true},
		{"IPv6 chain through a trusted IPv6 prefix", "[::1]:4000", []string{"2001:db8::bad, 2001:db8::7, fd00::2"}, twoHops, "2001:db8::7", true},
		{"IPv6 client with a port in brackets", "[::1]:4000", []string{"[2001:db8::7]:443"}, nginx, "2001:db8::7", true},
		{"spoofed IPv6 header from an untrusted IPv6 peer", "[2001:db8::66]:4000", []string{"::1"}, nginx, "2001:db8::66", false},
		{"IPv4 peer on a dual-stack socket", "[::ffff:127.0.0.1]:4000", []string{"198.51.100.7"}, nginx, "198.51.100.7", true},
		{"IPv4 in IPv6 form in the header", "127.0.0.1:4000", []string{"::ffff:198.51.100.7"}, nginx, "198.51.100.7", true},
		{"a zoned peer", "[fe80::1%eth0]:4000", nil, nil, "fe80::1", false},
		{"a peer that is not IP", "@", []string{"198.51.100.7"}, nginx, "@", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/v1/completions", nil)
			r.RemoteAddr = tt.peer
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			got, fwd := clientAddr(r, tt.trusted)
			if got != tt.want || fwd != tt.forwarded {
				t.Errorf("clientAddr(%s, X-Forwarded-For %q) = %q, %v; want %q, %v", tt.peer, tt.xff, got, fwd, tt.want, tt.forwarded)
			}
		})
	}
}

func FuzzClientAddr(f *testing.F) {
	f.Add("203.0.113.9, 198.51.100.7, 10.1.2.3")
	f.Add("[2001:db8::7]:443,,unknown")
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	f.Fuzz(func(t *testing.T, xff string) {
		r := httptest.NewRequest("POST", "/", nil)
		r.RemoteAddr = "127.0.0.1:1"
		r.Header.Set("X-Forwarded-For", xff)
		got, _ := clientAddr(r, trusted)
		if _, err := netip.ParseAddr(got); err != nil {
			t.Fatalf("clientAddr(X-Forwarded-For %q) = %q, not an address", xff, got)
		}
	})
}

// Behind a trusted proxy, the clients the proxy names get a rate-limit
// bucket each, the access log names them, and the engine is told the
// client and the proxy; the same header from an untrusted peer changes
// nothing.
func TestTrustedProxyClients(t *testing.T) {
	var mu sync.Mutex
	var engineXFF []string
	eng := &fakeengine.Engine{}
	engine := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		engineXFF = append(engineXFF, r.Header.Get("X-Forwarded-For"))
		mu.Unlock()
		eng.ServeHTTP(w, r)
	})
	for _, trusted := range []bool{true, false} {
		t.Run(map[bool]string{true: "trusted", false: "not trusted"}[trusted], func(t *testing.T) {
			engineXFF = nil
			cfg := testConfig()
			cfg.RateLimit = ratelimit.Config{Rate: 0.01, Burst: 1}
			if trusted {
				cfg.TrustedProxies = prefixes(t, "127.0.0.1/32", "::1/128")
			}
			f := newFixture(t, cfg, nil, engine)
			var logs bytes.Buffer
			f.gw.log = slog.New(slog.NewTextHandler(&logs, nil))
			statuses := map[string]int{}
			for _, client := range []string{"198.51.100.7", "203.0.113.9"} {
				resp := f.post(t, "/v1/completions", `{"prompt":"x"}`, "X-Forwarded-For", "10.6.6.6, "+client)
				resp.Body.Close()
				statuses[client] = resp.StatusCode
			}
			if trusted {
				if statuses["198.51.100.7"] != 200 || statuses["203.0.113.9"] != 200 {
					t.Errorf("two clients behind a trusted proxy: %v, want 200 each (a bucket each)", statuses)
				}
				for _, c := range []string{"198.51.100.7", "203.0.113.9"} {
					if !strings.Contains(logs.String(), "remote="+c) {
						t.Errorf("the access log does not name the client %s:\n%s", c, logs.String())
					}
				}
				if len(engineXFF) != 2 || engineXFF[0] != "198.51.100.7, 127.0.0.1" {
					t.Errorf("the engine was told X-Forwarded-For %q, want the client then the proxy", engineXFF)
				}
				resp := f.post(t, "/v1/completions", `{"prompt":"x"}`, "X-Forwarded-For", "198.51.100.7")
				resp.Body.Close()
				if resp.StatusCode != 429 {
					t.Errorf("the first client's second request: %d, want 429 (its bucket is spent)", resp.StatusCode)
				}
				return
			}
			if statuses["198.51.100.7"] != 200 || statuses["203.0.113.9"] != 429 {
				t.Errorf("headers from a peer not trusted: %v, want one shared bucket (200 then 429)", statuses)
			}
			if strings.Contains(logs.String(), "remote=198.51.100.7") || !strings.Contains(logs.String(), "remote=127.0.0.1") {
				t.Errorf("the access log believed a header from a peer not trusted:\n%s", logs.String())
			}
			if len(engineXFF) != 1 || engineXFF[0] != "127.0.0.1" {
				t.Errorf("the engine was told X-Forwarded-For %q, want the peer alone", engineXFF)
			}
		})
	}
}
