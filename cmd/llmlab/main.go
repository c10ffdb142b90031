// Command llmlab is llmlab's toolbox: it checks configuration files (and,
// as the project grows, simulates an engine and runs benchmarks).
package main

import (
	"fmt"
	"os"

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
)

const usage = `usage: llmlab COMMAND [ARGS]

commands:
  check-config [PATH]   validate a configuration file (default ` + config.DefaultPath + `)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "check-config":
		os.Exit(checkConfig(os.Args[2:]))
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "llmlab: unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
}

// checkConfig validates a file as llmlabd would load it, keys file
// included, and prints every problem.
func checkConfig(args []string) int {
	path, explicit := config.DefaultPath, false
	if len(args) > 1 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	if len(args) == 1 {
		path, explicit = args[0], true
	}
	if _, _, err := server.LoadConfig(server.Options{ConfigPath: path, Explicit: explicit}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%s: ok\n", path)
	return 0
}
