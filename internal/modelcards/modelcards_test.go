package modelcards

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestMaxModelLen(t *testing.T) {
	for _, c := range []struct {
		name, body string
		want       int
	}{
		{"vllm", `{"object":"list","data":[{"id":"Qwen/Qwen2.5-0.5B-Instruct","object":"model","max_model_len":4096}]}`, 4096},
		{"the smallest of several", `{"data":[{"id":"a","max_model_len":8192},{"id":"b","max_model_len":2048},{"id":"c"}]}`, 2048},
		{"no context length (not vLLM)", `{"data":[{"id":"m"}]}`, 0},
		{"no models", `{"data":[]}`, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := Parse(strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			if got := l.MaxModelLen(); got != c.want {
				t.Errorf("Parse(%s).MaxModelLen() = %d, want %d", c.body, got, c.want)
			}
		})
	}
}

func TestFetch(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/models" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(`{"data":[{"id":"m","max_model_len":1024}]}`))
	}))
	defer srv.Close()
	l, err := Fetch(t.Context(), srv.Client(), srv.URL+"/v1/models")
	if err != nil || l.MaxModelLen() != 1024 || len(l.Data) != 1 || l.Data[0].ID != "m" {
		t.Errorf("Fetch = %+v, %v; want one card, m, 1024", l, err)
	}
	if _, err := Fetch(t.Context(), srv.Client(), srv.URL+"/elsewhere"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Fetch of a 404 = %v, want an error naming the status", err)
	}
}
