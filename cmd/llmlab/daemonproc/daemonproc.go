// Package daemonproc runs llmlabd as a child process for llmlab's
// measuring commands (demo, tune, tune-engine, tune-admission, overhead):
// with a configuration written to a folder, its output in a log file
// there (internal/childproc), on loopback ports it binds itself and
// names in its log (internal/freeport).
package daemonproc

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/llmlab/llmlab/internal/childproc"
	"github.com/llmlab/llmlab/internal/freeport"
)

// Any is the address to give a listener of llmlabd's for it to bind a
// free loopback port; Proc says which port it got.
const Any = freeport.Any

// Proc is a running llmlabd.
type Proc struct {
	*childproc.Proc
	// URL is the API's base URL; Listen its address.
	URL, Listen string
	// Metrics is the metrics listener's address ("": none).
	Metrics string
	// Config is the configuration file it was started with.
	Config string
}

// Start writes config(listen) to dir/llmlab.toml, starts bin with it, and
// returns the API's base URL once /healthz answers, and a function that
// stops the daemon. listen is Any: llmlabd binds a free port and says
// which in its log.
func Start(ctx context.Context, bin, dir string, config func(listen string) string) (string, func(), error) {
	p, err := Run(ctx, bin, dir, config)
	if err != nil {
		return "", nil, err
	}
	return p.URL, p.Stop, nil
}

// Run is Start, returning the process. A metrics.listen of Any in the
// configuration is read back the same way, into Metrics.
func Run(ctx context.Context, bin, dir string, config func(listen string) string) (*Proc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p := &Proc{Config: filepath.Join(dir, "llmlab.toml")}
	if err := os.WriteFile(p.Config, []byte(config(Any)), 0o644); err != nil {
		return nil, err
	}
	child, err := childproc.Start(ctx, dir, "llmlabd", bin, "--config", p.Config)
	if err != nil {
		return nil, err
	}
	p.Proc = child
	var serving map[string]string
	_, err = child.WaitLine(10*time.Second, func(line string) bool {
		serving = servingLine(line)
		return serving != nil
	})
	if err != nil {
		p.Stop()
		return nil, fmt.Errorf("llmlabd did not start: %s", p.Output())
	}
	p.Listen, p.Metrics = serving["api"], serving["metrics"]
	p.URL = "http://" + p.Listen
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			return p, nil
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("llmlabd did not start: %s", p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// servingLine reads llmlabd's "serving" log line, which names the
// addresses its listeners bound (api, metrics, agent), in the text or
// the JSON log format; nil for any other line. The API's address is the
// first where socket activation hands it several.
func servingLine(line string) map[string]string {
	out := map[string]string{}
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["msg"] != "serving" {
			return nil
		}
		for k, v := range m {
			if s, ok := v.(string); ok {
				out[k] = s
			}
		}
	} else {
		// slog's text format: key=value, a value quoted where it holds a
		// space, a quote or nothing. The addresses hold none of these.
		for _, f := range strings.Fields(line) {
			if k, v, ok := strings.Cut(f, "="); ok {
				out[k] = strings.Trim(v, `"`)
			}
		}
		if out["msg"] != "serving" {
			return nil
		}
	}
	if out["api"] == "" {
		return nil
	}
	out["api"], _, _ = strings.Cut(out["api"], ",")
	return out
}

// Reload rewrites the configuration file with config and sends SIGHUP, as
// systemctl reload llmlab does.
func (p *Proc) Reload(config string) error {
	if err := os.WriteFile(p.Config, []byte(config), 0o644); err != nil {
		return err
	}
	return p.Signal(syscall.SIGHUP)
}

// Stop interrupts llmlabd and waits for it to exit (its drain ends within
// gateway.shutdown_grace).
func (p *Proc) Stop() { p.Proc.Stop(0) }
