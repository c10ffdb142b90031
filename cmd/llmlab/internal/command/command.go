// Package command is the contract between llmlab's main and its
// subcommands: a command's name, its line in the usage text and the
// manual page, and its flags with what runs it. main holds the table and
// dispatches; each command, in package main or in its own package under
// cmd/llmlab, fills one Command; the manual page and the completion are
// rendered from the same definitions.
package command

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"time"
)

// Command is one of llmlab's subcommands.
type Command struct {
	// Name selects it: llmlab NAME.
	Name string
	// Args shows its positional arguments in the usage text and the
	// manual page ("" for none).
	Args string
	// Summary is its one line in the usage text and the manual page.
	Summary string
	// Flags defines the command's flags on fs and returns what runs it
	// once fs has parsed the command line. The manual page and the
	// completion call it on a flag set of their own and never run what
	// it returns, so it defines flags and does nothing else.
	Flags func(fs *flag.FlagSet) Run
}

// Run runs a command whose flags are parsed; args are the positional
// arguments left. It returns the process's exit status: 0 on success, 1
// when the command failed, 2 for a usage error, and any other status
// the command documents (3: bench's SLO missed, status's daemon not
// running).
type Run func(ctx context.Context, args []string) int

// Sibling is the path of the program name beside the running llmlab: the
// package installs llmlab and llmlabd side by side, and so does make
// build, so a command that starts llmlabd finds it there by default.
func Sibling(name string) string {
	self, _ := os.Executable()
	return filepath.Join(filepath.Dir(self), name)
}

// ResultsDir is where a command's results go when its --results is
// "auto": results/KIND-<UTC time>.
func ResultsDir(kind string) string {
	return filepath.Join("results", kind+"-"+time.Now().UTC().Format("20060102T150405Z"))
}
