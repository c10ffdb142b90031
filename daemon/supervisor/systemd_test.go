package supervisor

import (
	"bufio"
	"context"
	"fmt"
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
	sock := filepath.Join(t.TempDir(), "bus")
	cmd := exec.Command("dbus-daemon", "--session", "--nofork", "--print-address", "--address=unix:path="+sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dbus-daemon (apt-get install dbus-daemon): %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the bus address: %v", err)
	}
	return strings.TrimSpace(line)
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
// JobRemoved, and the unit's ActiveState changes through PropertiesChanged.
type fakeSystemd struct {
	conn *dbus.Conn
	mu   sync.Mutex
	jobs uint32
	fail bool
	log  []string
}

func (f *fakeSystemd) setState(unit, state string) {
	path := dbus.ObjectPath("/org/freedesktop/systemd1/unit/" + sddbus.PathBusEscape(unit))
	f.conn.Emit(path, "org.freedesktop.DBus.Properties.PropertiesChanged", "org.freedesktop.systemd1.Unit",
		map[string]dbus.Variant{"ActiveState": dbus.MakeVariant(state)}, []string{})
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
	f := &fakeSystemd{conn: c}
	if err := c.Export(f, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"); err != nil {
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
