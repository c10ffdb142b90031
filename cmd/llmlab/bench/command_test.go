package bench

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/sim"
)

func startSim(t *testing.T, ctx context.Context, maxSeqs int) string {
	t.Helper()
	p := sim.Profiles["instant"]
	p.StepFixed = 2 * time.Millisecond
	srv := sim.NewServer(sim.Options{Model: "m", Engine: sim.Config{Profile: p, MaxNumSeqs: maxSeqs, MaxNumBatchedTokens: 8192, MaxModelLen: 1024, KVBlocks: 10000}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ctx, l)
	return "http://" + l.Addr().String()
}

// A sweep with a baseline: alternating phases, a table, results on disk.
func TestBenchBaselineSweep(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b := startSim(t, ctx, 64), startSim(t, ctx, 64)
	dir := t.TempDir()
	f := benchFlags{
		o: Options{Target: a, Model: "m", Stream: true, PromptTokens: 200, MaxTokens: 20, Poisson: true,
			Warmup: 100 * time.Millisecond, Duration: 600 * time.Millisecond, Timeout: 5 * time.Second},
		rates: []float64{20, 40}, baseline: b, slo: SLO{Latency: 5 * time.Second, MaxErrorRate: 0.001},
		targetMetrics: a + "/metrics", baseMetrics: b + "/metrics", drainTimeout: 5 * time.Second, results: dir,
	}
	var out bytes.Buffer
	if code := runBench(ctx, f, &out); code != 0 {
		t.Fatalf("exit %d\n%s", code, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var sides []string
	for _, l := range lines {
		if strings.HasPrefix(l, "target ") || strings.HasPrefix(l, "baseline ") {
			sides = append(sides, strings.Fields(l)[0]+"@"+strings.Fields(l)[1])
			if !strings.Contains(l, "pass") {
				t.Errorf("phase failed: %s", l)
			}
		}
	}
	if want := "target@20.00/s baseline@20.00/s target@40.00/s baseline@40.00/s"; strings.Join(sides, " ") != want {
		t.Fatalf("phases %v, want %s\n%s", sides, want, out.String())
	}
	for _, name := range []string{"command.txt", "results.json", "results.csv", "latency-vs-load.svg", "latency-distribution.svg"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Size() == 0 {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// --sides measures several servers in turn at each rate, each drained by
// its own /metrics.
func TestBenchSides(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, b, c := startSim(t, ctx, 64), startSim(t, ctx, 64), startSim(t, ctx, 64)
	sides, err := parseSides("engine="+a+",fixed="+b+",model="+c, "fixed="+b+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if sides[0].metrics != a+"/metrics" || sides[1].metrics != b+"/metrics" {
		t.Fatalf("sides %+v", sides)
	}
	f := benchFlags{
		o: Options{Target: a, Model: "m", Stream: true, PromptTokens: 200, MaxTokens: 20, Poisson: true,
			Warmup: 100 * time.Millisecond, Duration: 400 * time.Millisecond, Timeout: 5 * time.Second},
		rates: []float64{20, 40}, sides: sides, slo: SLO{Latency: 5 * time.Second, MaxErrorRate: 0.001},
		drainTimeout: 5 * time.Second,
	}
	var out bytes.Buffer
	if code := runBench(ctx, f, &out); code != 0 {
		t.Fatalf("exit %d\n%s", code, out.String())
	}
	var got []string
	for _, l := range strings.Split(out.String(), "\n") {
		if fs := strings.Fields(l); len(fs) > 1 && strings.HasSuffix(fs[1], "/s") {
			got = append(got, fs[0]+"@"+fs[1])
		}
	}
	want := "engine@20.00/s fixed@20.00/s model@20.00/s engine@40.00/s fixed@40.00/s model@40.00/s"
	if strings.Join(got, " ") != want {
		t.Fatalf("phases %v, want %s\n%s", got, want, out.String())
	}
	if _, err := parseSides("engine", ""); err == nil {
		t.Error("a side without a URL was accepted")
	}
}
