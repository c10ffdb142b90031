// Package overhead measures what a proxy costs: the same load against a
// fake engine that answers at once, sent directly, through nginx (a
// reverse proxy with proxy_buffering off and keepalive to the engine),
// through a bare httputil.ReverseProxy (the Go stack llmlabd is built on,
// with nothing of llmlab's) and through llmlabd, all in one run on one
// machine.
//
// For each workload (short non-streamed answers, 200-token streams):
//   - capacity: a closed loop at fixed concurrency against each target, in
//     interleaved rounds; the median round per target is reported;
//   - added latency: an open loop at half of nginx's capacity against each
//     target; p50 and p99 minus direct's.
package overhead

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
)

// Options configure a run.
type Options struct {
	Llmlab      string // this binary, for the fake engine
	Llmlabd     string
	Nginx       string
	Concurrency int
	Duration    time.Duration
	Rounds      int
	Out         io.Writer
}

// Result is one target's figures for one workload.
type Result struct {
	Workload string
	Target   string
	Capacity float64 // requests/s, closed loop, median round
	// CPUPerRequest is the proxy's own CPU time per request in
	// microseconds (closed loop, median round; 0 for direct).
	CPUPerRequest float64
	Rate          float64 // open-loop offered rate
	P50, P99      time.Duration
	AddedP50      time.Duration
	AddedP99      time.Duration
	OpenErrors    int
}

// GoProxy names the bare httputil.ReverseProxy target in the report.
const GoProxy = "go-reverseproxy"

// ReverseProxy is the benchmark's Go reference: httputil.ReverseProxy
// with the standard transport, keeping as many idle connections to the
// engine as nginx's keepalive setting here, and nothing else.
func ReverseProxy(engine *url.URL) http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(engine)
			pr.SetXForwarded()
			if pr.Out.Body != nil && pr.Out.Body != http.NoBody {
				pr.Out.Body = closedIsEOF{pr.Out.Body}
			}
		},
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
		},
	}
}

// closedIsEOF works around golang/go#40747: the server closes a request
// body once the answer's headers are written, and http.Transport then
// reads that body once more (to check it ends where its length said) and
// tears down the connection to the engine in the middle of a streamed
// answer. A fast engine answers before that read, so without this about
// one stream in a thousand was cut here. llmlabd reads a request's body
// before it forwards it, so it never meets the problem.
type closedIsEOF struct{ io.ReadCloser }

func (b closedIsEOF) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, http.ErrBodyReadAfterClose) {
		err = io.EOF
	}
	return n, err
}

// warmConns is the client's connection pool per target, opened before each
// open-loop phase: more than a Poisson burst at half capacity keeps busy
// at once when the target keeps up.
const warmConns = 128

type workload struct {
	name      string
	stream    bool
	maxTokens int
}

// Run performs the measurement and writes a Markdown report to o.Out.
func Run(ctx context.Context, o Options) ([]Result, error) {
	dir, err := os.MkdirTemp("", "llmlab-overhead")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	enginePort, err := freePort()
	if err != nil {
		return nil, err
	}
	engineAddr := "127.0.0.1:" + enginePort
	stop, err := startProc(ctx, dir, "engine", o.Llmlab, "fake-engine", "--listen", engineAddr)
	if err != nil {
		return nil, err
	}
	defer stop()

	gwPort, _ := freePort()
	cfg := fmt.Sprintf(`[gateway]
listen = "127.0.0.1:%s"
[engine]
url = "http://%s"
models = ["m"]
[queue]
max_inflight = 256
max_queued = 4096
max_wait = "30s"
nominal_rps = 10000
[limits]
max_tokens = 1024
[metrics]
listen = ""
textfile = ""
[log]
format = "text"
access_log = false
`, gwPort, engineAddr)
	cfgPath := filepath.Join(dir, "llmlab.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	stopGw, gwPID, err := startProcPID(ctx, dir, "llmlabd", o.Llmlabd, "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	defer stopGw()

	nginxPort, _ := freePort()
	nginxConf := fmt.Sprintf(`worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream engine { server %[2]s; keepalive 256; }
  server {
    listen 127.0.0.1:%[3]s;
    location / {
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`, dir, engineAddr, nginxPort)
	nginxConfPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(nginxConfPath, []byte(nginxConf), 0o644); err != nil {
		return nil, err
	}
	stopNginx, nginxPID, err := startProcPID(ctx, dir, "nginx", o.Nginx, "-c", nginxConfPath, "-p", dir, "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	defer stopNginx()

	goPort, _ := freePort()
	stopGo, goPID, err := startProcPID(ctx, dir, "reverse-proxy", o.Llmlab, "reverse-proxy",
		"--listen", "127.0.0.1:"+goPort, "--engine-url", "http://"+engineAddr)
	if err != nil {
		return nil, err
	}
	defer stopGo()

	targets := []struct {
		name, url string
		pid       int
	}{
		{"direct", "http://" + engineAddr, 0},
		{"nginx", "http://127.0.0.1:" + nginxPort, nginxPID},
		{GoProxy, "http://127.0.0.1:" + goPort, goPID},
		{"llmlabd", "http://127.0.0.1:" + gwPort, gwPID},
	}
	for _, t := range targets {
		if err := waitUp(ctx, t.url); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
	}

	// Each target gets a pool of warmConns keep-alive connections, opened
	// before each open-loop phase and never exceeded: a request that finds
	// them all busy waits in the client, and that wait counts in its
	// latency. Without a cap, the open loop dials a connection for every
	// request outstanding at once, and on this CPU-bound machine a burst
	// of dials can feed itself (the client, the proxy and the engine all
	// pay for each one, which slows the answers, which opens more), so
	// the phase would measure that storm instead of the proxy.
	client := bench.NewClient(max(o.Concurrency, warmConns))
	client.Transport.(*http.Transport).MaxConnsPerHost = max(o.Concurrency, warmConns)
	var results []Result
	for _, w := range []workload{{"short, non-streamed (1 token)", false, 1}, {"200-token stream", true, 200}} {
		base := bench.Options{Stream: w.stream, MaxTokens: w.maxTokens, PromptTokens: 200, Model: "m",
			Duration: o.Duration, Warmup: time.Second}
		caps := map[string][]float64{}
		cpu := map[string][]float64{}
		for range o.Rounds {
			for _, t := range targets {
				opt := base
				opt.Target, opt.Concurrency = t.url, o.Concurrency
				before := cpuTicks(t.pid)
				samples, err := bench.Run(ctx, client, opt)
				ticks := cpuTicks(t.pid) - before
				if err != nil {
					return nil, err
				}
				s := bench.Summarize(samples, o.Duration, bench.SLO{Latency: time.Hour, MaxErrorRate: 1})
				if s.Failed > 0 {
					return nil, fmt.Errorf("%s, %s: %d failed requests (%v)", w.name, t.name, s.Failed, s.ByCode)
				}
				caps[t.name] = append(caps[t.name], s.RPS)
				// Warm-up requests used CPU too: count every request.
				cpu[t.name] = append(cpu[t.name], float64(ticks)*1e4/float64(len(samples)))
			}
		}
		rate := median(caps["nginx"]) / 2
		p50s, p99s := map[string][]float64{}, map[string][]float64{}
		errs := map[string]int{}
		for round := range o.Rounds {
			for _, t := range targets {
				// Open the pool's connections first, as a client with a
				// warm keep-alive pool has them. Not timed.
				warm := base
				warm.Target, warm.Concurrency, warm.Duration, warm.Warmup = t.url, warmConns, 500*time.Millisecond, 0
				if _, err := bench.Run(ctx, client, warm); err != nil {
					return nil, err
				}
				opt := base
				opt.Target, opt.Rate, opt.Poisson, opt.Seed = t.url, rate, true, uint64(round+1)
				samples, err := bench.Run(ctx, client, opt)
				if err != nil {
					return nil, err
				}
				s := bench.Summarize(samples, o.Duration, bench.SLO{Latency: time.Hour, MaxErrorRate: 1})
				p50s[t.name] = append(p50s[t.name], float64(s.Latency.P50))
				p99s[t.name] = append(p99s[t.name], float64(s.Latency.P99))
				errs[t.name] += s.Refused + s.Failed
			}
		}
		for _, t := range targets {
			p50, p99 := time.Duration(median(p50s[t.name])), time.Duration(median(p99s[t.name]))
			d50, d99 := time.Duration(median(p50s["direct"])), time.Duration(median(p99s["direct"]))
			results = append(results, Result{
				Workload: w.name, Target: t.name, Capacity: median(caps[t.name]), CPUPerRequest: median(cpu[t.name]), Rate: rate,
				P50: p50, P99: p99, AddedP50: p50 - d50, AddedP99: p99 - d99, OpenErrors: errs[t.name],
			})
		}
	}
	report(o.Out, o, results)
	return results, nil
}

func report(w io.Writer, o Options, rs []Result) {
	fmt.Fprintf(w, "closed loop at concurrency %d and open loop (Poisson) at half nginx's capacity, %d interleaved rounds of %s per target each; medians of the rounds\n\n",
		o.Concurrency, o.Rounds, o.Duration)
	fmt.Fprintln(w, "| workload | target | capacity req/s | x direct | proxy CPU us/req | open-loop rate | p50 | p99 | added p50 | added p99 |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	byKey := map[string]Result{}
	for _, r := range rs {
		byKey[r.Workload+"/"+r.Target] = r
	}
	for _, r := range rs {
		d := byKey[r.Workload+"/direct"]
		fmt.Fprintf(w, "| %s | %s | %.0f | %.2f | %.0f | %.0f | %s | %s | %s | %s |\n", r.Workload, r.Target, r.Capacity, r.Capacity/d.Capacity,
			r.CPUPerRequest, r.Rate, ms(r.P50), ms(r.P99), ms(r.AddedP50), ms(r.AddedP99))
	}
	fmt.Fprintln(w)
	for _, wl := range []string{"short, non-streamed (1 token)", "200-token stream"} {
		n, g, l := byKey[wl+"/nginx"], byKey[wl+"/"+GoProxy], byKey[wl+"/llmlabd"]
		fmt.Fprintf(w, "- %s: llmlabd capacity %.2fx nginx's (target >= 0.8); added p50 %s vs %s (%.2fx), added p99 %s vs %s (%.2fx) (target <= 1.25x)\n",
			wl, l.Capacity/n.Capacity, ms(l.AddedP50), ms(n.AddedP50), ratio(l.AddedP50, n.AddedP50), ms(l.AddedP99), ms(n.AddedP99), ratio(l.AddedP99, n.AddedP99))
		fmt.Fprintf(w, "  - the bare Go reverse proxy: capacity %.2fx nginx's, added p50 %.2fx and p99 %.2fx nginx's; llmlabd's capacity %.2fx its, CPU per request %.2fx its\n",
			g.Capacity/n.Capacity, ratio(g.AddedP50, n.AddedP50), ratio(g.AddedP99, n.AddedP99), l.Capacity/g.Capacity, l.CPUPerRequest/g.CPUPerRequest)
	}
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/1e6) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port, nil
}

// startProc starts a helper process with its output in dir/name.log and
// returns a function that stops it.
func startProc(ctx context.Context, dir, name, bin string, args ...string) (func(), error) {
	stop, _, err := startProcPID(ctx, dir, name, bin, args...)
	return stop, err
}

// startProcPID is startProc that also returns the process id.
func startProcPID(ctx context.Context, dir, name, bin string, args ...string) (func(), int, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, 0, err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, 0, fmt.Errorf("starting %s: %w", name, err)
	}
	return func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
	}, cmd.Process.Pid, nil
}

// cpuTicks returns the user and system CPU time, in clock ticks (1/100 s),
// of pid and its children (nginx's workers).
func cpuTicks(pid int) int64 {
	if pid == 0 {
		return 0
	}
	total := int64(0)
	pids := []int{pid}
	if kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		for _, f := range strings.Fields(string(kids)) {
			if k, err := strconv.Atoi(f); err == nil {
				pids = append(pids, k)
			}
		}
	}
	for _, p := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		// Fields after the command name, which is in parentheses.
		rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
		f := strings.Fields(rest)
		if len(f) > 13 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			sy, _ := strconv.ParseInt(f[12], 10, 64)
			total += u + sy
		}
	}
	return total
}

// waitUp waits until url answers HTTP at all.
func waitUp(ctx context.Context, url string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url + "/v1/models")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not answering at %s: %w", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
