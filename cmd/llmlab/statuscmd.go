package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/status"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
)

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
		cfg, err := loadConfigFlag(fs, *path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		opts := status.Options{Config: cfg}
		var problem string
		if !*noSystemd {
			sd, err := connectSystemd(ctx)
			switch {
			case err != nil:
				problem = "systemd: " + err.Error()
			case sd != nil:
				defer sd.Close()
				opts.Units = sd
			}
		}
		for {
			r := status.Gather(ctx, opts)
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
				status.Render(os.Stdout, r, time.Now())
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

// loadConfigFlag loads llmlabd's configuration from the --config flag's
// path, as llmlabd would: a missing default file means the defaults, a
// missing file named on the command line is an error.
func loadConfigFlag(fs *flag.FlagSet, path string) (*config.Config, error) {
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, _, err := server.LoadConfig(server.Options{ConfigPath: path, Explicit: explicit})
	return cfg, err
}

// connectSystemd connects to systemd over the system bus; nil and no
// error on a machine not booted with systemd.
func connectSystemd(ctx context.Context) (*status.Systemd, error) {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return nil, nil
	}
	return status.ConnectSystemd(ctx)
}
