package daemonproc

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestServingLine(t *testing.T) {
	for _, c := range []struct {
		name, line string
		want       map[string]string
	}{
		{"text", `time=2026-12-07T15:00:03.000Z level=INFO msg=serving api=127.0.0.1:41234 socket_activated=false metrics=127.0.0.1:41235 agent="" engine=http://127.0.0.1:8000 config=/tmp/x/llmlab.toml api_keys=0`,
			map[string]string{"api": "127.0.0.1:41234", "metrics": "127.0.0.1:41235", "agent": ""}},
		{"json", `{"time":"2026-12-07T15:00:03Z","level":"INFO","msg":"serving","api":"127.0.0.1:41234","socket_activated":false,"metrics":"","agent":""}`,
			map[string]string{"api": "127.0.0.1:41234", "metrics": "", "agent": ""}},
		{"several api listeners", `level=INFO msg=serving api=127.0.0.1:1,[::1]:1 metrics=""`,
			map[string]string{"api": "127.0.0.1:1", "metrics": ""}},
		{"another line", `level=INFO msg=reloaded changes=""`, nil},
		{"a line that mentions serving", `level=WARN msg="not serving yet" api=127.0.0.1:1`, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := servingLine(c.line)
			if c.want == nil {
				if got != nil {
					t.Errorf("servingLine(%q) = %v, want nil", c.line, got)
				}
				return
			}
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("servingLine(%q)[%q] = %q, want %q\n%s", c.line, k, got[k], v, cmp.Diff(c.want, got))
				}
			}
		})
	}
}
