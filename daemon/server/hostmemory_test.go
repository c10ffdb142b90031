package server

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

const gib = 1 << 30

func writeMeminfo(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// /proc/meminfo's two lines that matter, in kB; anything else in the
// format is an error that names the file.
func TestReadMeminfo(t *testing.T) {
	for _, tc := range []struct {
		name, text   string
		avail, total uint64
		err          string
	}{
		{"linux", "MemTotal:       16318412 kB\nMemFree:         1190924 kB\nMemAvailable:    9203520 kB\nBuffers:          512000 kB\n", 9203520 << 10, 16318412 << 10, ""},
		{"no MemAvailable (Linux before 3.14)", "MemTotal:       16318412 kB\nMemFree:         1190924 kB\n", 0, 0, "no MemAvailable"},
		{"not kB", "MemTotal: 16 GB\nMemAvailable: 9 GB\n", 0, 0, "want a number of kB"},
		{"not a number", "MemTotal: x kB\nMemAvailable: 9 kB\n", 0, 0, "MemTotal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			avail, total, err := readMeminfo(writeMeminfo(t, tc.text))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("readMeminfo = %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil || avail != tc.avail || total != tc.total {
				t.Fatalf("readMeminfo = %d, %d, %v; want %d, %d", avail, total, err, tc.avail, tc.total)
			}
		})
	}
	if _, _, err := readMeminfo(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("readMeminfo of a missing file: no error")
	}
}

// Level 1 is chosen only where the host's available memory holds the
// engine's GPU memory (the bound on its weights) with a tenth of the
// host's memory to spare; otherwise, or when the host's memory cannot be
// read, the reason is given and the engine sleeps at level 2. Without an
// NVML bound, level 1 goes ahead unchecked.
func TestHostHoldsWeights(t *testing.T) {
	host16 := func(availGiB uint64) string {
		return fmt.Sprintf("MemTotal: %d kB\nMemAvailable: %d kB\n", 16<<20, availGiB<<20)
	}
	for _, tc := range []struct {
		name     string
		meminfo  string // "" : no file
		engine   func() (uint64, bool)
		holds    bool
		mentions string
	}{
		{"4 GiB card on a 16 GiB host with 8 free", host16(8), func() (uint64, bool) { return 36 * gib / 10, true }, true, ""},
		{"5.6 GiB needed, 5 free", host16(5), func() (uint64, bool) { return 4 * gib, true }, false, "the host has 5.00 GiB available (MemAvailable) of 16.00 GiB; sleep level 1 would copy up to 4.00 GiB"},
		{"exactly the spare left", host16(6), func() (uint64, bool) { return 44 * gib / 10, true }, true, ""},
		{"no NVML", host16(1), nil, true, ""},
		{"no reading of the engine", host16(1), func() (uint64, bool) { return 0, false }, true, ""},
		{"host memory unreadable", "", func() (uint64, bool) { return gib, true }, false, "cannot be read"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _, _ := newTestDaemon(t, testConfig())
			d.host = hostMemory{meminfo: filepath.Join(t.TempDir(), "missing"), engineGPU: tc.engine}
			if tc.meminfo != "" {
				d.host.meminfo = writeMeminfo(t, tc.meminfo)
			}
			err := d.hostHoldsWeights(context.Background())
			if (err == nil) != tc.holds || (err != nil && !strings.Contains(err.Error(), tc.mentions)) {
				t.Fatalf("hostHoldsWeights = %v; want holds %v (%q)", err, tc.holds, tc.mentions)
			}
		})
	}
}

// The supervisor's sleep calls, as the engine sees them: a sleep names its
// level and mode=wait; a wake from level 1 is a bare /wake_up; one from
// level 2 wakes the weights' memory, reloads the weights, then wakes the
// KV cache, in that order (docs/features/sleep_mode.md): a bare wake would
// resume the scheduler on discarded weights.
func TestEngineSleepCalls(t *testing.T) {
	var mu sync.Mutex
	var calls []string
	eng := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := make([]byte, 256)
		n, _ := r.Body.Read(body)
		mu.Lock()
		calls = append(calls, strings.TrimSpace(r.Method+" "+r.URL.RequestURI()+" "+string(body[:n])))
		mu.Unlock()
	}))
	t.Cleanup(eng.Close)
	d, _, _ := newTestDaemon(t, testConfig(`engine.url = "`+eng.URL+`"`, `engine.command = ["true"]`, `engine.sleep_after = "1m"`))
	sc := d.supervisorConfig(d.st.cfgNow())
	ctx := context.Background()
	for _, f := range []func() error{
		func() error { return sc.Sleep(ctx, 1) },
		func() error { return sc.WakeUp(ctx, 1) },
		func() error { return sc.Sleep(ctx, 2) },
		func() error { return sc.WakeUp(ctx, 2) },
	} {
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		"POST /sleep?level=1&mode=wait",
		"POST /wake_up",
		"POST /sleep?level=2&mode=wait",
		"POST /wake_up?tags=weights",
		`POST /collective_rpc {"method":"reload_weights"}`,
		"POST /wake_up?tags=kv_cache",
	}
	if !slices.Equal(calls, want) {
		t.Fatalf("the engine saw %q, want %q", calls, want)
	}
}
