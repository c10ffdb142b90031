package dashboard

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
)

// Command is llmlab dashboard: the panels of shipped, or of --file,
// evaluated against a Prometheus server and drawn as one SVG. shipped is
// the dashboard the package installs (monitoring.Dashboard), handed in by
// main: monitoring's tests import this package, so it cannot import
// monitoring.
func Command(shipped []byte) command.Command {
	return command.Command{Name: "dashboard",
		Summary: "draw the shipped Grafana dashboard's panels from a Prometheus server into an SVG, without Grafana (--check: evaluate every query)",
		Flags:   func(fs *flag.FlagSet) command.Run { return dashboardFlags(fs, shipped) }}
}

// varFlags collects repeated --var name=value.
type varFlags map[string]string

func (v varFlags) String() string { return "" }

func (v varFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("%q: want name=value", s)
	}
	v[name] = value
	return nil
}

func dashboardFlags(fs *flag.FlagSet, shipped []byte) command.Run {
	prom := fs.String("prometheus", "http://127.0.0.1:9090", "the Prometheus server to query (its HTTP API)")
	file := fs.String("file", "", "a Grafana dashboard JSON file (default: the shipped llmlab-dashboard.json)")
	since := fs.Duration("since", time.Hour, "draw this long a span, ending at --end")
	endFlag := fs.String("end", "", "the span's end, RFC 3339 (default: now)")
	step := fs.Duration("step", 0, "query resolution (default: the span / 300, at least 1s)")
	rateInterval := fs.Duration("rate-interval", 0, "the value of $__rate_interval (default: 4 steps, at least 1m, Grafana's floor with a 15s scrape)")
	out := fs.String("out", "llmlab-dashboard.svg", "write the picture here")
	check := fs.Bool("check", false, "only evaluate: list each query's series count, exit 1 when one fails")
	vars := varFlags{}
	fs.Var(vars, "var", "a template variable, name=value (repeatable; default: the dashboard's current values: job=llmlab, node_job=node, slo=5, every instance)")
	return func(ctx context.Context, args []string) int {
		if len(args) > 0 {
			fmt.Fprintln(os.Stderr, "usage: llmlab dashboard [--prometheus URL] [--since D] [--end T] [--var name=value]... [--out FILE | --check]")
			return 2
		}
		data := shipped
		if *file != "" {
			var err error
			if data, err = os.ReadFile(*file); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
		}
		d, err := Parse(data)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		end := time.Now()
		if *endFlag != "" {
			if end, err = time.Parse(time.RFC3339, *endFlag); err != nil {
				fmt.Fprintf(os.Stderr, "--end %q: %v\n", *endFlag, err)
				return 2
			}
		}
		start := end.Add(-*since)
		st := *step
		if st <= 0 {
			st = max(time.Second, (*since / 300).Round(time.Second))
		}
		ri := *rateInterval
		if ri <= 0 {
			ri = max(time.Minute, 4*st)
		}
		qs, err := d.Queries(d.Vars(ri, vars))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		results := Evaluate(ctx, *prom, qs, start, end, st)
		failed := 0
		for _, r := range results {
			if r.Err != nil {
				failed++
				fmt.Fprintf(os.Stderr, "%s: %v\n", r.Query.Panel.Title, r.Err)
			}
		}
		if *check {
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PANEL\tSERIES\tQUERY")
			for _, r := range results {
				n := fmt.Sprint(len(r.Series))
				if r.Err != nil {
					n = "error"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Query.Panel.Title, n, r.Query.Expr)
			}
			tw.Flush()
		} else {
			title := fmt.Sprintf("%s, from %s", d.Title, *prom)
			if err := os.WriteFile(*out, []byte(Render(title, results, start, end)), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			fmt.Printf("%s: %d panels, %d queries, %s to %s\n", *out, countPanels(results), len(results), start.Format(time.RFC3339), end.Format(time.RFC3339))
		}
		if failed > 0 {
			return 1
		}
		return 0
	}
}

func countPanels(results []Result) int {
	seen := map[*Panel]bool{}
	for _, r := range results {
		seen[r.Query.Panel] = true
	}
	return len(seen)
}
