package status

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/llmlab/llmlab/daemon/server"
)

// refusals are the outcomes that refuse a request for want of capacity
// or by policy, as opposed to serving it or failing it.
var notRefusals = map[string]bool{"ok": true, "invalid": true, "unauthorized": true, "engine_error": true, "cancelled": true}

// Render writes r for a person, like systemctl status.
func Render(w io.Writer, r Report, now time.Time) {
	dot := map[string]string{Serving: "●", ScaledZero: "○", Failed: "×", NotRunning: "○"}[r.State]
	head := fmt.Sprintf("%s llmlab: %s", dot, strings.ReplaceAll(r.State, "_", " "))
	if !r.Since.IsZero() {
		head += " since " + when(r.Since, now)
	}
	fmt.Fprintln(w, head)
	if r.Reason != "" {
		fmt.Fprintf(w, "  reason:   %s\n", r.Reason)
	}
	if sock, ok := r.Units[SocketUnit]; ok {
		line := fmt.Sprintf("%s %s (%s)", SocketUnit, sock.ActiveState, sock.SubState)
		if len(sock.Listen) > 0 {
			line += " on " + strings.Join(sock.Listen, ", ")
		}
		fmt.Fprintf(w, "  socket:   %s\n", line)
	}
	if d := r.Daemon; d != nil {
		renderDaemon(w, d, r.ProcessUnits, now)
	} else if lr := r.LastRun; lr != nil {
		total, ok := 0, lr.Requests["ok"]
		for _, n := range lr.Requests {
			total += n
		}
		fmt.Fprintf(w, "  last run: %d requests (%d answered), textfile written %s", total, ok, when(lr.Written, now))
		if lr.EngineState != "" {
			fmt.Fprintf(w, "; engine %s", lr.EngineState)
		}
		fmt.Fprintln(w)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  note:     %s\n", p)
	}
}

func renderDaemon(w io.Writer, d *server.Status, units map[uint32]string, now time.Time) {
	svc := fmt.Sprintf("pid %d, up %s", d.Service.PID, since(d.Service.Started, now))
	if d.Service.Activated {
		svc += ", socket-activated"
		if d.Service.IdleExitSeconds > 0 {
			svc += fmt.Sprintf(", exits after %s idle", dur(d.Service.IdleExitSeconds))
		}
	}
	fmt.Fprintf(w, "  llmlabd:  %s\n", svc)
	if d.Config.Path != "" {
		fmt.Fprintf(w, "  config:   %s, loaded %s\n", d.Config.Path, when(d.Config.LoadedAt, now))
	}
	eng := d.Engine.State
	if l := d.Engine.SleepLevel; l > 0 {
		eng += fmt.Sprintf(" (vLLM's sleep level %d", l)
		if w := d.Engine.ExpectedWakeSeconds[fmt.Sprint(l)]; w > 0 {
			eng += ", wakes in about " + dur(w)
		}
		eng += ")"
	}
	if lc := d.Engine.Lifecycle; lc != nil {
		eng += " since " + when(lc.Since, now)
		if d.Engine.Unit != "" {
			eng += "; unit " + d.Engine.Unit
		}
		if lc.LastStartSeconds > 0 {
			eng += fmt.Sprintf("; last cold start %s, begun %s", dur(lc.LastStartSeconds), when(lc.LastStart, now))
		}
		if lc.LastFailure != "" {
			eng += fmt.Sprintf("; last failure %s: %s", when(lc.LastFailureAt, now), lc.LastFailure)
		}
	} else {
		eng += " (not managed by llmlabd) at " + d.Engine.URL
	}
	fmt.Fprintf(w, "  engine:   %s\n", eng)
	q := d.Queue
	limit := fmt.Sprintf("limit %d", q.Limit)
	if d.Limits.Concurrency == "model" {
		limit = fmt.Sprintf("the model's limit %d (max %d)", q.Limit, q.MaxInflight)
	}
	sat := ""
	if q.Hold {
		sat = "; the engine says it is saturated"
	}
	fmt.Fprintf(w, "  queue:    %d waiting (limit %d sequences); %d in flight, %s%s\n", q.Queued, q.MaxQueued, q.Inflight, limit, sat)
	rc := d.Recent
	slo := "no objective"
	if d.SLO.LatencySeconds > 0 {
		verdict := "within"
		if rc.P95 > d.SLO.LatencySeconds {
			verdict = "OVER"
		}
		slo = fmt.Sprintf("%s the %s objective", verdict, dur(d.SLO.LatencySeconds))
	}
	if rc.OK == 0 {
		slo = "nothing answered"
	}
	fmt.Fprintf(w, "  last %s: %.2f req/s, goodput %.2f/s; p50 %s, p95 %s (%s)\n",
		dur(rc.Seconds), rc.PerSecond, rc.Goodput, dur(rc.P50), dur(rc.P95), slo)
	var refused []string
	for _, o := range slices.Sorted(maps.Keys(rc.Outcomes)) {
		if !notRefusals[o] {
			refused = append(refused, fmt.Sprintf("%s %d", o, rc.Outcomes[o]))
		}
	}
	for _, o := range []string{"engine_error", "invalid", "unauthorized", "cancelled"} {
		if n := rc.Outcomes[o]; n > 0 {
			refused = append(refused, fmt.Sprintf("%s %d", o, n))
		}
	}
	if len(refused) > 0 {
		fmt.Fprintf(w, "  not ok:   %s\n", strings.Join(refused, ", "))
	}
	if g := d.GPU; g != nil {
		if !g.Available {
			fmt.Fprintf(w, "  gpu:      none read (%s)\n", g.Reason)
		}
		for _, dev := range g.Devices {
			line := fmt.Sprintf("%s, %s of %s used", dev.Name, gib(dev.MemoryUsed), gib(dev.MemoryTotal))
			if dev.UtilOK {
				line += fmt.Sprintf(", %.0f%% busy", dev.UtilGPU*100)
			}
			for _, p := range dev.Processes {
				who := fmt.Sprintf("pid %d", p.PID)
				if u := units[p.PID]; u != "" {
					who += " (" + u + ")"
				}
				line += fmt.Sprintf("; %s %s", who, gib(p.UsedMemory))
			}
			fmt.Fprintf(w, "  gpu %d:    %s\n", dev.Index, line)
		}
	}
}

// when writes a time as the clock time and how long ago.
func when(t, now time.Time) string {
	if t.IsZero() {
		return "(unknown)"
	}
	return fmt.Sprintf("%s (%s ago)", t.Local().Format(time.DateTime), since(t, now))
}

func since(t, now time.Time) string {
	return now.Sub(t).Round(time.Second).String()
}

func dur(seconds float64) string {
	d := time.Duration(seconds * float64(time.Second))
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

func gib(b uint64) string {
	return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
}
