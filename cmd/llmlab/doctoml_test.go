package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/llmlab/llmlab/cmd/llmlab/tune"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/server"
)

// Every TOML snippet the docs give an operator loads once applied as the
// docs say: each of its keys set in place in the shipped etc/llmlab.toml,
// with tune.SetKeys, the editor of llmlab tune-engine --apply (a key's
// line replaced in its section, a key the section lacks added under it, a
// section the file lacks added; never a second [section], which TOML
// refuses), and the result loaded as llmlab check-config loads it
// (server.LoadConfig: the file, then its keys file). Each key is then in
// effect with the snippet's value (config.Show).
//
// The snippets: README.md's and docs/'s ```toml blocks and their inline
// `section.key = value` code spans, etc/tuning/*.toml (installed to be
// applied so) and the best.toml that tune-engine wrote under docs/tuning/.
// A key that needs another the doc names beside the snippet gets it from
// snippetNotes, which also checks the doc still says so and that without
// it the file is refused as the doc tells.
func TestDocTOMLSnippets(t *testing.T) {
	root := filepath.Join("..", "..")
	shipped, err := os.ReadFile(filepath.Join(root, "etc", "llmlab.toml"))
	if err != nil {
		t.Fatal(err)
	}
	snippets := docSnippets(t, root)
	if len(snippets) < 20 {
		t.Fatalf("found %d TOML snippets in the docs, want at least 20 (is the extractor broken?)", len(snippets))
	}
	keysFile := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keysFile, []byte("doc sk-0123456789abcdef\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	used, skipped, applied := map[int]bool{}, map[string]bool{}, 0
	for _, s := range snippets {
		where := fmt.Sprintf("%s:%d", s.file, s.line)
		sets, err := snippetKeys(s.text)
		if err != nil {
			t.Errorf("%s: the snippet is not TOML: %v\n%s", where, err, s.text)
			continue
		}
		if why, ok := skippedSnippets[s.file+" "+sets[0].name()]; ok {
			skipped[s.file+" "+sets[0].name()] = true
			t.Logf("%s: skipped: %s", where, why)
			continue
		}
		doc, _ := os.ReadFile(filepath.Join(root, s.file))
		for i, n := range snippetNotes {
			if n.doc != s.file || !slices.ContainsFunc(sets, func(kv snippetKey) bool { return kv.name() == n.key }) {
				continue
			}
			used[i] = true
			if !strings.Contains(oneLine(string(doc)), oneLine(n.says)) {
				t.Errorf("%s: %s no longer says %q, which the test relies on for %s", where, s.file, n.says, n.key)
			}
			without := slices.Clone(sets)
			switch {
			case n.with != "":
				sets = append(sets, snippetKey{section(n.with), key(n.with), fmt.Sprintf("%q", keysFile)})
			case n.without != "":
				without = slices.DeleteFunc(without, func(kv snippetKey) bool { return kv.name() == n.without })
			}
			_, err := loadApplied(t, string(shipped), without)
			if err == nil || !strings.Contains(err.Error(), n.refusal) {
				t.Errorf("%s: applied without %s%s: %v, want the refusal %q", where, n.with, n.without, err, n.refusal)
			}
		}
		text, err := loadApplied(t, string(shipped), sets)
		if err != nil {
			t.Errorf("%s: the shipped llmlab.toml with the snippet's %s set in place does not load: %v", where, strings.Join(names(sets), ", "), err)
			continue
		}
		settings, err := config.Show("llmlab.toml", []byte(text))
		if err != nil {
			t.Fatalf("%s: config.Show: %v", where, err)
		}
		applied++
		for _, kv := range sets {
			i := slices.IndexFunc(settings, func(x config.Setting) bool { return x.Key == kv.name() })
			if i < 0 || !settings[i].FromFile || settings[i].Value != kv.value {
				t.Errorf("%s: %s = %s set in place, but not in effect: %+v", where, kv.name(), kv.value, settings[max(i, 0)])
			}
		}
	}
	for i, n := range snippetNotes {
		if !used[i] {
			t.Errorf("snippetNotes: no snippet of %s sets %s any more: drop the note", n.doc, n.key)
		}
	}
	t.Logf("applied %d of %d snippets", applied, len(snippets))
	for k := range skippedSnippets {
		if !skipped[k] {
			t.Errorf("skippedSnippets: no snippet %s any more: drop it", k)
		}
	}
}

// snippetNotes are what a doc says beside a snippet that sets key: that
// another key must be set with it (with: auth.keys_file, set to a keys
// file the test writes), or that without one of the snippet's own keys
// the file is refused (without). Either way, applied without that key the
// file is refused with refusal. says is the doc's own words for it.
var snippetNotes = []struct {
	doc, key      string
	with, without string
	refusal, says string
}{
	{doc: "README.md", key: "engine.command", without: "engine.unit",
		refusal: "set engine.unit or engine.command, not both",
		says:    `(setting ` + "`command`" + ` alone is refused with "set engine.unit or engine.command, not both")`},
	{doc: "README.md", key: "gateway.trusted_proxies", with: "auth.keys_file",
		refusal: "as public as the proxy makes it, and has no API keys",
		says:    "Set `auth.keys_file` before exposing the gateway beyond loopback: without keys, llmlabd refuses a non-loopback address, or a proxy in `gateway.trusted_proxies`"},
	{doc: "docs/operations.md", key: "gateway.trusted_proxies", with: "auth.keys_file",
		refusal: "the API is behind a reverse proxy, as public as the proxy makes it, and has no API keys",
		says:    "So with `trusted_proxies` set and no `auth.keys_file`, llmlabd refuses to start"},
}

// skippedSnippets are snippets that are not an operator's settings to
// apply to the shipped file, by file and first key, each with why.
var skippedSnippets = map[string]string{
	// A measurement's setup, told key by key in the prose around it:
	// bin/llmlabd with a file of its own, which names no engine.unit.
	// Its command is checked by TestDocCommands.
	"docs/scale-to-zero.md engine.command": "the sleep ladder's measured setup, not a setting for the packaged file",
}

func section(name string) string { s, _, _ := strings.Cut(name, "."); return s }
func key(name string) string     { _, k, _ := strings.Cut(name, "."); return k }

// oneLine folds a text's runs of white space into one space.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// docSnippet is a TOML snippet of a doc, from its line.
type docSnippet struct {
	file string
	line int
	text string
}

var inlineSettingRE = regexp.MustCompile(`^([a-z_]+)\.([a-z_]+) = (.+)$`)

// docSnippets finds the snippets: README.md's and docs/'s toml blocks and
// inline `section.key = value` spans, etc/tuning/*.toml and
// docs/tuning/**/best.toml.
func docSnippets(t *testing.T, root string) []docSnippet {
	t.Helper()
	var out []docSnippet
	md := []string{"README.md"}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		switch {
		case strings.HasSuffix(p, ".md"):
			md = append(md, rel)
		case strings.HasSuffix(p, ".toml"):
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out = append(out, docSnippet{rel, 1, string(data)})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tuning, _ := filepath.Glob(filepath.Join(root, "etc", "tuning", "*.toml"))
	if len(tuning) == 0 {
		t.Fatal("no etc/tuning/*.toml")
	}
	for _, p := range tuning {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, docSnippet{filepath.ToSlash(rel), 1, string(data)})
	}
	for _, f := range md {
		data, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, markdownSnippets(f, string(data))...)
	}
	return out
}

// markdownSnippets returns a Markdown text's toml blocks and its inline
// settings (`section.key = value` code spans outside code blocks).
func markdownSnippets(file, text string) []docSnippet {
	var out []docSnippet
	lines := strings.Split(text, "\n")
	rest := slices.Clone(lines)
	for i := 0; i < len(lines); i++ {
		m := fenceOpenRE.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		fence, start := m[1], i
		var body []string
		for rest[i] = ""; i+1 < len(lines); {
			i++
			rest[i] = ""
			if strings.HasPrefix(strings.TrimLeft(lines[i], " "), fence[:3]) && strings.Trim(strings.TrimSpace(lines[i]), fence[:1]) == "" {
				break
			}
			body = append(body, lines[i])
		}
		if strings.ToLower(m[2]) == "toml" {
			out = append(out, docSnippet{file, start + 2, strings.Join(body, "\n") + "\n"})
		}
	}
	joined := strings.Join(rest, "\n")
	for _, loc := range spanRE.FindAllStringIndex(joined, -1) {
		span := strings.TrimSpace(strings.Trim(joined[loc[0]:loc[1]], "`"))
		if m := inlineSettingRE.FindStringSubmatch(strings.Join(strings.Fields(span), " ")); m != nil {
			out = append(out, docSnippet{file, strings.Count(joined[:loc[0]], "\n") + 1, "[" + m[1] + "]\n" + m[2] + " = " + m[3] + "\n"})
		}
	}
	return out
}

// snippetKey is one key a snippet sets, its value written as TOML.
type snippetKey struct{ section, key, value string }

func (k snippetKey) name() string { return k.section + "." + k.key }

// names are the keys set, with their values.
func names(keys []snippetKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, k.name()+" = "+k.value)
	}
	return out
}

// snippetKeys reads a snippet's keys, in its order, each value written
// back as TOML.
func snippetKeys(text string) ([]snippetKey, error) {
	var m map[string]any
	md, err := toml.Decode(text, &m)
	if err != nil {
		return nil, err
	}
	var out []snippetKey
	for _, k := range md.Keys() {
		switch len(k) {
		case 1:
			if _, table := m[k[0]].(map[string]any); !table {
				return nil, fmt.Errorf("%s: a key outside any [section]", k)
			}
		case 2:
			v := m[k[0]].(map[string]any)[k[1]]
			b, err := toml.Marshal(map[string]any{"v": v})
			if err != nil {
				return nil, err
			}
			_, value, _ := strings.Cut(strings.TrimSpace(string(b)), " = ")
			out = append(out, snippetKey{k[0], k[1], value})
		default:
			return nil, fmt.Errorf("%s: teach the test nested tables", k)
		}
	}
	return out, nil
}

// loadApplied sets keys in place in text as tune.SetKeys does, and loads
// the result as llmlab check-config does.
func loadApplied(t *testing.T, text string, keys []snippetKey) (string, error) {
	t.Helper()
	sets := map[string][][2]string{}
	var order []string
	for _, kv := range keys {
		if !slices.Contains(order, kv.section) {
			order = append(order, kv.section)
		}
		sets[kv.section] = append(sets[kv.section], [2]string{kv.key, kv.value})
	}
	text = tune.SetKeys(text, sets, order)
	path := filepath.Join(t.TempDir(), "llmlab.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := server.LoadConfig(server.Options{ConfigPath: path, Explicit: true})
	return text, err
}

// The snippet extractor on a sample: toml blocks and inline settings,
// not other blocks' keys nor spans that are no setting, and each key's
// value written back as TOML.
func TestMarkdownSnippets(t *testing.T) {
	text := "Set `queue.max_inflight = 32` and `gpu.memory_budget =\n\"4GiB\"`, not `max_inflight = 8`\n" + // 1-2
		"nor `queue.max_inflight`.\n```toml\n[engine]\nunit = \"\"   # a comment\ncommand = [\"llmlab\", \"sim\"]\n[gpu]\nmemory_fraction = 0.9\n```\n" + // 3-9
		"```sh\n`slo.latency = \"1s\"`\n```\n" // 10-12
	var got []string
	for _, s := range markdownSnippets("x.md", text) {
		keys, err := snippetKeys(s.text)
		if err != nil {
			t.Fatalf("%d: %v", s.line, err)
		}
		got = append(got, fmt.Sprintf("%d: %s", s.line, strings.Join(names(keys), "; ")))
	}
	want := []string{
		`5: engine.unit = ""; engine.command = ["llmlab", "sim"]; gpu.memory_fraction = 0.9`,
		`1: queue.max_inflight = 32`,
		`1: gpu.memory_budget = "4GiB"`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("markdownSnippets:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
