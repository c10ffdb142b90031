// Package sd owns llmlabd's side of the systemd protocols: listeners passed
// by socket activation, sd_notify state (READY, STATUS, RELOADING,
// STOPPING, WATCHDOG), and whether stderr goes to the journal.
//
// Every function is a no-op (or reports "not under systemd") when the
// daemon runs outside systemd, so the same binary runs on a laptop.
package sd

import (
	"fmt"
	"net"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// Listeners returns the sockets systemd passed under fdName, or nil when
// none were passed. The activation variables are cleared either way, so
// child processes do not inherit them.
func Listeners(fdName string) ([]net.Listener, error) {
	byName, err := activation.ListenersWithNames()
	if err != nil {
		return nil, fmt.Errorf("reading socket activation: %w", err)
	}
	ls := byName[fdName]
	for name, others := range byName {
		if name != fdName {
			for _, l := range others {
				if l != nil {
					_ = l.Close()
				}
			}
		}
	}
	var out []net.Listener
	for _, l := range ls {
		if l != nil {
			out = append(out, l)
		}
	}
	return out, nil
}

// Notifier sends sd_notify messages; it remembers the last STATUS= so
// repeated identical lines are not sent.
type Notifier struct {
	lastStatus string
}

// Notify sends state to systemd. It reports whether a notify socket exists.
func (n *Notifier) Notify(state string) bool {
	ok, _ := daemon.SdNotify(false, state)
	return ok
}

// Ready reports that the daemon serves.
func (n *Notifier) Ready(status string) {
	n.lastStatus = status
	n.Notify(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// Status updates the STATUS= line when it changed.
func (n *Notifier) Status(status string) {
	if status == n.lastStatus {
		return
	}
	n.lastStatus = status
	n.Notify("STATUS=" + status)
}

// Reloading reports the start of a configuration reload.
func (n *Notifier) Reloading() {
	n.Notify(daemon.SdNotifyReloading + "\n" + daemon.SdNotifyMonotonicUsec())
}

// Stopping reports the start of shutdown.
func (n *Notifier) Stopping(status string) {
	n.lastStatus = status
	n.Notify(daemon.SdNotifyStopping + "\nSTATUS=" + status)
}

// Watchdog pings the watchdog.
func (n *Notifier) Watchdog() { n.Notify(daemon.SdNotifyWatchdog) }

// WatchdogInterval returns how often to ping the watchdog (half its
// timeout), or 0 when no watchdog is set for this process.
func WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}
