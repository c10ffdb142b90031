package dashboard

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
)

func TestExpand(t *testing.T) {
	vars := map[string]string{"job": "llmlab", "slo": "2.5", "__rate_interval": "1m"}
	got, err := Expand(`rate(x{job="$job",le="${slo}"}[$__rate_interval]) > [[slo]]`, vars)
	if want := `rate(x{job="llmlab",le="2.5"}[1m]) > 2.5`; err != nil || got != want {
		t.Fatalf("Expand = %q, %v; want %q", got, err, want)
	}
	if _, err := Expand(`x{job="$jbo"}`, vars); err == nil || !strings.Contains(err.Error(), "$jbo") {
		t.Fatalf("an unknown variable: %v, want an error naming it", err)
	}
}

func TestMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`histogram_quantile(0.95, sum by (le) (rate(llmlab_request_duration_seconds_bucket{job="llmlab",result="ok"}[1m])))`: {"llmlab_request_duration_seconds_bucket"},
		`sum(increase(a_sum[5m])) / sum(increase(a_count[5m]))`:                                                              {"a_count", "a_sum"},
		`max by (state) (llmlab_engine_state{state=~"ready|starting"}) > 0 and on (instance) llmlab_up == 1`:                 {"llmlab_engine_state", "llmlab_up"},
		`vector(5)`: nil,
	} {
		if got := Metrics(expr); !slices.Equal(got, want) {
			t.Errorf("Metrics(%s) = %v, want %v", expr, got, want)
		}
	}
}

func TestVarsAndQueries(t *testing.T) {
	d, err := Parse([]byte(`{"title":"t","panels":[{"title":"p","targets":[{"refId":"A","expr":"x{job=\"$job\",instance=~\"$instance\"}[$__rate_interval]","legendFormat":"{{state}} within $slo s"}]}],
	"templating":{"list":[{"name":"datasource","type":"datasource","current":{"value":"prom"}},
	{"name":"job","type":"custom","current":{"value":"llmlab"}},
	{"name":"instance","type":"query","allValue":".*","current":{"value":"$__all"}},
	{"name":"slo","type":"custom","current":{"value":"5"}}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	qs, err := d.Queries(d.Vars(time.Minute, map[string]string{"job": "gpu-boxes"}))
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 1 || qs[0].Expr != `x{job="gpu-boxes",instance=~".*"}[1m]` || qs[0].Target.Legend != "{{state}} within 5 s" {
		t.Fatalf("queries = %+v", qs)
	}
}

// Evaluate reads Prometheus's query_range answer, fills legends from
// labels, and reports Prometheus's own errors.
func TestEvaluate(t *testing.T) {
	prom := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		if r.URL.Path != "/api/v1/query_range" || r.Form.Get("step") != "15" {
			http.Error(w, "bad request", 400)
			return
		}
		if strings.Contains(r.Form.Get("query"), "broken") {
			w.WriteHeader(400)
			w.Write([]byte(`{"status":"error","errorType":"bad_data","error":"parse error"}`))
			return
		}
		w.Write([]byte(`{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"state":"ready"},"values":[[1700000000,"1"],[1700000015,"0"]]}]}}`))
	}))
	defer prom.Close()
	qs := []Query{{Panel: &Panel{Title: "a"}, Target: Target{Legend: "engine {{state}}"}, Expr: "x"}, {Panel: &Panel{Title: "b"}, Expr: "broken("}}
	res := Evaluate(context.Background(), prom.URL, qs, time.Unix(1700000000, 0), time.Unix(1700000015, 0), 15*time.Second)
	if res[0].Err != nil || len(res[0].Series) != 1 || res[0].Series[0].Name != "engine ready" || len(res[0].Series[0].Points) != 2 {
		t.Fatalf("result = %+v", res[0])
	}
	if res[1].Err == nil || !strings.Contains(res[1].Err.Error(), "parse error") {
		t.Fatalf("a broken query: %v, want Prometheus's error", res[1].Err)
	}
	svg := Render("t", res, time.Unix(1700000000, 0), time.Unix(1700000015, 0))
	if !strings.Contains(svg, "engine ready") || !strings.Contains(svg, "parse error") {
		t.Fatalf("the picture lacks the series or the error:\n%s", svg)
	}
}

func TestLegend(t *testing.T) {
	m := model.Metric{"gpu": "0", "pid": "4242"}
	if got := legend("process {{pid}} on GPU {{ gpu }}", m); got != "process 4242 on GPU 0" {
		t.Fatalf("legend = %q", got)
	}
}
