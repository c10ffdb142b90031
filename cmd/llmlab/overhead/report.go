package overhead

import (
	"fmt"
	"io"
	"time"
)

func report(w io.Writer, o Options, slot time.Duration, rs []Result) {
	fmt.Fprintf(w, "closed loop at concurrency %d, %d interleaved rounds of %s per target, medians of the rounds; "+
		"unloaded (one request at a time, %s per target) and open loop (Poisson, at half nginx's capacity, %s per target) in turns of %s, percentiles of the pooled samples\n\n",
		o.Concurrency, o.Rounds, o.Duration, o.Duration, time.Duration(o.Rounds)*o.Duration, slot)
	fmt.Fprintln(w, "| workload | target | capacity req/s | x direct | proxy CPU us/req | unloaded round trip | unloaded added | open-loop rate | p50 | p99 | added p50 | added p99 |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	byKey := map[string]Result{}
	for _, r := range rs {
		byKey[r.Workload+"/"+r.Target] = r
	}
	for _, r := range rs {
		if r.Target == Static {
			fmt.Fprintf(w, "| %s | %s | | | | %s | %s | | | | | |\n", r.Workload, r.Target, us(r.Unloaded), us(r.UnloadedAdded))
			continue
		}
		if r.Target == Again {
			fmt.Fprintf(w, "| %s | %s | | | | | | %.0f | %s | %s | %s | %s |\n", r.Workload, r.Target,
				r.Rate, ms(r.P50), ms(r.P99), ms(r.AddedP50), ms(r.AddedP99))
			continue
		}
		d := byKey[r.Workload+"/direct"]
		fmt.Fprintf(w, "| %s | %s | %.0f | %.2f | %.0f | %s | %s | %.0f | %s | %s | %s | %s |\n", r.Workload, r.Target, r.Capacity, r.Capacity/d.Capacity,
			r.CPUPerRequest, us(r.Unloaded), us(r.UnloadedAdded), r.Rate, ms(r.P50), ms(r.P99), ms(r.AddedP50), ms(r.AddedP99))
	}
	fmt.Fprintln(w)
	for _, wl := range workloads {
		n, g, l, a := byKey[wl.name+"/nginx"], byKey[wl.name+"/"+GoProxy], byKey[wl.name+"/llmlabd"], byKey[wl.name+"/"+Again]
		fmt.Fprintf(w, "- %s: llmlabd capacity %.2fx nginx's (target >= 0.8); added p50 %s vs %s (%.2fx), added p99 %s vs %s (%.2fx) (target <= 1.25x)\n",
			wl.name, l.Capacity/n.Capacity, ms(l.AddedP50), ms(n.AddedP50), ratio(l.AddedP50, n.AddedP50), ms(l.AddedP99), ms(n.AddedP99), ratio(l.AddedP99, n.AddedP99))
		fmt.Fprintf(w, "  - the bare Go reverse proxy: capacity %.2fx nginx's, added p50 %.2fx and p99 %.2fx nginx's; llmlabd's capacity %.2fx its, CPU per request %.2fx its, added p50 %.2fx and p99 %.2fx its\n",
			g.Capacity/n.Capacity, ratio(g.AddedP50, n.AddedP50), ratio(g.AddedP99, n.AddedP99),
			l.Capacity/g.Capacity, l.CPUPerRequest/g.CPUPerRequest, ratio(l.AddedP50, g.AddedP50), ratio(l.AddedP99, g.AddedP99))
		fmt.Fprintf(w, "  - unloaded, added to a round trip: llmlabd %s, the bare Go reverse proxy %s, nginx %s\n",
			us(l.UnloadedAdded), us(g.UnloadedAdded), us(n.UnloadedAdded))
		fmt.Fprintf(w, "  - resolution: direct measured twice in the same open loop differs by %s at p50 and %s at p99\n",
			ms(a.AddedP50), ms(a.AddedP99))
		if st, ok := byKey[wl.name+"/"+Static]; ok {
			fmt.Fprintf(w, "  - one server hop, unloaded: a Go HTTP server answering at once (the fake engine, direct) %s per round trip, nginx answering by itself %s\n",
				us(byKey[wl.name+"/direct"].Unloaded), us(st.Unloaded))
		}
	}
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/1e6) }

func us(d time.Duration) string { return fmt.Sprintf("%.0fus", float64(d)/1e3) }
