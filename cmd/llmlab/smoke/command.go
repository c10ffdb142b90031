package smoke

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/status"
	"github.com/llmlab/llmlab/daemon/auth"
	"github.com/llmlab/llmlab/daemon/config"
)

// Command is llmlab smoke (Run), on llmlabd's configuration as llmlab
// status reads it.
func Command() command.Command {
	return command.Command{Name: "smoke", Summary: "one streamed chat completion through the socket, each step timed (cold start included), the answer checked; exit 1 with the reason when it fails",
		Flags: smokeFlags}
}

func smokeFlags(fs *flag.FlagSet) command.Run {
	path := fs.String("config", config.DefaultPath, "llmlabd's configuration (its model, metrics listener and engine unit)")
	api := fs.String("api", "", "llmlabd's API base URL (default: llmlab.socket's address, else gateway.listen)")
	model := fs.String("model", "", "the model to ask for (default: the first of engine.models)")
	key := fs.String("key", os.Getenv("LLMLAB_API_KEY"), "an API key (default $LLMLAB_API_KEY, else auth.keys_file's first key where this user may read the file)")
	maxTokens := fs.Int("max-tokens", 16, "tokens to ask for")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long, cold start included")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	return func(ctx context.Context, args []string) int {
		if len(args) > 0 {
			fmt.Fprintln(os.Stderr, "usage: llmlab smoke [--config PATH] [--api URL] [--model M] [--key K] [--timeout D] [--json]")
			return 2
		}
		cfg, err := status.LoadConfig(fs, *path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		o := Options{API: *api, Model: *model, Key: *key, MaxTokens: *maxTokens, Timeout: *timeout}
		if o.Model == "" && len(cfg.Engine.Models) > 0 {
			o.Model = cfg.Engine.Models[0]
		}
		if cfg.Metrics.Listen != "" {
			o.Status = "http://" + cfg.Metrics.Listen + "/status"
		}
		// No key given: the keys file's first, where this user may read it
		// (root, or the llmlab group).
		var keyFrom string
		if o.Key == "" && cfg.Auth.KeysFile != "" {
			if name, k, err := auth.FirstKey(cfg.Auth.KeysFile); err == nil {
				o.Key, keyFrom = k, fmt.Sprintf("the key of %q from %s", name, cfg.Auth.KeysFile)
			}
		}
		var notListening string
		if sd, err := status.ConnectSystemdIfBooted(ctx); err == nil && sd != nil {
			defer sd.Close()
			if o.API == "" {
				if u, err := sd.Unit(ctx, status.SocketUnit); err == nil && len(u.Listen) > 0 {
					o.API = "http://" + u.Listen[0]
					if !u.Listening() {
						notListening = fmt.Sprintf("%s is %s (%s): the socket is not listening at %s (systemctl start %s; systemctl status %s)",
							status.SocketUnit, u.ActiveState, u.SubState, u.Listen[0], status.SocketUnit, status.SocketUnit)
					}
				}
			}
			if cfg.Engine.Unit != "" {
				o.EngineUnit, o.Engine = cfg.Engine.Unit, journal{}
			}
		}
		if o.API == "" {
			o.API = "http://" + cfg.Gateway.Listen
		}
		r := Result{Reason: notListening}
		if notListening == "" {
			r = Run(ctx, o)
		}
		if *asJSON {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(r)
		} else {
			if keyFrom != "" {
				fmt.Printf("  with %s\n", keyFrom)
			}
			for _, s := range r.Steps {
				if s.Skipped != "" {
					fmt.Printf("  -   %-18s %s\n", s.Name, s.Skipped)
					continue
				}
				fmt.Printf("  ok  %-18s %s\n", s.Name, s.Took.Round(time.Millisecond))
			}
			if r.OK {
				fmt.Printf("ok: %q (%d prompt + %d completion tokens) from %s\n", r.Text, r.PromptTokens, r.CompletionTokens, o.API)
			} else {
				fmt.Printf("FAIL: %s\n", r.Reason)
				for _, d := range r.Details {
					fmt.Printf("    %s\n", d)
				}
			}
		}
		if !r.OK {
			return 1
		}
		return 0
	}
}

// journal reads a unit's journal with journalctl.
type journal struct{}

func (journal) Journal(ctx context.Context, unit string, lines int) ([]string, error) {
	out, err := exec.CommandContext(ctx, "journalctl", "-u", unit, "-n", fmt.Sprint(lines), "-o", "cat", "--no-pager").Output()
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(out), "\n"), "\n"), nil
}
