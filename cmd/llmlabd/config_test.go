package main_test

// Integration: the config llmlabd starts with: an old file's keys, a bad
// file, and flags with no file.

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/llmlab/llmlab/internal/fakeengine"
)

// A file written for the deleted adaptive law still starts llmlabd, in
// the model mode, and each load of it (the start and a reload) warns,
// naming the file, the key and the value.
func TestAdaptiveConfigReadAsModel(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	path := writeConfig(t, baseConfig(es.URL, "concurrency = \"adaptive\"\nnominal_rps = 8"))
	d := start(t, nil, nil, "--config", path)
	if resp, body := post(t, d.api+"/v1/completions", `{"model":"m","prompt":"x","max_tokens":5}`); resp.StatusCode != 200 {
		t.Fatalf("request: %d %s", resp.StatusCode, body)
	}
	resp, err := http.Get(d.api + "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Limits struct {
			Concurrency string `json:"concurrency"`
		} `json:"limits"`
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Limits.Concurrency != "model" {
		t.Errorf("/status concurrency %q, want \"model\"", st.Limits.Concurrency)
	}
	warned := func() int {
		n := 0
		for _, l := range strings.Split(d.logs.String(), "\n") {
			if strings.Contains(l, "level=WARN") && strings.Contains(l, "deprecated setting") && strings.Contains(l, "config="+path) &&
				strings.Contains(l, `queue.concurrency = \"adaptive\": read as \"model\"`) {
				n++
			}
		}
		return n
	}
	if warned() != 1 || !strings.Contains(d.logs.String(), "queue.nominal_rps = 8: obsolete, ignored") {
		t.Fatalf("no warning at start naming the file, queue.concurrency and queue.nominal_rps:\n%s", d.logs.String())
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "msg=reloaded")
	if warned() != 2 {
		t.Fatalf("no warning on reload:\n%s", d.logs.String())
	}
}

func TestBadConfigStops(t *testing.T) {
	path := writeConfig(t, "[queue]\nmax_wait = \"soon\"\n")
	out, err := exec.Command(binary, "--config", path).CombinedOutput()
	if err == nil {
		t.Fatal("llmlabd started with a bad config")
	}
	if !strings.Contains(string(out), path) || !strings.Contains(string(out), "queue.max_wait") || !strings.Contains(string(out), `"soon"`) {
		t.Errorf("error does not name file, key and value: %s", out)
	}
}

func TestNoConfigFileWithFlags(t *testing.T) {
	es := httptest.NewServer(&fakeengine.Engine{})
	defer es.Close()
	// No --config: the default file need not exist, flags are enough.
	d := start(t, nil, nil, "--listen", "127.0.0.1:0", "--engine-url", es.URL, "--metrics-listen", "127.0.0.1:0")
	resp, body := post(t, d.api+"/v1/completions", `{"prompt":"x","max_tokens":2}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}
