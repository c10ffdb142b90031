package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
)

// checkConfigCommand validates a file as llmlabd would load it, keys
// file included, and prints every problem; --show prints the
// configuration in effect, and which values the file set.
func checkConfigCommand() command.Command {
	return command.Command{Name: "check-config", Args: "[--show] [PATH]", Summary: "validate a configuration file (default /etc/llmlab/llmlab.toml)",
		Flags: checkConfigFlags}
}

func checkConfigFlags(fs *flag.FlagSet) command.Run {
	show := fs.Bool("show", false, "print every key's value in effect and whether the file set it")
	return func(ctx context.Context, args []string) int { return checkConfig(ctx, *show, args) }
}

func checkConfig(_ context.Context, show bool, args []string) int {
	path, explicit := config.DefaultPath, false
	if len(args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: llmlab check-config [--show] [PATH]")
		return 2
	}
	if len(args) == 1 {
		path, explicit = args[0], true
	}
	cfg, _, err := server.LoadConfig(server.Options{ConfigPath: path, Explicit: explicit})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, d := range cfg.Deprecated {
		fmt.Fprintf(os.Stderr, "%s: deprecated: %s\n", path, d)
	}
	for _, n := range cfg.Notes {
		fmt.Fprintf(os.Stderr, "%s: note: %s\n", path, n)
	}
	if f, err := os.Open(engineEnvPath); err == nil {
		for _, w := range engineEnvWarnings(f, cfg) {
			fmt.Fprintf(os.Stderr, "%s: warning: %s\n", engineEnvPath, w)
		}
		f.Close()
	}
	if show {
		data, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) && !explicit {
			data, err = nil, nil
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		settings, err := config.Show(path, data)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		printSettings(os.Stdout, settings)
		return 0
	}
	fmt.Printf("%s: ok\n", path)
	return 0
}

// printSettings writes settings as "key = value  # source", aligned.
func printSettings(w io.Writer, settings []config.Setting) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range settings {
		src := "# default"
		switch {
		case s.FromFile && s.Value == s.Default:
			src = "# file (the default)"
		case s.FromFile:
			src = "# file (default " + s.Default + ")"
		}
		if s.Derived != "" {
			src += "; in effect: " + s.Derived
		}
		fmt.Fprintf(tw, "%s = %s\t%s\n", s.Key, s.Value, src)
	}
	tw.Flush()
}
