package overhead

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
)

// Command is llmlab overhead (Run), on the llmlabd next to llmlab and
// Debian's nginx-light.
func Command() command.Command {
	return command.Command{Name: "overhead", Summary: "measure llmlabd's overhead against nginx, a bare Go reverse proxy and direct access", Flags: overheadFlags}
}

func overheadFlags(fs *flag.FlagSet) command.Run {
	llmlabd := fs.String("llmlabd", "", "llmlabd binary (default: the one next to llmlab)")
	nginx := fs.String("nginx", "nginx", "nginx binary (Debian's nginx-light)")
	conc := fs.Int("concurrency", 32, "closed-loop concurrency")
	dur := fs.Duration("duration", 8*time.Second, "time per target in a closed-loop round and in the unloaded phase")
	rounds := fs.Int("rounds", 3, "interleaved closed-loop rounds per target; the open loop gives each target rounds x duration, in turns of 1s")
	return func(ctx context.Context, _ []string) int {
		return overheadCmd(ctx, *llmlabd, *nginx, *conc, *dur, *rounds)
	}
}

func overheadCmd(ctx context.Context, llmlabd, nginx string, conc int, dur time.Duration, rounds int) int {
	self, _ := os.Executable()
	if llmlabd == "" {
		llmlabd = command.Sibling("llmlabd")
	}
	nginxPath, err := exec.LookPath(nginx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmlab overhead: nginx not found (apt-get install nginx-light):", err)
		return 1
	}
	_, err = Run(ctx, Options{Llmlab: self, Llmlabd: llmlabd, Nginx: nginxPath,
		Concurrency: conc, Duration: dur, Rounds: rounds, Out: os.Stdout})
	if err != nil {
		fmt.Fprintln(os.Stderr, "llmlab overhead:", err)
		return 1
	}
	return 0
}
