// The two editors --apply uses on the operator's files: keys set in a
// TOML file's text, and the tuned flags taken out of an environment file.

package tune

import (
	"slices"
	"strings"
)

// tunedFlags are vLLM's flags that llmlabd now sets; the same flags in
// LLMLAB_VLLM_ARGS would win over them (llmlab-engine passes those last).
var tunedFlags = []string{"--max-num-seqs", "--max-num-batched-tokens", "--max-model-len", "--gpu-memory-utilization"}

// SetKeys sets keys in a TOML file's text, keeping its comments and every
// other line: a key's line is replaced where the section has it, else the
// key is added after the section's last key; a missing section is added at
// the end.
func SetKeys(text string, sets map[string][][2]string, order []string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for _, sec := range order {
		header, end := -1, len(lines)
		for i, l := range lines {
			t := strings.TrimSpace(l)
			if t == "["+sec+"]" {
				header = i
				continue
			}
			if header >= 0 && strings.HasPrefix(t, "[") {
				end = i
				break
			}
		}
		if header < 0 {
			lines = append(lines, "", "["+sec+"]")
			header, end = len(lines)-1, len(lines)
		}
		for _, kv := range sets[sec] {
			line := kv[0] + " = " + kv[1]
			found, lastKey := false, header
			for i := header + 1; i < end; i++ {
				t := strings.TrimSpace(lines[i])
				if t == "" || strings.HasPrefix(t, "#") {
					continue
				}
				lastKey = i
				if k, _, ok := strings.Cut(t, "="); ok && strings.TrimSpace(k) == kv[0] {
					lines[i], found = line, true
				}
			}
			if !found {
				lines = slices.Insert(lines, lastKey+1, line)
				end++
			}
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// DropEngineFlags takes the tuned flags (and their values) out of an
// environment file's LLMLAB_VLLM_ARGS, and says which it took.
func DropEngineFlags(env string) (string, []string) {
	lines := strings.Split(env, "\n")
	var removed []string
	for i, l := range lines {
		name, value, ok := strings.Cut(l, "=")
		if !ok || strings.TrimSpace(name) != "LLMLAB_VLLM_ARGS" {
			continue
		}
		quote := ""
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			quote, value = value[:1], value[1:len(value)-1]
		}
		var kept []string
		f := strings.Fields(value)
		for j := 0; j < len(f); j++ {
			flag, _, hasValue := strings.Cut(f[j], "=")
			if slices.Contains(tunedFlags, flag) {
				removed = append(removed, f[j])
				if !hasValue && j+1 < len(f) {
					removed = append(removed, f[j+1])
					j++
				}
				continue
			}
			kept = append(kept, f[j])
		}
		lines[i] = name + "=" + quote + strings.Join(kept, " ") + quote
	}
	return strings.Join(lines, "\n"), removed
}
