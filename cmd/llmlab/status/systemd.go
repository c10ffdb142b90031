package status

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// Systemd reads units over the system bus. Reading a unit's properties
// never starts it.
type Systemd struct{ conn *sddbus.Conn }

// ConnectSystemd connects to the system bus.
func ConnectSystemd(ctx context.Context) (*Systemd, error) {
	c, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, err
	}
	return &Systemd{conn: c}, nil
}

// ConnectSystemdIfBooted connects to systemd over the system bus; nil
// and no error on a machine not booted with systemd.
func ConnectSystemdIfBooted(ctx context.Context) (*Systemd, error) {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return nil, nil
	}
	return ConnectSystemd(ctx)
}

// Close closes the bus connection.
func (s *Systemd) Close() { s.conn.Close() }

// Unit implements Units.
func (s *Systemd) Unit(ctx context.Context, name string) (Unit, error) {
	props, err := s.conn.GetUnitPropertiesContext(ctx, name)
	if err != nil {
		return Unit{}, err
	}
	var u Unit
	u.ActiveState, _ = props["ActiveState"].(string)
	u.SubState, _ = props["SubState"].(string)
	if load, _ := props["LoadState"].(string); load == "not-found" {
		return Unit{}, fmt.Errorf("no such unit")
	}
	if us, ok := props["StateChangeTimestamp"].(uint64); ok && us > 0 {
		u.Since = time.UnixMicro(int64(us))
	}
	kind := ""
	switch {
	case strings.HasSuffix(name, ".service"):
		kind = "Service"
	case strings.HasSuffix(name, ".socket"):
		kind = "Socket"
	}
	if kind == "" {
		return u, nil
	}
	tp, err := s.conn.GetUnitTypePropertiesContext(ctx, name, kind)
	if err != nil {
		return u, nil
	}
	u.Result, _ = tp["Result"].(string)
	if kind == "Socket" {
		// Listen is a(ss): (type, address) pairs.
		if l, ok := tp["Listen"].([][]any); ok {
			for _, pair := range l {
				if len(pair) == 2 {
					if a, ok := pair[1].(string); ok {
						u.Listen = append(u.Listen, a)
					}
				}
			}
		}
	}
	return u, nil
}
