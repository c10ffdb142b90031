package supervisor

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// privateBus starts a dbus-daemon of the test's own and returns its address.
func privateBus(t *testing.T) string {
	t.Helper()
	addr, _ := busAt(t, filepath.Join(t.TempDir(), "bus"))
	return addr
}

// busAt starts a dbus-daemon listening on the socket path sock and returns
// its address and a function that kills it.
func busAt(t *testing.T, sock string) (string, func()) {
	t.Helper()
	os.Remove(sock)
	cmd := exec.Command("dbus-daemon", "--session", "--nofork", "--print-address", "--address=unix:path="+sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dbus-daemon (apt-get install dbus-daemon): %v", err)
	}
	kill := sync.OnceFunc(func() { cmd.Process.Kill(); cmd.Wait() })
	t.Cleanup(kill)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the bus address: %v", err)
	}
	return strings.TrimSpace(line), kill
}

func dial(addr string) (*dbus.Conn, error) {
	c, err := dbus.Dial(addr)
	if err != nil {
		return nil, err
	}
	if err := c.Auth(nil); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Hello(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// fakeSystemd is org.freedesktop.systemd1 as the supervisor sees it:
// StartUnit and StopUnit return a job path and announce the job's end with
// JobRemoved, the unit's ActiveState changes through PropertiesChanged and
// can be read with Properties.Get.
type fakeSystemd struct {
	conn  *dbus.Conn
	mu    sync.Mutex
	jobs  uint32
	fail  bool
	log   []string
	state string // of llmlab-vllm.service
}

const testUnit = "llmlab-vllm.service"

func unitPath(unit string) dbus.ObjectPath {
	return dbus.ObjectPath("/org/freedesktop/systemd1/unit/" + sddbus.PathBusEscape(unit))
}

func (f *fakeSystemd) setState(unit, state string) {
	if unit == testUnit {
		f.mu.Lock()
		f.state = state
		f.mu.Unlock()
	}
	f.conn.Emit(unitPath(unit), "org.freedesktop.DBus.Properties.PropertiesChanged", "org.freedesktop.systemd1.Unit",
		map[string]dbus.Variant{"ActiveState": dbus.MakeVariant(state)}, []string{})
}

// unitProps answers org.freedesktop.DBus.Properties.Get on the test unit.
type unitProps struct{ f *fakeSystemd }

func (u unitProps) Get(iface, prop string) (dbus.Variant, *dbus.Error) {
	u.f.mu.Lock()
	defer u.f.mu.Unlock()
	switch {
	case iface == "org.freedesktop.systemd1.Unit" && prop == "ActiveState":
		return dbus.MakeVariant(u.f.state), nil
	case iface == "org.freedesktop.systemd1.Service" && prop == "Result":
		return dbus.MakeVariant("success"), nil
	}
	return dbus.Variant{}, dbus.MakeFailedError(fmt.Errorf("no property %s.%s", iface, prop))
}

func (f *fakeSystemd) job(verb, unit string, after func() string) (dbus.ObjectPath, *dbus.Error) {
	f.mu.Lock()
	f.jobs++
	id := f.jobs
	f.log = append(f.log, verb+" "+unit)
	f.mu.Unlock()
	job := dbus.ObjectPath(fmt.Sprintf("/org/freedesktop/systemd1/job/%d", id))
	go func() {
		time.Sleep(20 * time.Millisecond)
		result := after()
		f.conn.Emit("/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager.JobRemoved", id, job, unit, result)
	}()
	return job, nil
}

func (f *fakeSystemd) StartUnit(unit, mode string) (dbus.ObjectPath, *dbus.Error) {
	return f.job("start", unit, func() string {
		f.mu.Lock()
		fail := f.fail
		f.mu.Unlock()
		if fail {
			f.setState(unit, "failed")
			return "failed"
		}
		f.setState(unit, "active")
		return "done"
	})
}

func (f *fakeSystemd) StopUnit(unit, mode string) (dbus.ObjectPath, *dbus.Error) {
	return f.job("stop", unit, func() string { f.setState(unit, "inactive"); return "done" })
}

func (f *fakeSystemd) Subscribe() *dbus.Error { return nil }

func newFakeSystemd(t *testing.T, addr string) *fakeSystemd {
	t.Helper()
	c, err := dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f := &fakeSystemd{conn: c, state: "inactive"}
	if err := c.Export(f, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
		t.Fatal(err)
	}
	if err := c.Export(unitProps{f}, unitPath(testUnit), "org.freedesktop.DBus.Properties"); err != nil {
		t.Fatal(err)
	}
	if reply, err := c.RequestName("org.freedesktop.systemd1", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v %v", reply, err)
	}
	return f
}

func systemdBackend(addr string) *Systemd {
	return &Systemd{Unit: "llmlab-vllm.service", Connect: func(context.Context) (*sddbus.Conn, error) {
		return sddbus.NewConnection(func() (*dbus.Conn, error) { return dial(addr) })
	}}
}

func TestSystemdStartStop(t *testing.T) {
	addr := privateBus(t)
	f := newFakeSystemd(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := systemdBackend(addr).Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
		t.Fatal("Done closed while the unit is active")
	case <-time.After(100 * time.Millisecond):
	}
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	f.mu.Lock()
	defer f.mu.Unlock()
	if got := strings.Join(f.log, ", "); got != "start llmlab-vllm.service, stop llmlab-vllm.service" {
		t.Fatalf("systemd saw %q", got)
	}
}

// A unit that dies while serving is seen through PropertiesChanged.
func TestSystemdUnitDies(t *testing.T) {
	addr := privateBus(t)
	f := newFakeSystemd(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := systemdBackend(addr).Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.setState("other.service", "failed") // another unit's change is ignored
	f.setState("llmlab-vllm.service", "failed")
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatal("the unit's failure was not noticed")
	}
}

func TestSystemdStartJobFails(t *testing.T) {
	addr := privateBus(t)
	f := newFakeSystemd(t, addr)
	f.mu.Lock()
	f.fail = true
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := systemdBackend(addr).Start(ctx)
	if err == nil || !strings.Contains(err.Error(), `"failed"`) || !strings.Contains(err.Error(), "llmlab-vllm.service") {
		t.Fatalf("Start = %v, want an error naming the unit and the job result", err)
	}
}

// startOnOwnBus starts the test unit through a fake systemd on a bus of
// the test's own, checking the connection every 20 ms; it returns the
// bus's socket, address and killer, and the running unit.
func startOnOwnBus(t *testing.T, ctx context.Context) (sock, addr string, kill func(), p Process) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "bus")
	addr, kill = busAt(t, sock)
	newFakeSystemd(t, addr)
	be := systemdBackend(addr)
	be.CheckEvery = 20 * time.Millisecond
	p, err := be.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return sock, addr, kill, p
}

// restartBus kills the bus at sock, leaves it down for a while (so that the
// first reconnection attempts fail) and starts a new one there with a fresh
// fake systemd whose unit is in state.
func restartBus(t *testing.T, sock string, kill func(), state string) (*fakeSystemd, func()) {
	t.Helper()
	kill()
	time.Sleep(300 * time.Millisecond)
	addr, kill2 := busAt(t, sock)
	f := newFakeSystemd(t, addr)
	f.mu.Lock()
	f.state = state
	f.mu.Unlock()
	return f, kill2
}

// A bus connection that drops while the unit runs is re-established: the
// unit's later death is still seen, and a stop goes through the new bus.
func TestSystemdReconnects(t *testing.T) {
	for _, tc := range []struct {
		name string
		// after the restart: the unit dies (true) or is stopped (false)
		dies bool
	}{{"unit dies after the bus restarts", true}, {"stop after the bus restarts", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			sock, addr, kill, p := startOnOwnBus(t, ctx)
			f2, _ := restartBus(t, sock, kill, "active")
			// Wait until the supervisor is on the new bus: it subscribes there.
			waitFor(t, ctx, func() bool { return busHasSubscriber(t, addr) })
			select {
			case <-p.Done():
				t.Fatal("Done closed although the unit is still active")
			case <-time.After(100 * time.Millisecond):
			}
			if tc.dies {
				f2.setState(testUnit, "failed")
				select {
				case <-p.Done():
				case <-ctx.Done():
					t.Fatal("the unit's failure after the reconnect was not noticed")
				}
				return
			}
			if err := p.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			f2.mu.Lock()
			defer f2.mu.Unlock()
			if got := strings.Join(f2.log, ", "); got != "stop "+testUnit {
				t.Fatalf("the new bus's systemd saw %q, want the stop", got)
			}
		})
	}
}

// A unit that died while the bus was down is noticed once it is back.
func TestSystemdUnitDiedWhileBusDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sock, _, kill, p := startOnOwnBus(t, ctx)
	restartBus(t, sock, kill, "failed")
	select {
	case <-p.Done():
	case <-ctx.Done():
		t.Fatal("a unit that failed while the bus was down was not noticed")
	}
}

func waitFor(t *testing.T, ctx context.Context, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("timed out")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// busHasSubscriber reports whether a client other than the fake systemd
// (and this probe) is connected to the bus.
func busHasSubscriber(t *testing.T, addr string) bool {
	c, err := dial(addr)
	if err != nil {
		return false
	}
	defer c.Close()
	var names []string
	if err := c.BusObject().Call("org.freedesktop.DBus.ListNames", 0).Store(&names); err != nil {
		return false
	}
	unique := 0
	for _, n := range names {
		if strings.HasPrefix(n, ":") {
			unique++
		}
	}
	// The fake systemd, this probe, and the supervisor's two connections.
	return unique >= 4
}
