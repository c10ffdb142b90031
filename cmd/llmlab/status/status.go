// Package status is llmlab status: the serving stack at a glance, like
// systemctl status. It asks a running llmlabd on its metrics listener
// (never socket-activated) and, when nothing answers there, systemd for
// llmlab.socket and llmlab.service, and node_exporter's textfile for how
// the last run ended. It never connects to the socket-activated API port
// of a daemon that is not running, so it never wakes one.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The llmlab units the package installs.
const (
	ServiceUnit = "llmlab.service"
	SocketUnit  = "llmlab.socket"
)

// States of the stack, as Report.State says.
const (
	Serving    = "serving"        // llmlabd answers
	ScaledZero = "scaled_to_zero" // llmlabd exited on idle; its socket listens
	Failed     = "failed"         // llmlabd or its engine failed
	NotRunning = "not_running"    // nothing listens for requests
)

// Unit is what systemd says of one unit.
type Unit struct {
	ActiveState string    `json:"active_state"`
	SubState    string    `json:"sub_state"`
	Result      string    `json:"result,omitempty"` // services only
	Since       time.Time `json:"since,omitzero"`
	// Listen lists a socket's addresses.
	Listen []string `json:"listen,omitempty"`
}

// Listening says a socket unit accepts connections: waiting for one, or
// with its service running.
func (u Unit) Listening() bool { return u.SubState == "listening" || u.SubState == "running" }

// Units reads systemd's view of a unit; it must never start one.
type Units interface {
	Unit(ctx context.Context, name string) (Unit, error)
}

// Options say where to look.
type Options struct {
	// Config is the llmlabd configuration that names the metrics
	// listener, the API address and the textfile.
	Config *config.Config
	// Units is systemd (nil: not asked, as on a box without it).
	Units Units
	// Client asks llmlabd; nil means a client with a 2 s timeout.
	Client *http.Client
}

// Report is llmlab status's answer.
type Report struct {
	State  string    `json:"state"`
	Since  time.Time `json:"since,omitzero"`
	Reason string    `json:"reason,omitempty"`
	// Daemon is what a running llmlabd said (GET /status).
	Daemon *server.Status `json:"daemon,omitempty"`
	// ProcessUnits names the systemd unit of each GPU process Daemon
	// lists, read here from /proc.
	ProcessUnits map[uint32]string `json:"process_units,omitempty"`
	// LastRun is what the textfile kept of the last run.
	LastRun *LastRun `json:"last_run,omitempty"`
	// Units is systemd's view of llmlab's units, where it was asked.
	Units map[string]Unit `json:"units,omitempty"`
	// Problems are readings that failed (systemd unreachable, an
	// unreadable textfile): the report is what could be read without
	// them.
	Problems []string `json:"problems,omitempty"`

	asked string // the base URL llmlabd was asked at ("": none)
}

// ExitCode is the status for scripts: 0 serving or scaled to zero, 1
// failed (the engine or llmlabd), 3 not running (nothing listens), as
// systemctl status uses 3.
func (r Report) ExitCode() int {
	switch r.State {
	case Serving, ScaledZero:
		return 0
	case Failed:
		return 1
	}
	return 3
}

// LastRun is the textfile's account of the latest run.
type LastRun struct {
	Up          bool           `json:"up"`
	Written     time.Time      `json:"written"`
	EngineState string         `json:"engine_state,omitempty"`
	Requests    map[string]int `json:"requests_by_outcome,omitempty"`
}

// Gather reads the stack's state.
func Gather(ctx context.Context, o Options) Report {
	var r Report
	cfg := o.Config
	if o.Units != nil {
		r.Units = map[string]Unit{}
		for _, name := range []string{SocketUnit, ServiceUnit} {
			u, err := o.Units.Unit(ctx, name)
			if err != nil {
				r.Problems = append(r.Problems, fmt.Sprintf("systemd: %s: %v", name, err))
				continue
			}
			r.Units[name] = u
		}
		if cfg.Engine.Unit != "" {
			if u, err := o.Units.Unit(ctx, cfg.Engine.Unit); err == nil {
				r.Units[cfg.Engine.Unit] = u
			}
		}
	}
	if cfg.Metrics.Textfile != "" {
		lr, err := readTextfile(cfg.Metrics.Textfile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			r.Problems = append(r.Problems, err.Error())
		default:
			r.LastRun = lr
		}
	}
	// Ask llmlabd where asking cannot start it: its metrics listener, or
	// the API when systemd says the service runs anyway.
	base := ""
	svc, haveSvc := r.Units[ServiceUnit]
	switch {
	case cfg.Metrics.Listen != "":
		base = "http://" + cfg.Metrics.Listen
	case haveSvc && svc.ActiveState == "active":
		// llmlabd runs anyway: asking its API cannot start it.
		base = "http://" + cfg.Gateway.Listen
		if sock := r.Units[SocketUnit]; len(sock.Listen) > 0 {
			base = "http://" + sock.Listen[0]
		}
	}
	r.asked = base
	if base != "" {
		d, err := fetch(ctx, o.Client, base+"/status")
		if err == nil {
			r.Daemon, r.ProcessUnits = d, processUnits(d)
		} else if !isRefused(err) {
			r.Problems = append(r.Problems, fmt.Sprintf("llmlabd at %s: %v", base, err))
		}
	}
	r.decide(cfg)
	return r
}

// decide sets State, Since and Reason from the readings.
func (r *Report) decide(cfg *config.Config) {
	if d := r.Daemon; d != nil {
		r.State, r.Since = Serving, d.Service.Started
		if lc := d.Engine.Lifecycle; lc != nil && lc.State == "failed" {
			r.State, r.Since, r.Reason = Failed, lc.Since, "the engine failed: "+lc.LastFailure
		}
		return
	}
	sock, haveSock := r.Units[SocketUnit]
	svc, haveSvc := r.Units[ServiceUnit]
	switch {
	case haveSvc && svc.ActiveState == "failed":
		r.State, r.Since = Failed, svc.Since
		r.Reason = fmt.Sprintf("%s failed (result %s); see journalctl -u %s", ServiceUnit, svc.Result, ServiceUnit)
	case haveSock && sock.Listening():
		r.State, r.Since = ScaledZero, sock.Since
		if haveSvc && !svc.Since.IsZero() {
			r.Since = svc.Since // when llmlabd last exited
		} else if r.LastRun != nil {
			r.Since = r.LastRun.Written
		}
		if haveSvc && svc.ActiveState == "active" {
			// The service runs but did not answer: starting, or hung.
			r.State, r.Reason = Failed, fmt.Sprintf("%s is %s but llmlabd does not answer at %s", ServiceUnit, svc.SubState, strings.TrimPrefix(r.asked, "http://"))
		}
	case haveSock:
		r.State, r.Since = NotRunning, sock.Since
		r.Reason = fmt.Sprintf("%s is %s (%s): nothing listens for requests; systemctl start %s", SocketUnit, sock.ActiveState, sock.SubState, SocketUnit)
	default:
		r.State = NotRunning
		r.Reason = "llmlabd does not answer"
		if cfg.Metrics.Listen != "" {
			r.Reason += " at " + cfg.Metrics.Listen
		}
		if r.LastRun != nil && !r.LastRun.Up {
			r.Since = r.LastRun.Written
			r.Reason += "; it exited at " + r.LastRun.Written.Format(time.DateTime)
		}
	}
}

func fetch(ctx context.Context, c *http.Client, url string) (*server.Status, error) {
	if c == nil {
		c = &http.Client{Timeout: 2 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var d server.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&d); err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return &d, nil
}

// processUnits maps each GPU process d lists to its systemd unit.
func processUnits(d *server.Status) map[uint32]string {
	units := map[uint32]string{}
	if d.GPU == nil {
		return units
	}
	for _, dev := range d.GPU.Devices {
		for _, p := range dev.Processes {
			if u := unitOf(p.PID); u != "" {
				units[p.PID] = u
			}
		}
	}
	return units
}

// isRefused says nothing listens at the address: llmlabd is not running.
func isRefused(err error) bool {
	return strings.Contains(err.Error(), "connection refused")
}

// unitOf names the systemd unit a process runs in, from its cgroup ("":
// not known).
func unitOf(pid uint32) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		path := line[strings.LastIndex(line, ":")+1:]
		last := path[strings.LastIndex(path, "/")+1:]
		if strings.HasSuffix(last, ".service") || strings.HasSuffix(last, ".scope") {
			return last
		}
	}
	return ""
}

// readTextfile reads llmlab_up, the engine's state and the request
// counters from node_exporter's textfile.
func readTextfile(path string) (*LastRun, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(f)
	if err != nil {
		return nil, fmt.Errorf("textfile %s: %w", path, err)
	}
	lr := &LastRun{Written: st.ModTime(), Requests: map[string]int{}}
	if f, ok := fams["llmlab_up"]; ok && len(f.Metric) > 0 {
		lr.Up = f.Metric[0].GetGauge().GetValue() == 1
	}
	if f, ok := fams["llmlab_engine_state"]; ok {
		for _, m := range f.Metric {
			if m.GetGauge().GetValue() == 1 {
				for _, l := range m.Label {
					if l.GetName() == "state" {
						lr.EngineState = l.GetValue()
					}
				}
			}
		}
	}
	if f, ok := fams["llmlab_requests_total"]; ok {
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if l.GetName() == "outcome" {
					lr.Requests[l.GetValue()] += int(m.GetCounter().GetValue())
				}
			}
		}
	}
	return lr, nil
}
