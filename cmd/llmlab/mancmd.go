package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
	"github.com/llmlab/llmlab/cmd/llmlab/manpage"
	"github.com/llmlab/llmlab/daemon/server"
)

// manCommand writes llmlab.1 and llmlabd.8 (manCmd).
func manCommand() command.Command {
	return command.Command{Name: "man", Args: "DIR", Summary: "write the manual pages llmlab.1 and llmlabd.8 into DIR",
		Flags: func(*flag.FlagSet) command.Run { return manCmd }}
}

// completionCommand prints bash completion (completionCmd).
func completionCommand() command.Command {
	return command.Command{Name: "completion", Args: "bash", Summary: "print the bash completion script",
		Flags: func(*flag.FlagSet) command.Run { return completionCmd }}
}

// subcommands returns each command with its flag definitions, for the
// manual page and the completion.
func subcommands() []manpage.Command {
	var out []manpage.Command
	for _, c := range commands() {
		fs := flag.NewFlagSet("llmlab "+c.Name, flag.ContinueOnError)
		c.Flags(fs)
		mc := manpage.Command{Name: c.Name, Args: c.Args, Summary: c.Summary}
		if hasFlags(fs) {
			mc.Flags = fs
		}
		out = append(out, mc)
	}
	return out
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

func daemonFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("llmlabd", flag.ContinueOnError)
	var o server.Options
	o.RegisterFlags(fs)
	return fs
}

var seeAlso = manpage.Section{Title: "See also", Paras: []string{
	"llmlab(1), llmlabd(8), systemctl(1), journalctl(1), /usr/share/doc/llmlab/install.md",
}}

func llmlabPage() manpage.Page {
	return manpage.Page{
		Name: "llmlab", Section: 1, Version: server.Version,
		Summary:  "llmlab's toolbox: configuration check, engine simulator, benchmarks",
		Synopsis: "COMMAND [FLAGS] [ARGS]",
		Description: []string{
			"llmlab is the companion of llmlabd(8), the gateway that serves a small LLM through vLLM on one GPU with admission control and scale-to-zero. " +
				"It checks configuration files, simulates a vLLM engine (its HTTP API and metrics) on a GPU profile, " +
				"sends the fixed benchmark workload (200 prompt and 200 output tokens) and reports throughput, goodput and latency against an SLO, " +
				"and runs a self-contained demo.",
			"llmlab COMMAND -h lists a command's flags.",
		},
		Commands: subcommands(),
		Sections: []manpage.Section{
			{Title: "Examples", Paras: []string{
				"  llmlab check-config /etc/llmlab/llmlab.toml",
				"  llmlab bench --target http://127.0.0.1:8080 --rate 5 --duration 60s",
				"  llmlab demo",
			}},
			{Title: "Exit status", Paras: []string{"0 on success, 1 when the command failed, 2 for a usage error."}},
			seeAlso,
		},
	}
}

func llmlabdPage() manpage.Page {
	return manpage.Page{
		Name: "llmlabd", Section: 8, Version: server.Version,
		Summary:  "OpenAI-compatible gateway with admission control and scale-to-zero for vLLM",
		Synopsis: "[FLAGS]",
		Description: []string{
			"llmlabd accepts OpenAI-style requests (/v1/completions, /v1/chat/completions, /v1/models), validates them, rate-limits, queues and admits them to a vLLM engine, " +
				"refusing early with 429 or 503 and Retry-After when a request could not be served within its SLO. " +
				"It starts the engine's systemd unit (llmlab-vllm.service) through systemd's D-Bus API when work arrives and stops it when idle.",
			"It is meant to run under systemd, socket-activated by llmlab.socket (the listening socket named http); " +
				"it reports readiness and status with sd_notify, logs to the journal, and exits when idle once the engine is stopped. " +
				"Without socket activation it listens on gateway.listen or --listen.",
			"Metrics are served on metrics.listen (/metrics) and written to node_exporter's textfile directory.",
		},
		Flags: daemonFlags(),
		Sections: []manpage.Section{
			{Title: "Signals", Paras: []string{
				"SIGHUP\treload the configuration; a bad file is refused and the old one kept (systemctl reload llmlab).",
				"SIGTERM\tdrain: stop accepting, answer queued requests 503, let requests in flight finish, exit.",
			}},
			{Title: "Files", Paras: []string{
				"/etc/llmlab/llmlab.toml\tthe configuration (check it with llmlab check-config).",
				"/etc/llmlab/engine.env\tthe engine's settings: vLLM's path, the model, extra flags.",
				"/run/llmlab/engine.env\tsettings llmlabd computes for the engine at run time.",
				"/var/lib/llmlab\twhat llmlabd learns (start times, rates), kept across restarts.",
			}},
			seeAlso,
		},
	}
}

// manCmd writes llmlab.1 and llmlabd.8 into the folder args[0].
func manCmd(_ context.Context, args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: llmlab man DIR")
		return 2
	}
	for file, p := range map[string]manpage.Page{"llmlab.1": llmlabPage(), "llmlabd.8": llmlabdPage()} {
		var b bytes.Buffer
		if err := p.Write(&b); err != nil {
			fmt.Fprintln(os.Stderr, "llmlab man:", err)
			return 1
		}
		if err := os.WriteFile(filepath.Join(args[0], file), b.Bytes(), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "llmlab man:", err)
			return 1
		}
	}
	return 0
}

// completionCmd prints bash completion for llmlab and llmlabd.
func completionCmd(_ context.Context, args []string) int {
	if len(args) != 1 || args[0] != "bash" {
		fmt.Fprintln(os.Stderr, "usage: llmlab completion bash")
		return 2
	}
	if err := writeCompletion(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "llmlab completion:", err)
		return 1
	}
	return 0
}

func writeCompletion(w io.Writer) error {
	files := []string{"--config", "--trace", "--llmlabd", "--nginx", "--results"}
	fmt.Fprintln(w, "# bash completion for llmlab and llmlabd (generated by llmlab completion bash)")
	if err := manpage.Bash(w, "llmlab", nil, subcommands(), files); err != nil {
		return err
	}
	return manpage.Bash(w, "llmlabd", daemonFlags(), nil, files)
}
