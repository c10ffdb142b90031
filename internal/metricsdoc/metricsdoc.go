// Package metricsdoc keeps docs/metrics.md, the catalogue of llmlab's
// series, in step with the registry: it renders a table from gathered
// metric families and reads one back, so that tests can compare the two
// and rewrite the document (go test -run Catalogue -args -update).
package metricsdoc

import (
	"fmt"
	"os"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// Row is one series family.
type Row struct {
	Name   string
	Type   string // counter, gauge, histogram
	Labels []string
	Unit   string
	Help   string
}

// FromFamilies turns gathered families into rows, sorted by name; only
// names with prefix are kept.
func FromFamilies(fams []*dto.MetricFamily, prefix string) []Row {
	var rows []Row
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), prefix) {
			continue
		}
		labels := map[string]bool{}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				labels[l.GetName()] = true
			}
		}
		var names []string
		for l := range labels {
			names = append(names, l)
		}
		slices.Sort(names)
		rows = append(rows, Row{Name: f.GetName(), Type: strings.ToLower(f.GetType().String()), Labels: names,
			Unit: unit(f.GetName()), Help: f.GetHelp()})
	}
	slices.SortFunc(rows, func(a, b Row) int { return strings.Compare(a.Name, b.Name) })
	return rows
}

// unit reads the unit from the name, as Prometheus's naming rules put it.
func unit(name string) string {
	name = strings.TrimSuffix(name, "_total")
	for _, u := range []string{"seconds", "bytes", "ratio", "perc"} {
		if strings.HasSuffix(name, "_"+u) {
			return u
		}
	}
	return ""
}

// Render writes rows as a Markdown table.
func Render(rows []Row) string {
	var b strings.Builder
	b.WriteString("| series | type | labels | unit | meaning |\n|---|---|---|---|---|\n")
	for _, r := range rows {
		labels := ""
		if len(r.Labels) > 0 {
			labels = "`" + strings.Join(r.Labels, "`, `") + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", r.Name, r.Type, labels, r.Unit, strings.ReplaceAll(r.Help, "|", "\\|"))
	}
	return b.String()
}

// Section returns the text between the lines "<!-- begin NAME -->" and
// "<!-- end NAME -->" of doc, and Replace puts a new one there.
func Section(doc, name string) (string, bool) {
	begin, end := "<!-- begin "+name+" -->\n", "<!-- end "+name+" -->"
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i < 0 || j < i {
		return "", false
	}
	return doc[i+len(begin) : j], true
}

// Replace returns doc with the section name's text replaced by text.
func Replace(doc, name, text string) (string, bool) {
	old, ok := Section(doc, name)
	if !ok {
		return doc, false
	}
	begin := "<!-- begin " + name + " -->\n"
	i := strings.Index(doc, begin) + len(begin)
	return doc[:i] + text + doc[i+len(old):], true
}

// Check compares the section name of the document at path with got; with
// update it writes got there instead.
func Check(path, name, got string, update bool) error {
	doc, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	want, ok := Section(string(doc), name)
	if !ok {
		return fmt.Errorf("%s has no <!-- begin %s --> section", path, name)
	}
	if update {
		out, _ := Replace(string(doc), name, got)
		return os.WriteFile(path, []byte(out), 0o644)
	}
	if got != want {
		return fmt.Errorf("%s's %s table is not the registry's (rerun with -args -update):\n%s", path, name, lineDiff(want, got))
	}
	return nil
}

// lineDiff lists the lines only in want (-) and only in got (+).
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}
