package config

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/BurntSushi/toml"
)

var update = flag.Bool("update", false, "rewrite golden files")

// render prints a loaded config (or its error) for golden comparison.
func render(c *Config, err error) string {
	if err != nil {
		return "error:\n" + err.Error() + "\n"
	}
	var b strings.Builder
	b.WriteString("ok:\n")
	for _, d := range Diff(Default(), c) {
		fmt.Fprintf(&b, "%s\n", d)
	}
	for _, d := range c.Deprecated {
		fmt.Fprintf(&b, "deprecated: %s\n", d)
	}
	for _, n := range c.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	return b.String()
}

func TestGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.toml")
	if len(files) == 0 {
		t.Fatal("no testdata")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			got := render(Parse(f, data))
			golden := strings.TrimSuffix(f, ".toml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("Parse(%s) mismatch (-want +got):\n%s", f, diff)
			}
			if strings.HasPrefix(filepath.Base(f), "bad-") != strings.HasPrefix(got, "error:") {
				t.Errorf("%s: bad-* files must fail and others load; got %q", f, got)
			}
		})
	}
}

// The shipped, commented file (the package's /etc/llmlab/llmlab.toml) must
// load and say what the defaults say, but for one setting of the packaged
// GPU box: the engine runs as llmlab-vllm.service.
func TestShippedFileIsTheDefaults(t *testing.T) {
	path := "../../etc/llmlab.toml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(path, data)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Engine.Unit = "llmlab-vllm.service"
	if d := Diff(want, c); len(d) > 1 || (len(d) == 1 && !strings.HasPrefix(d[0].String(), "path:")) {
		t.Errorf("etc/llmlab.toml differs from the defaults: %v", d)
	}
}

func TestMissingFile(t *testing.T) {
	if c, err := Load("/nonexistent/llmlab.toml", false); err != nil || c == nil {
		t.Errorf("Load(default path missing) = %v, %v; want the defaults", c, err)
	}
	if _, err := Load("/nonexistent/llmlab.toml", true); err == nil || !strings.Contains(err.Error(), "/nonexistent/llmlab.toml") {
		t.Errorf("Load(named file missing) error = %v, want one naming the file", err)
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true, "[::1]:80": true, "localhost:1": true,
		"0.0.0.0:8080": false, ":8080": false, "10.1.2.3:80": false, "nonsense": false,
	} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.toml")
	for _, p := range files {
		data, _ := os.ReadFile(p)
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		if err != nil {
			if !strings.Contains(err.Error(), "fuzz.toml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		// Whatever loads must be usable.
		if c.Queue.MaxInflight < 1 || c.Queue.MinInflight > c.Queue.MaxInflight || c.Engine.URL == nil ||
			(c.Queue.Concurrency != "model" && c.Queue.Concurrency != "fixed") || c.Limits.MaxBodyBytes < 1024 || len(c.Engine.Models) == 0 {
			t.Fatalf("Parse accepted an unusable config: %+v", c)
		}
	})
}

// Every key of the schema appears in the shipped file, so that it shows
// an operator every setting.
func TestShippedFileHasEveryKey(t *testing.T) {
	data, err := os.ReadFile("../../etc/llmlab.toml")
	if err != nil {
		t.Fatal(err)
	}
	var r raw
	md, err := toml.Decode(string(data), &r)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, k := range md.Keys() {
		have[k.String()] = true
	}
	rt := reflect.TypeOf(raw{})
	for i := range rt.NumField() {
		sec := rt.Field(i)
		for j := range sec.Type.NumField() {
			key := sec.Tag.Get("toml") + "." + sec.Type.Field(j).Tag.Get("toml")
			if sec.Type.Field(j).Tag.Get("deprecated") != "" {
				if have[key] {
					t.Errorf("etc/llmlab.toml still sets the deprecated %s", key)
				}
				continue
			}
			if !have[key] {
				t.Errorf("etc/llmlab.toml lacks %s", key)
			}
		}
	}
}

// A file written for an earlier release (the shipped conffile set
// limits.max_best_of) still loads after an upgrade; the key is named as
// deprecated and does nothing.
func TestDeprecatedMaxBestOf(t *testing.T) {
	c, err := Parse("old.toml", []byte("[limits]\nmax_tokens = 512\nmax_best_of = 4\n"))
	if err != nil {
		t.Fatalf("a file with limits.max_best_of: %v, want it to load", err)
	}
	if c.Limits.MaxTokens != 512 {
		t.Fatalf("max_tokens = %d, want 512", c.Limits.MaxTokens)
	}
	if len(c.Deprecated) != 1 || !strings.Contains(c.Deprecated[0], "limits.max_best_of = 4") {
		t.Fatalf("Deprecated = %q, want limits.max_best_of named", c.Deprecated)
	}
	if c, _ := Parse("new.toml", []byte("[limits]\nmax_tokens = 512\n")); len(c.Deprecated) != 0 {
		t.Fatalf("Deprecated = %q for a file without deprecated keys", c.Deprecated)
	}
}

// A file written for the deleted adaptive law still loads after an
// upgrade: "adaptive" is read as "model", and queue.nominal_rps, which
// only that law read, is ignored; both are named as deprecated.
func TestDeprecatedAdaptive(t *testing.T) {
	c, err := Parse("old.toml", []byte("[queue]\nconcurrency = \"adaptive\"\nnominal_rps = 12.5\nmin_inflight = 8\n"))
	if err != nil {
		t.Fatalf("a file written for the adaptive law: %v, want it to load", err)
	}
	if !c.Queue.FromModel() || c.Queue.MinInflight != 8 {
		t.Fatalf("concurrency %q, min_inflight %d; want \"model\" and 8", c.Queue.Concurrency, c.Queue.MinInflight)
	}
	if len(c.Deprecated) != 2 || !strings.Contains(c.Deprecated[0], `queue.concurrency = "adaptive"`) || !strings.Contains(c.Deprecated[0], `"model"`) ||
		!strings.Contains(c.Deprecated[1], "queue.nominal_rps = 12.5") || !strings.Contains(c.Deprecated[1], "ignored") {
		t.Fatalf("Deprecated = %q, want queue.concurrency read as model and queue.nominal_rps ignored", c.Deprecated)
	}
	if _, err := Parse("bad.toml", []byte("[queue]\nconcurrency = \"auto\"\n")); err == nil ||
		!strings.Contains(err.Error(), `want "model"`) || strings.Contains(err.Error(), `"adaptive"`) {
		t.Fatalf("an unknown mode: err = %v, want the modes listed without \"adaptive\"", err)
	}
	for _, mode := range []string{"model", "fixed"} {
		if c, err := Parse("new.toml", []byte("[queue]\nconcurrency = \""+mode+"\"\n")); err != nil || len(c.Deprecated) != 0 {
			t.Fatalf("concurrency = %q: %v, deprecated %q; want it loaded without any", mode, err, c.Deprecated)
		}
	}
}
