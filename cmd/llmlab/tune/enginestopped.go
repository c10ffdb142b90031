// Before a sweep of the operator's engine: nothing else runs it.

package tune

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/llmlab/llmlab/cmd/llmlab/status"
	"github.com/llmlab/llmlab/daemon/config"
)

// stopCommand is what the operator runs before tune-engine --config: the
// packaged socket and service, and the engine's unit.
func stopCommand(cfg *config.Config) string {
	cmd := "systemctl stop " + status.SocketUnit + " " + status.ServiceUnit
	if cfg.Engine.Unit != "" {
		cmd += " " + cfg.Engine.Unit
	}
	return cmd
}

// checkStopped refuses a sweep of the engine cfg manages while anything
// else may run it. The sweep runs an llmlabd of its own, which starts the
// engine with each point's knobs: llmlab.service would start, stop and
// serve the same engine, llmlab.socket would start llmlab.service at the
// next connection, and an engine already running would be measured with
// knobs it was not started with. It asks, and names every finding with
// the command that stops them (stopCommand):
//
//  1. systemd (units; nil where it did not boot the machine) whether
//     llmlab.socket, llmlab.service or the engine's unit is active, or
//     on its way to be;
//  2. the kernel whether the engine's address (engine.url) and the API's
//     (llmlab.socket's, as systemd reports it, else gateway.listen) are
//     free, by binding them: a connection to the socket would start
//     llmlabd. Only "address in use" counts (an engine on another host
//     cannot be bound here, and is not this check's business).
func checkStopped(ctx context.Context, cfg *config.Config, units status.Units) error {
	var found []string
	apiAddrs := []string{cfg.Gateway.Listen}
	socketActive := false
	if units != nil {
		names := []string{status.SocketUnit, status.ServiceUnit}
		if cfg.Engine.Unit != "" {
			names = append(names, cfg.Engine.Unit)
		}
		for _, name := range names {
			u, err := units.Unit(ctx, name)
			if err != nil {
				continue // not installed
			}
			if name == status.SocketUnit && len(u.Listen) > 0 {
				apiAddrs = u.Listen
			}
			switch u.ActiveState {
			case "active", "activating", "reloading":
				found = append(found, fmt.Sprintf("%s is %s (%s)", name, u.ActiveState, u.SubState))
				socketActive = socketActive || name == status.SocketUnit
			}
		}
	}
	if inUse(cfg.Engine.URL.Host, "80") {
		found = append(found, fmt.Sprintf("the engine's address %s (engine.url) is in use: an engine runs already", cfg.Engine.URL.Host))
	}
	for _, a := range apiAddrs {
		if !socketActive && a != "" && inUse(a, "") {
			found = append(found, fmt.Sprintf("the API's address %s is in use: llmlab.socket or an llmlabd listens there", a))
		}
	}
	if len(found) == 0 {
		return nil
	}
	return fmt.Errorf("%s; tune-engine runs its own llmlabd, which starts the engine with each point's settings, and nothing else may serve or restart that engine meanwhile: stop them first with\n\t%s\nand start the socket again afterwards (systemctl start %s)",
		strings.Join(found, "; "), stopCommand(cfg), status.SocketUnit)
}

// inUse reports whether binding addr (host:port, or host alone with
// defaultPort) fails because the address is in use.
func inUse(addr, defaultPort string) bool {
	if _, _, err := net.SplitHostPort(addr); err != nil && defaultPort != "" {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), defaultPort)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return errors.Is(err, syscall.EADDRINUSE)
	}
	l.Close()
	return false
}

// engineStopped is checkStopped for the configuration at path, asking
// systemd where it booted the machine.
func engineStopped(ctx context.Context, path string) error {
	cfg, err := config.Load(path, true)
	if err != nil {
		return err
	}
	var units status.Units
	sd, err := status.ConnectSystemdIfBooted(ctx)
	switch {
	case err != nil:
		return fmt.Errorf("cannot ask systemd whether %s, %s and the engine are stopped (%v): stop them first with\n\t%s", status.SocketUnit, status.ServiceUnit, err, stopCommand(cfg))
	case sd != nil:
		defer sd.Close()
		units = sd
	}
	return checkStopped(ctx, cfg, units)
}
