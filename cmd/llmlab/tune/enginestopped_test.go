package tune

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/llmlab/llmlab/cmd/llmlab/status"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/internal/freeport"
)

// fakeUnits is systemd as a map of units; a unit not in it is not
// installed.
type fakeUnits map[string]status.Unit

func (f fakeUnits) Unit(_ context.Context, name string) (status.Unit, error) {
	u, ok := f[name]
	if !ok {
		return status.Unit{}, errors.New("no such unit")
	}
	return u, nil
}

// tune-engine --config refuses to start while the packaged socket, the
// service or the engine runs, as systemd or the kernel tells, and says
// what to stop.
func TestCheckStopped(t *testing.T) {
	freeEngine, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	freeAPI, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inactive := status.Unit{ActiveState: "inactive", SubState: "dead"}
	stopped := fakeUnits{status.SocketUnit: inactive, status.ServiceUnit: inactive, "llmlab-vllm.service": inactive}
	with := func(name string, u status.Unit) fakeUnits {
		f := fakeUnits{}
		for k, v := range stopped {
			f[k] = v
		}
		f[name] = u
		return f
	}
	tests := []struct {
		name   string
		engine string // engine.url's host:port
		api    string // gateway.listen
		units  status.Units
		want   string // "": allowed
	}{
		{"all stopped", freeEngine, freeAPI, stopped, ""},
		{"no systemd, addresses free", freeEngine, freeAPI, nil, ""},
		{"units not installed", freeEngine, freeAPI, fakeUnits{}, ""},
		{"the socket listens", freeEngine, freeAPI, with(status.SocketUnit, status.Unit{ActiveState: "active", SubState: "listening", Listen: []string{busy.Addr().String()}}), "llmlab.socket is active (listening)"},
		{"the service runs", freeEngine, freeAPI, with(status.ServiceUnit, status.Unit{ActiveState: "active", SubState: "running"}), "llmlab.service is active (running)"},
		{"the engine starts", freeEngine, freeAPI, with("llmlab-vllm.service", status.Unit{ActiveState: "activating", SubState: "start"}), "llmlab-vllm.service is activating (start)"},
		{"an engine on engine.url, no systemd", busy.Addr().String(), freeAPI, nil, "the engine's address " + busy.Addr().String() + " (engine.url) is in use"},
		{"something on gateway.listen, no systemd", freeEngine, busy.Addr().String(), nil, "the API's address " + busy.Addr().String() + " is in use"},
		{"the socket's own address in use, unit inactive", freeEngine, freeAPI, with(status.SocketUnit, status.Unit{ActiveState: "inactive", Listen: []string{busy.Addr().String()}}), "the API's address " + busy.Addr().String() + " is in use"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse("llmlab.toml", []byte("[gateway]\nlisten = \""+tt.api+"\"\n[engine]\nurl = \"http://"+tt.engine+"\"\nunit = \"llmlab-vllm.service\"\n"))
			if err != nil {
				t.Fatal(err)
			}
			err = checkStopped(context.Background(), cfg, tt.units)
			if tt.want == "" {
				if err != nil {
					t.Errorf("checkStopped = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "systemctl stop llmlab.socket llmlab.service llmlab-vllm.service") {
				t.Errorf("checkStopped = %v, want a refusal saying %q and the command that stops them", err, tt.want)
			}
		})
	}
}
