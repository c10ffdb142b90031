// Package dashboard reads llmlab's Grafana dashboard, evaluates its panels'
// queries against a Prometheus server, and draws them as one SVG picture:
// what Grafana would show, for an operator without Grafana and for the
// tests that check every panel against real scrapes.
package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
)

// Dashboard is the part of a Grafana dashboard's JSON model read here.
type Dashboard struct {
	Title       string  `json:"title"`
	Panels      []Panel `json:"panels"`
	Annotations struct {
		List []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
	Templating struct {
		List []Variable `json:"list"`
	} `json:"templating"`
}

// Panel is one panel; rows have no targets.
type Panel struct {
	ID          int      `json:"id"`
	Type        string   `json:"type"`
	Title       string   `json:"title"`
	Description string   `json:"description"`
	Targets     []Target `json:"targets"`
	FieldConfig struct {
		Defaults struct {
			Unit string `json:"unit"`
		} `json:"defaults"`
	} `json:"fieldConfig"`
}

// Target is one query of a panel.
type Target struct {
	RefID  string `json:"refId"`
	Expr   string `json:"expr"`
	Legend string `json:"legendFormat"`
}

// Variable is a template variable.
type Variable struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	AllValue string `json:"allValue"`
	Current  struct {
		Value any `json:"value"` // a string, or a list for multi-value variables
	} `json:"current"`
}

// Parse reads a dashboard's JSON model.
func Parse(data []byte) (*Dashboard, error) {
	var d Dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	if len(d.Panels) == 0 {
		return nil, fmt.Errorf("dashboard %q: no panels", d.Title)
	}
	return &d, nil
}

// Vars returns the values the dashboard's variables take by default: a
// custom or constant variable's current value, the "All" value of a query
// variable that offers it, and Grafana's own $__rate_interval (given; four
// scrape intervals is Grafana's floor). Overrides win.
func (d *Dashboard) Vars(rateInterval time.Duration, overrides map[string]string) map[string]string {
	vars := map[string]string{"__rate_interval": model.Duration(rateInterval).String()}
	for _, v := range d.Templating.List {
		switch cur := v.Current.Value.(type) {
		case string:
			if cur == "$__all" {
				vars[v.Name] = v.AllValue
			} else if v.Type != "datasource" {
				vars[v.Name] = cur
			}
		}
	}
	for k, v := range overrides {
		vars[k] = v
	}
	return vars
}

var varRE = regexp.MustCompile(`\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]`)

// Expand replaces $name, ${name} and [[name]] with the variables' values;
// an unknown variable is an error, so that no query goes out half-written.
func Expand(expr string, vars map[string]string) (string, error) {
	var missing []string
	out := varRE.ReplaceAllStringFunc(expr, func(m string) string {
		sub := varRE.FindStringSubmatch(m)
		name := sub[1] + sub[2] + sub[3]
		v, ok := vars[name]
		if !ok {
			missing = append(missing, name)
			return m
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("%q: no value for $%s", expr, strings.Join(missing, ", $"))
	}
	return out, nil
}

// Query is one expanded target, with the panel it belongs to.
type Query struct {
	Panel  *Panel
	Target Target
	Expr   string // with the variables replaced
}

// Queries returns every panel's targets and every annotation's query,
// expanded with vars.
func (d *Dashboard) Queries(vars map[string]string) ([]Query, error) {
	var qs []Query
	for i := range d.Panels {
		p := &d.Panels[i]
		for _, t := range p.Targets {
			e, err := Expand(t.Expr, vars)
			if err != nil {
				return nil, fmt.Errorf("panel %q: %w", p.Title, err)
			}
			if l, err := Expand(t.Legend, vars); err == nil {
				t.Legend = l
			}
			qs = append(qs, Query{Panel: p, Target: t, Expr: e})
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr == "" {
			continue
		}
		e, err := Expand(a.Expr, vars)
		if err != nil {
			return nil, fmt.Errorf("annotation %q: %w", a.Name, err)
		}
		qs = append(qs, Query{Panel: &Panel{Title: "annotation: " + a.Name}, Target: Target{Expr: a.Expr}, Expr: e})
	}
	return qs, nil
}

// Metrics returns the metric names an expression reads: identifiers
// followed by a selector, a range or an operator, not functions,
// keywords, label names or strings.
func Metrics(expr string) []string {
	noStrings := regexp.MustCompile(`"(?:[^"\\]|\\.)*"`).ReplaceAllString(expr, `""`)
	noLabels := regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(noStrings, "{}")
	noRanges := regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(noLabels, "[]")
	e := regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`).ReplaceAllString(noRanges, "")
	var names []string
	for _, loc := range regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*\s*\(?`).FindAllStringIndex(e, -1) {
		m := e[loc[0]:loc[1]]
		if strings.HasSuffix(m, "(") {
			continue // a function
		}
		if loc[0] > 0 && strings.ContainsRune("0123456789.", rune(e[loc[0]-1])) {
			continue // the exponent of a number, 1e3
		}
		m = strings.TrimSpace(m)
		if promqlWords[m] || slices.Contains(names, m) {
			continue
		}
		names = append(names, m)
	}
	sort.Strings(names)
	return names
}

var promqlWords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}

// Series is one line of a panel.
type Series struct {
	Name   string
	Points []Point
}

// Point is a sample.
type Point struct {
	T time.Time
	V float64
}

// Result is what one query returned.
type Result struct {
	Query  Query
	Series []Series
	Err    error
}

// Evaluate runs every query over [start, end] at step against the
// Prometheus at promURL (its HTTP API's /api/v1/query_range).
func Evaluate(ctx context.Context, promURL string, qs []Query, start, end time.Time, step time.Duration) []Result {
	out := make([]Result, len(qs))
	for i, q := range qs {
		out[i].Query = q
		m, err := queryRange(ctx, promURL, q.Expr, start, end, step)
		if err != nil {
			out[i].Err = fmt.Errorf("%s: %w", q.Expr, err)
			continue
		}
		for _, s := range m {
			se := Series{Name: legend(q.Target.Legend, s.Metric)}
			for _, p := range s.Values {
				se.Points = append(se.Points, Point{p.Timestamp.Time(), float64(p.Value)})
			}
			out[i].Series = append(out[i].Series, se)
		}
	}
	return out
}

// queryRange asks Prometheus's HTTP API for expr over a range. (The
// client in client_golang/api would add json-iterator to the module for
// this one call.)
func queryRange(ctx context.Context, base, expr string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	form := url.Values{
		"query": {expr},
		"start": {strconv.FormatFloat(float64(start.UnixMilli())/1000, 'f', -1, 64)},
		"end":   {strconv.FormatFloat(float64(end.UnixMilli())/1000, 'f', -1, 64)},
		"step":  {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(base, "/")+"/api/v1/query_range", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("%s from Prometheus: %w", resp.Status, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("prometheus: %s: %s", body.ErrorType, body.Error)
	}
	if body.Data.ResultType != "matrix" {
		return nil, fmt.Errorf("a %s, not a range of series", body.Data.ResultType)
	}
	var m model.Matrix
	if err := json.Unmarshal(body.Data.Result, &m); err != nil {
		return nil, err
	}
	return m, nil
}

var legendRE = regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`)

// legend fills a target's legend format ("{{state}}") from the series'
// labels, as Grafana does.
func legend(format string, m model.Metric) string {
	if format == "" || format == "__auto" {
		return m.String()
	}
	return legendRE.ReplaceAllStringFunc(format, func(s string) string {
		return string(m[model.LabelName(legendRE.FindStringSubmatch(s)[1])])
	})
}
