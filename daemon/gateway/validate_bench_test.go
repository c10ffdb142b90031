package gateway

import (
	"strings"
	"testing"
)

// BenchmarkValidate measures the validator on the fixed workload's
// request (a 200-word prompt).
func BenchmarkValidate(b *testing.B) {
	body := []byte(`{"model":"m","prompt":"Write` + strings.Repeat(" word", 199) + `","max_tokens":200,"temperature":0,"stream":true}`)
	lim := Limits{MaxTokens: 1024, MaxN: 4, Models: []string{"m"}}
	b.ReportAllocs()
	for b.Loop() {
		if _, inv := validate(routeCompletions, body, lim, false); inv != nil {
			b.Fatal(inv)
		}
	}
}
