// Package freeport owns how llmlab's measuring commands (demo, tune,
// tune-engine, tune-admission, overhead) find loopback ports for the
// servers they start. In order of preference:
//
//  1. A server in this process is handed a listener (Listen): its port is
//     never free for anyone else to take.
//  2. A child that binds port 0 itself and says which port it got (llmlabd
//     logs it; llmlab fake-engine and reverse-proxy print it) is started
//     on Any and its address read back from its output (internal/childproc,
//     cmd/llmlab/daemonproc).
//  3. A child that can only be told a number gets Addr, whose doc comment
//     says why the race it leaves is acceptable there.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// Any is the address a server given it binds a free loopback port at:
// port 0, which the kernel picks when the server binds it.
const Any = "127.0.0.1:0"

// Listen is a listener on a free loopback port, for a server in this
// process.
func Listen() (net.Listener, error) {
	return net.Listen("tcp", Any)
}

// Addr is a free loopback address for a child that can only be told a
// number: nginx (its configuration names the port), and the simulator
// llmlabd starts as its engine (engine.url must name the port before
// llmlabd starts it, and llmlabd starts it again on that port at every
// reload that changes the engine's flags, so no listener could be handed
// over even once).
//
// The port is bound to see that it is free, then closed, and the child
// binds it later: someone else may bind it in between. That race is
// acceptable here because the port is taken below the kernel's ephemeral
// range (net.ipv4.ip_local_port_range), where neither a bind to port 0
// (llmlabd's own listeners, the other servers these commands start) nor
// the source port of an outgoing connection ever lands; only a program
// that binds that very port by number could take it, and then the child
// fails loudly ("address already in use"), never measuring the wrong
// server. The picker of cmd/llmlabd's integration tests learned this from
// a port handed back to an agent listener on port 0 before the child bound
// it.
func Addr() (string, error) {
	lo := ephemeralLow()
	const from = 10000
	if lo <= from {
		// A range that starts this low leaves nothing below it: take a
		// port from the kernel, and the race with it.
		return closedAny()
	}
	for range 100 {
		port := from + rand.IntN(lo-from)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr, nil
	}
	return "", fmt.Errorf("no free loopback port between %d and %d", from, lo)
}

// ephemeralLow is the lowest port of the kernel's ephemeral range, or
// Linux's default where it cannot be read.
func ephemeralLow() int {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				return n
			}
		}
	}
	return 32768
}

func closedAny() (string, error) {
	l, err := Listen()
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
