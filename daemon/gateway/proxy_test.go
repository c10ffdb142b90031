package gateway

import "testing"

func TestFindUsage(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want usage
		ok   bool
	}{
		{`{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}`, usage{3, 1, 4}, true},
		{"data: {\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":200,\"total_tokens\":400,\"completion_tokens\":200,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\ndata: [DONE]\n\n", usage{200, 200, 400}, true},
		{"data: {\"choices\":[],\"usage\":null}\n\ndata: [DONE]\n\n", usage{}, false},
		{`{"choices":[]}`, usage{}, false},
		{`{"usage":{"prompt_tokens":3,`, usage{}, false}, // cut short
	} {
		got, ok := findUsage([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("findUsage(%q) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
