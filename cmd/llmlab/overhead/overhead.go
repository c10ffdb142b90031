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
//   - unloaded round trip: one request at a time, the median minus
//     direct's;
//   - added latency: an open loop at half of nginx's capacity against each
//     target; p50 and p99 minus direct's, with direct measured twice to
//     show how far apart two measurements of the same thing land.
//
// The latency phases give the targets the load in short turns (a second,
// or the phase duration when shorter), many per target, and pool each
// target's samples.
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
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
	"github.com/llmlab/llmlab/cmd/llmlab/daemonproc"
	"github.com/llmlab/llmlab/internal/childproc"
	"github.com/llmlab/llmlab/internal/freeport"
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
	// Unloaded is the median round trip with one request at a time;
	// UnloadedAdded is that minus direct's.
	Unloaded, UnloadedAdded time.Duration
	Rate                    float64 // open-loop offered rate
	P50, P99                time.Duration
	AddedP50                time.Duration
	AddedP99                time.Duration
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

	// The fake engine and the bare reverse proxy bind a free port and
	// print it, llmlabd logs it; nginx can only be told a number.
	eng, engineAddr, err := startServing(ctx, dir, "engine", o.Llmlab, "fake-engine")
	if err != nil {
		return nil, err
	}
	defer eng.Stop(stopGrace)

	gw, err := daemonproc.Run(ctx, o.Llmlabd, dir, func(listen string) string {
		return fmt.Sprintf(`[gateway]
listen = %q
[engine]
url = "http://%s"
models = ["m"]
[queue]
max_inflight = 256
max_queued = 4096
max_wait = "30s"
[limits]
max_tokens = 1024
[metrics]
listen = ""
textfile = ""
[log]
format = "text"
access_log = false
`, listen, engineAddr)
	})
	if err != nil {
		return nil, err
	}
	defer gw.Proc.Stop(stopGrace)

	nginxAddr, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
	staticAddr, err := freeport.Addr()
	if err != nil {
		return nil, err
	}
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
    listen %[4]s;
    location / {
      default_type application/json;
      return 200 '%[5]s';
    }
  }
  server {
    listen %[3]s;
    location / {
      proxy_pass http://engine;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`, dir, engineAddr, nginxAddr, staticAddr, staticAnswer)
	nginxConfPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(nginxConfPath, []byte(nginxConf), 0o644); err != nil {
		return nil, err
	}
	nginx, err := childproc.Start(ctx, dir, "nginx", o.Nginx, "-c", nginxConfPath, "-p", dir, "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	defer nginx.Stop(stopGrace)

	goProxy, goAddr, err := startServing(ctx, dir, "reverse-proxy", o.Llmlab, "reverse-proxy", "--engine-url", "http://"+engineAddr)
	if err != nil {
		return nil, err
	}
	defer goProxy.Stop(stopGrace)

	targets := []target{
		{"direct", "http://" + engineAddr, 0},
		{"nginx", "http://" + nginxAddr, nginx.PID()},
		{GoProxy, "http://" + goAddr, goProxy.PID()},
		{"llmlabd", gw.URL, gw.PID()},
	}
	for _, t := range targets {
		if err := waitUp(ctx, t.url); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
	}

	// Each target gets a pool of warmConns keep-alive connections, opened
	// before the open loop and never exceeded: a request that finds them
	// all busy waits in the client, and that wait counts in its latency.
	// Without a cap, the open loop dials a connection for every request
	// outstanding at once, and on this CPU-bound machine a burst of dials
	// can feed itself (the client, the proxy and the engine all pay for
	// each one, which slows the answers, which opens more), so the phase
	// would measure that storm instead of the proxy.
	client := bench.NewClient(max(o.Concurrency, warmConns))
	client.Transport.(*http.Transport).MaxConnsPerHost = max(o.Concurrency, warmConns)
	m := measurer{o: o, client: client, slot: min(maxSlot, o.Duration)}
	var results []Result
	for _, w := range workloads {
		base := bench.Options{Stream: w.stream, MaxTokens: w.maxTokens, PromptTokens: 200, Model: "m",
			Duration: o.Duration, Warmup: min(time.Second, o.Duration)}
		caps, cpu, err := m.capacity(ctx, base, targets)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.name, err)
		}
		alone := targets
		if !w.stream {
			// A round trip to nginx answering by itself, beside direct's
			// to the fake engine (a Go HTTP server answering at once):
			// what one server hop costs in each.
			alone = append(slices.Clone(targets), target{Static, "http://" + staticAddr, 0})
		}
		unloaded, err := m.latency(ctx, base, alone, 0, m.o.Duration)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.name, err)
		}
		rate := median(caps["nginx"]) / 2
		// The open loop measures direct twice: how far two measurements
		// of the same thing land apart is the resolution of the others.
		open, err := m.latency(ctx, base, append(slices.Clone(targets), target{Again, targets[0].url, 0}), rate, time.Duration(m.o.Rounds)*m.o.Duration)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", w.name, err)
		}
		d := open["direct"]
		for _, t := range append(slices.Clone(targets), target{name: Again}) {
			l := open[t.name]
			results = append(results, Result{
				Workload: w.name, Target: t.name, Capacity: median(caps[t.name]), CPUPerRequest: median(cpu[t.name]),
				Unloaded: unloaded[t.name].p50, UnloadedAdded: unloaded[t.name].p50 - unloaded["direct"].p50,
				Rate: rate, P50: l.p50, P99: l.p99, AddedP50: l.p50 - d.p50, AddedP99: l.p99 - d.p99,
			})
		}
		if u, ok := unloaded[Static]; ok {
			results = append(results, Result{Workload: w.name, Target: Static, Unloaded: u.p50, UnloadedAdded: u.p50 - unloaded["direct"].p50})
		}
	}
	report(o.Out, o, m.slot, results)
	return results, nil
}

// Again names the second measurement of direct access in the open loop.
const Again = "direct, again"

// Static names nginx answering by itself, measured unloaded only.
const Static = "nginx, answering itself"

// staticAnswer is nginx's own answer: the fake engine's to a one-token
// completion.
const staticAnswer = `{"id":"cmpl-test","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" tok","finish_reason":"length"}],"usage":{"prompt_tokens":10,"total_tokens":11,"completion_tokens":1}}`

type target struct {
	name, url string
	pid       int
}

var workloads = []workload{{"short, non-streamed (1 token)", false, 1}, {"200-token stream", true, 200}}

// maxSlot is how long one target takes the load in turn in the latency
// phases. Short turns, many of them, spread the machine's slow moments
// (another tenant, a timer, the collector of one of the processes) evenly
// over the targets; one long turn per target would hand each moment to
// whichever target had the load then.
const maxSlot = time.Second

type measurer struct {
	o      Options
	client *http.Client
	slot   time.Duration
}

// capacity runs the closed loop: o.Rounds interleaved rounds per target.
// It returns each round's requests/s and the proxy's CPU microseconds per
// request.
func (m measurer) capacity(ctx context.Context, base bench.Options, targets []target) (caps, cpu map[string][]float64, err error) {
	caps, cpu = map[string][]float64{}, map[string][]float64{}
	for range m.o.Rounds {
		for _, t := range targets {
			opt := base
			opt.Target, opt.Concurrency = t.url, m.o.Concurrency
			before := cpuTicks(t.pid)
			samples, err := bench.Run(ctx, m.client, opt)
			ticks := cpuTicks(t.pid) - before
			if err != nil {
				return nil, nil, err
			}
			s := bench.Summarize(samples, m.o.Duration, bench.SLO{Latency: time.Hour, MaxErrorRate: 1})
			if s.Failed > 0 {
				return nil, nil, fmt.Errorf("%s: %d failed requests (%v)", t.name, s.Failed, s.ByCode)
			}
			caps[t.name] = append(caps[t.name], s.RPS)
			// Warm-up requests used CPU too: count every request.
			cpu[t.name] = append(cpu[t.name], float64(ticks)*1e4/float64(len(samples)))
		}
	}
	return caps, cpu, nil
}

type latencies struct{ p50, p99 time.Duration }

// latency measures each target's latency, in turns of one slot per
// target until each has had total, and pools each target's samples. rate 0 is one request at a time (the unloaded round trip);
// otherwise an open loop of Poisson arrivals at rate.
func (m measurer) latency(ctx context.Context, base bench.Options, targets []target, rate float64, total time.Duration) (map[string]latencies, error) {
	if rate > 0 {
		// Open the pool's connections first, as a client with a warm
		// keep-alive pool has them. Not timed.
		for _, t := range targets {
			warm := base
			warm.Target, warm.Concurrency, warm.Duration, warm.Warmup = t.url, warmConns, 500*time.Millisecond, 0
			if _, err := bench.Run(ctx, m.client, warm); err != nil {
				return nil, err
			}
		}
	}
	pooled := map[string][]bench.Sample{}
	for turn := range max(1, int(total/m.slot)) {
		for _, t := range targets {
			opt := base
			opt.Target, opt.Duration, opt.Warmup = t.url, m.slot, 0
			if rate > 0 {
				opt.Rate, opt.Poisson, opt.Seed = rate, true, uint64(turn+1)
			} else {
				opt.Concurrency = 1
			}
			samples, err := bench.Run(ctx, m.client, opt)
			if err != nil {
				return nil, err
			}
			pooled[t.name] = append(pooled[t.name], samples...)
		}
	}
	out := map[string]latencies{}
	for name, samples := range pooled {
		s := bench.Summarize(samples, m.slot, bench.SLO{Latency: time.Hour, MaxErrorRate: 1})
		// Percentiles are of answered requests only: a refused or failed
		// one would leave them looking better than the target was.
		if s.Refused+s.Failed > 0 {
			return nil, fmt.Errorf("%s: %d refused and %d failed requests (%v)", name, s.Refused, s.Failed, s.ByCode)
		}
		out[name] = latencies{p50: s.Latency.P50, p99: s.Latency.P99}
	}
	return out, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// stopGrace is how long a helper has to exit after the interrupt before
// it is killed.
const stopGrace = 5 * time.Second

// startServing starts one of llmlab's own servers (fake-engine,
// reverse-proxy) on a port it picks, and reads back the address it prints
// ("... listening on ADDR").
func startServing(ctx context.Context, dir, name, bin string, args ...string) (*childproc.Proc, string, error) {
	p, err := childproc.Start(ctx, dir, name, bin, append(append([]string{}, args...), "--listen", freeport.Any)...)
	if err != nil {
		return nil, "", err
	}
	const marker = "listening on "
	line, err := p.WaitLine(10*time.Second, func(l string) bool { return strings.Contains(l, marker) })
	if err != nil {
		p.Stop(stopGrace)
		return nil, "", err
	}
	return p, strings.TrimSpace(line[strings.LastIndex(line, marker)+len(marker):]), nil
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
