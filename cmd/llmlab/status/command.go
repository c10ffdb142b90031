package status

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
)

// Command is llmlab status (Gather, Render).
func Command() command.Command {
	return command.Command{Name: "status", Summary: "the serving stack at a glance (never wakes a daemon scaled to zero); exit 0 serving or scaled to zero, 1 failed, 3 not running",
		Flags: statusFlags}
}

func statusFlags(fs *flag.FlagSet) command.Run {
	path := fs.String("config", config.DefaultPath, "llmlabd's configuration (its metrics listener, API address and textfile)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	watch := fs.Duration("watch", 0, "refresh every DURATION (e.g. 2s) until interrupted")
	noSystemd := fs.Bool("no-systemd", false, "do not ask systemd about llmlab's units")
	return func(ctx context.Context, args []string) int {
		if len(args) > 0 {
			fmt.Fprintln(os.Stderr, "usage: llmlab status [--config PATH] [--json] [--watch DURATION]")
			return 2
		}
		cfg, err := LoadConfig(fs, *path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		opts := Options{Config: cfg}
		var problem string
		if !*noSystemd {
			sd, err := ConnectSystemdIfBooted(ctx)
			switch {
			case err != nil:
				problem = "systemd: " + err.Error()
			case sd != nil:
				defer sd.Close()
				opts.Units = sd
			}
		}
		for {
			r := Gather(ctx, opts)
			if problem != "" {
				r.Problems = append(r.Problems, problem)
			}
			if *watch > 0 {
				fmt.Print("\033[H\033[2J") // clear the terminal
			}
			if *asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				_ = enc.Encode(r)
			} else {
				Render(os.Stdout, r, time.Now())
			}
			if *watch <= 0 {
				return r.ExitCode()
			}
			select {
			case <-ctx.Done():
				return r.ExitCode()
			case <-time.After(*watch):
			}
		}
	}
}

// LoadConfig loads llmlabd's configuration from the path of a command's
// --config flag (llmlab status, llmlab smoke), as llmlabd would: a
// missing default file means the defaults, a missing file named on the
// command line is an error.
func LoadConfig(fs *flag.FlagSet, path string) (*config.Config, error) {
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, _, err := server.LoadConfig(server.Options{ConfigPath: path, Explicit: explicit})
	return cfg, err
}
