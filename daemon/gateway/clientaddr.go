package gateway

// The client's address: the peer's, or behind trusted reverse proxies
// (gateway.trusted_proxies) the one their X-Forwarded-For names.

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// clientAddr returns the address of the client that sent r, and whether
// it was read from X-Forwarded-For. Only a peer among trusted is believed,
// and only as far as the proxies it names are trusted too:
//
//  1. The peer (r.RemoteAddr) is the client unless it is a trusted proxy
//     and the request carries X-Forwarded-For.
//  2. Walking the header's addresses from the right (each proxy appends
//     its own peer's), the first that is not a trusted proxy is the
//     client: what lies left of it was written by that client or by
//     proxies it reached first, and can be made up.
//  3. An entry that is not an address ends the walk at the trusted hop
//     right of it, which is then the client (a proxy writes addresses; the
//     client wrote this one).
//  4. When every address is trusted, the leftmost is the client (a
//     request made from a proxy's own host).
//
// Addresses are written without port or zone, IPv4 in IPv6 form as IPv4.
// A peer address that is not IP (a Unix socket) is returned as it is.
func clientAddr(r *http.Request, trusted []netip.Prefix) (string, bool) {
	peer, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			return r.RemoteAddr, false
		}
		return host, false
	}
	client := peer.Addr().WithZone("").Unmap()
	values := r.Header.Values("X-Forwarded-For")
	if len(values) == 0 || !isTrusted(client, trusted) {
		return client.String(), false
	}
	for i := len(values) - 1; i >= 0; i-- {
		rest := values[i]
		for rest != "" {
			var entry string
			if j := strings.LastIndexByte(rest, ','); j >= 0 {
				rest, entry = rest[:j], rest[j+1:]
			} else {
				rest, entry = "", rest
			}
			entry = strings.TrimSpace(entry)
			if entry == "" {
				continue
			}
			a, ok := parseForwarded(entry)
			if !ok {
				return client.String(), true
			}
			client = a
			if !isTrusted(a, trusted) {
				return client.String(), true
			}
		}
	}
	return client.String(), true
}

// parseForwarded reads one X-Forwarded-For entry: an address, or (as some
// proxies write it) an address with a port, an IPv6 one in brackets.
func parseForwarded(s string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}, false
		}
		a = ap.Addr()
	}
	return a.WithZone("").Unmap(), true
}

func isTrusted(a netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
