package packaging

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// mdLink is a link target of a Markdown file, as written, and its line.
type mdLink struct {
	line   int
	target string
}

var (
	fenceRE    = regexp.MustCompile("^ {0,3}(```|~~~)")
	codeSpanRE = regexp.MustCompile("``(?:[^`\n]|\n[^`\n])+``|`(?:[^`\n]|\n[^`\n])+`")
	inlineRE   = regexp.MustCompile(`\]\(\s*<?([^)\s>]+)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)`)
	refDefRE   = regexp.MustCompile(`^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)`)
	htmlRE     = regexp.MustCompile(`(?:href|src)="([^"]+)"`)
	schemeRE   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
)

// relativeLinks returns the links of a Markdown text that name a file by
// a relative path: inline links and images ([text](target)), reference
// definitions ([name]: target) and HTML href/src, not inside fenced code
// or code spans, with the fragment cut. Links with a scheme (https:,
// mailto:) and those to a fragment of the page itself are left out.
func relativeLinks(text string) []mdLink {
	// Fenced code first, line by line: blanked.
	lines := strings.Split(text, "\n")
	fence := ""
	for i, l := range lines {
		m := fenceRE.FindStringSubmatch(l)
		switch {
		case m != nil && fence == "":
			fence = m[1]
		case m != nil && m[1] == fence:
			fence = ""
		case fence == "":
			continue
		}
		lines[i] = ""
	}
	// Code spans may run over a line break within a paragraph: blanked in
	// the whole text, keeping the line breaks.
	text = codeSpanRE.ReplaceAllStringFunc(strings.Join(lines, "\n"), func(s string) string {
		return strings.Map(func(r rune) rune {
			if r == '\n' {
				return r
			}
			return ' '
		}, s)
	})
	var out []mdLink
	for i, l := range strings.Split(text, "\n") {
		var targets []string
		for _, re := range []*regexp.Regexp{inlineRE, refDefRE, htmlRE} {
			for _, m := range re.FindAllStringSubmatch(l, -1) {
				targets = append(targets, m[1])
			}
		}
		for _, t := range targets {
			t, _, _ = strings.Cut(t, "#")
			if t == "" || schemeRE.MatchString(t) {
				continue
			}
			out = append(out, mdLink{line: i + 1, target: t})
		}
	}
	return out
}

func TestRelativeLinks(t *testing.T) {
	text := "See [a](a.md) and ![pic](img/p.svg \"title\"), [b](b.md#part), [web](https://x.org/y.md),\n" +
		"[self](#top), `[code](code.md)`, ``[code](code2.md)``, and [a long\ntext](c.md).\n" +
		"```sh\n[fenced](fenced.md) `\n```\n" +
		"[ref]: ../d.md\n<a href=\"e/\">e</a> <img src=\"f.png\"> [mail](mailto:x@y)\n" +
		"~~~\n```\n[fenced](fenced2.md)\n~~~\nA `span\nover two lines [x](x.md)` and [g](g.md).\n"
	var got []string
	for _, l := range relativeLinks(text) {
		got = append(got, fmt.Sprintf("%d:%s", l.line, l.target))
	}
	want := []string{"1:a.md", "1:img/p.svg", "1:b.md", "3:c.md", "7:../d.md", "8:e/", "8:f.png", "14:g.md"}
	if !slices.Equal(got, want) {
		t.Errorf("relativeLinks = %q, want %q", got, want)
	}
}

// markdownFiles are the repository's Markdown files that git tracks.
func markdownFiles(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("git", "-C", "..", "ls-files", "*.md").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	files := strings.Fields(string(out))
	if !slices.Contains(files, "README.md") || !slices.Contains(files, "docs/install.md") {
		t.Fatalf("git ls-files *.md = %q: no README.md or docs/install.md", files)
	}
	return files
}

// Every relative link of the repository's Markdown (README.md, docs/)
// names a file or folder that exists, inside the repository.
func TestDocLinksResolve(t *testing.T) {
	for _, f := range markdownFiles(t) {
		text, err := os.ReadFile(filepath.Join("..", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range relativeLinks(string(text)) {
			if strings.HasPrefix(l.target, "/") {
				t.Errorf("%s:%d: %s: an absolute path; link relative to the page", f, l.line, l.target)
				continue
			}
			p := path.Join(path.Dir(f), l.target)
			if p == ".." || strings.HasPrefix(p, "../") {
				t.Errorf("%s:%d: %s: leaves the repository (%s)", f, l.line, l.target, p)
				continue
			}
			if _, err := os.Stat(filepath.Join("..", p)); err != nil {
				t.Errorf("%s:%d: %s: no such file or folder (%s)", f, l.line, l.target, p)
			}
		}
	}
}

// shipped is what nfpm.yaml puts in the package: each file's place in
// the package, from its source (a path in the repository, or
// "${STAGE}/..." for what build-deb.sh makes).
type shipped struct {
	dst map[string]string // source -> place in the package
	src map[string]string // place in the package -> source
}

// readNfpm reads nfpm.yaml's contents: src and dst of each entry, a
// folder's files each in its place under dst (as nfpm ships a folder).
// Symbolic links are left out.
func readNfpm(t *testing.T) shipped {
	t.Helper()
	data, err := os.ReadFile("nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := shipped{dst: map[string]string{}, src: map[string]string{}}
	add := func(src, dst string) {
		s.dst[src], s.src[dst] = dst, src
	}
	var entries []map[string]string
	in := false
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case l == "contents:":
			in = true
		case in && strings.HasPrefix(l, "  - "):
			entries = append(entries, map[string]string{})
			l = "    " + l[4:]
			fallthrough
		case in && strings.HasPrefix(l, "    ") && len(entries) > 0:
			k, v, ok := strings.Cut(strings.TrimSpace(l), ": ")
			if ok {
				entries[len(entries)-1][k] = v
			}
		case in && l != "" && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "#"):
			in = false
		}
	}
	if len(entries) < 10 {
		t.Fatalf("nfpm.yaml: read %d entries of contents, want its every file", len(entries))
	}
	for _, e := range entries {
		src, dst := e["src"], e["dst"]
		if e["type"] == "symlink" || src == "" || dst == "" {
			continue
		}
		if strings.HasPrefix(src, "${STAGE}/") {
			add(src, dst)
			continue
		}
		if strings.ContainsAny(src, "*?[{") {
			t.Fatalf("nfpm.yaml: src %s is a glob; teach readNfpm nfpm's globbing first", src)
		}
		info, err := os.Stat(filepath.Join("..", src))
		if err != nil {
			t.Fatalf("nfpm.yaml ships %s, which is not in the repository: %v", src, err)
		}
		if !info.IsDir() {
			add(src, dst)
			continue
		}
		err = filepath.WalkDir(filepath.Join("..", src), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(filepath.Join("..", src), p)
			add(path.Join(src, filepath.ToSlash(rel)), path.Join(dst, filepath.ToSlash(rel)))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// readmeRewrite is what build-deb.sh does to README.md's links for the
// package, where the pages of docs/ sit beside it.
const readmeRewrite = `sed -e 's|](docs/|](|g' README.md > "$STAGE/README.md"`

// Every link of a page the package ships works in the package: it names a
// file the package ships too (or a folder holding some), and the very one
// it names in the repository. A page that links a doc the package leaves
// out fails, with the entry to add to nfpm.yaml.
func TestShippedDocLinksShipped(t *testing.T) {
	s := readNfpm(t)
	script, err := os.ReadFile("build-deb.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(script), readmeRewrite) {
		t.Fatalf("build-deb.sh no longer makes the package's README.md with\n\t%s\n(the test reads README.md's links as that makes them)", readmeRewrite)
	}
	// README.md is shipped as build-deb.sh rewrites it.
	origin := map[string]string{"${STAGE}/README.md": "README.md"}
	pages := 0
	for _, src := range slices.Sorted(maps.Keys(s.dst)) {
		dst := s.dst[src]
		repo := src
		if o, ok := origin[src]; ok {
			repo = o
		}
		if !strings.HasSuffix(repo, ".md") || strings.HasPrefix(repo, "${STAGE}/") {
			continue
		}
		pages++
		text, err := os.ReadFile(filepath.Join("..", repo))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range relativeLinks(string(text)) {
			want := path.Join(path.Dir(repo), l.target) // what it names in the repository
			inPkg := l.target
			if src == "${STAGE}/README.md" {
				inPkg = strings.TrimPrefix(inPkg, "docs/")
			}
			got := path.Join(path.Dir(dst), inPkg) // what it names in the package
			if s.src[got] == want {
				continue
			}
			if folderShipped(s, got, want) {
				continue
			}
			if d, ok := s.dst[want]; ok {
				t.Errorf("%s:%d: %s: in the package (%s) it names %s, but %s is shipped as %s", repo, l.line, l.target, dst, got, want, d)
				continue
			}
			t.Errorf("%s:%d: %s: the package ships %s as %s but not %s: add it to packaging/nfpm.yaml (dst %s) or drop the link", repo, l.line, l.target, repo, dst, want, got)
		}
	}
	if pages < 5 {
		t.Fatalf("read %d shipped pages from nfpm.yaml, want README.md and the pages of docs/", pages)
	}
}

// folderShipped reports whether dir in the package holds files shipped
// from the repository's folder want.
func folderShipped(s shipped, dir, want string) bool {
	for d, src := range s.src {
		if strings.HasPrefix(d, dir+"/") && strings.HasPrefix(src, want+"/") && strings.TrimPrefix(d, dir) == strings.TrimPrefix(src, want) {
			return true
		}
	}
	return false
}
