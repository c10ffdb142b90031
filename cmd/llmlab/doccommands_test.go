package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/llmlab/llmlab/cmd/llmlab/internal/command"
)

// Every llmlab and llmlabd command the docs write is one the binaries
// take: the subcommand exists, each flag is one it defines, each value
// parses, no flag hides after a positional argument (the flag package
// stops there), and no positional argument is given to a command that
// takes none. The docs are README.md, every Markdown page under docs/
// with the scripts and command.txt records there, and the comments of the
// files under etc/ an operator reads (and etc/monitoring's descriptions).
//
// Where a command is written:
//   - a script, and fenced code of a shell language (sh, bash, console): each
//     line, with "\" continuations joined; where some lines start with a
//     "$ " prompt only those are commands (the rest is their output).
//     A line is split at |, ||, &&, ; and &; redirections are dropped; a
//     command is the one whose program (after VAR=value assignments,
//     sudo, env, time, nohup, exec and their options) is llmlab or
//     llmlabd, by any path (bin/llmlab). A "# comment" is prose.
//   - an indented code block (four spaces, after a blank line), read as
//     shell; in etc/'s comments, any comment line indented four spaces
//     past its "# " (their way to show a command).
//   - a code span (`llmlab status --watch 2s`), read as shell: a span
//     whose program is another (`journalctl -u llmlab`) is not one.
//   - a TOML code block's command = ["llmlab", ...], and a code span's
//     `engine.command = [...]`.
//   - prose, outside code: "llmlab NAME" where NAME is a subcommand's
//     name, or is shaped like one (words joined by hyphens, but for the
//     English words in proseWords), with the flags that follow it
//     (llmlab tune-engine --apply takes ...). Only the name and the
//     flags' names are checked: prose says "llmlab sends" of the
//     project, and where a prose command ends is not known.
//
// A command with no arguments (`llmlab man`) names a subcommand: only
// the name is checked. Placeholders:
//   - a flag's value written as a placeholder (one holding <...>, an
//     ALL-CAPS word with an optional extension: FILE, N, OUT.json, a
//     $VARIABLE, or "...") is replaced by the flag's default, a value of
//     its type;
//   - a "..." standing alone elides arguments: it is dropped and what
//     follows it is still checked (llmlab bench ... --rate 2.5);
//   - positional arguments are not checked but for their count
//     (command.Command.Args: "DIR" takes one, "[-- COMMAND...]" any).
//
// A flag in a code span of its own (`llmlab status` (add `--json`)) is not
// checked: only the prose says whose it is, and beside llmlab's commands
// the docs name vLLM's flags the same way.
func TestDocCommands(t *testing.T) {
	var cmds []docCommand
	for _, d := range docFiles(t) {
		data, err := os.ReadFile(filepath.Join("..", "..", d.path))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range extractCommands(string(data), d.mode) {
			c.file = d.path
			cmds = append(cmds, c)
		}
	}
	code, spans, mentions, byFile := 0, 0, 0, map[string]int{}
	for _, c := range cmds {
		byFile[c.file]++
		switch {
		case c.mention:
			mentions++
		case c.span:
			spans++
		default:
			code++
		}
		if err := checkDocCommand(c); err != nil {
			t.Errorf("%s:%d: %s: %v", c.file, c.line, c.text, err)
		}
	}
	// The extractor must not silently find nothing.
	if code < 40 || spans < 40 || mentions < 5 {
		t.Errorf("found %d commands in code, %d in code spans and %d in prose across the docs, want at least 40, 40 and 5 (is the extractor broken?)", code, spans, mentions)
	}
	for _, f := range []string{"README.md", "docs/benchmarks.md", "docs/tuning.md", "etc/llmlab.toml", "etc/tuning/gtx1650.toml"} {
		if byFile[f] == 0 {
			t.Errorf("found no command in %s, which writes several", f)
		}
	}
	t.Logf("checked %d commands in code, %d in code spans, %d in prose", code, spans, mentions)
}

// proseWords are words shaped like a subcommand's name that follow
// "llmlab" in prose as English ("llmlab in-flight limit").
var proseWords = []string{"in-flight"}

// docMode says how a file's text holds commands.
type docMode int

const (
	// markdown: fenced and indented code, code spans, prose.
	markdown docMode = iota
	// hashComments: a configuration file whose "#" comments are prose,
	// with commands indented in them; the rest is not read.
	hashComments
	// prose: all of the text is prose (alert descriptions, a dashboard's
	// panel descriptions).
	prose
	// shellScript: every line is shell (a script, a command.txt).
	shellScript
)

type docFile struct {
	path string // from the repository's root
	mode docMode
}

// docFiles are the files whose commands are checked: README.md, every
// Markdown page, script and command.txt under docs/, and etc/'s files an
// operator reads.
func docFiles(t *testing.T) []docFile {
	t.Helper()
	root := filepath.Join("..", "..")
	files := []docFile{{"README.md", markdown}}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case strings.HasSuffix(p, ".md"):
			files = append(files, docFile{filepath.ToSlash(rel), markdown})
		case strings.HasSuffix(p, ".sh") || d.Name() == "command.txt":
			files = append(files, docFile{filepath.ToSlash(rel), shellScript})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for pattern, mode := range map[string]docMode{
		"etc/*.toml": hashComments, "etc/*.env": hashComments, "etc/tuning/*.toml": hashComments,
		"etc/balancer/*.cfg": hashComments, "etc/balancer/*.conf": hashComments,
		"etc/monitoring/*.yml": prose, "etc/monitoring/*.json": prose,
	} {
		m, err := filepath.Glob(filepath.Join(root, pattern))
		if err != nil || len(m) == 0 {
			t.Fatalf("%s matches nothing (%v): the test reads it", pattern, err)
		}
		for _, p := range m {
			rel, _ := filepath.Rel(root, p)
			files = append(files, docFile{filepath.ToSlash(rel), mode})
		}
	}
	slices.SortFunc(files, func(a, b docFile) int { return strings.Compare(a.path, b.path) })
	return files
}

// docCommand is one llmlab or llmlabd command a doc writes.
type docCommand struct {
	file string
	line int
	text string // as written, continuations joined
	// prog is "llmlab" or "llmlabd"; args follow it, quotes removed.
	prog string
	args []string
	// span: written in a code span; mention: in prose, where only the
	// subcommand's name and the flags' names are checked.
	span, mention bool
}

var (
	fenceOpenRE = regexp.MustCompile("^ {0,3}(```+|~~~+)\\s*([^`\\s]*)")
	// A code span: matching runs of one or two backticks, over at most
	// one line break (a span cannot cross a blank line).
	spanRE = regexp.MustCompile("``(?:[^`\n]|\n[^`\n])+?``|`(?:[^`\n]|\n[^`\n])+?`")
	// A prose "llmlab" or "llmlabd" followed by a word.
	proseRE = regexp.MustCompile(`(?:^|[\s(/"'*_])(llmlabd?)(?:[ \t]+|[ \t]*\n[ \t]*)(\S+)`)
	// A placeholder value.
	placeholderRE = regexp.MustCompile(`<[^>]+>|^[A-Z][A-Z0-9_]*(\.[a-z0-9]+)?$|^\$|^\.\.\.$|^…$`)
	// A subcommand's shape.
	nameShapeRE = regexp.MustCompile(`^[a-z]+(-[a-z]+)+$`)
	flagShapeRE = regexp.MustCompile(`^--?[a-z]`)
	assignRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
)

var shellLangs = []string{"sh", "bash", "shell", "console", "zsh", "shell-session"}

// extractCommands returns the llmlab and llmlabd commands of a text, and
// their lines; file is left for the caller.
func extractCommands(text string, mode docMode) []docCommand {
	lines := strings.Split(text, "\n")
	// proseLines is what is left for code spans and prose: code lines are
	// blanked, but for their shell comments.
	proseLines := slices.Clone(lines)
	var out []docCommand
	shellLine := func(i int, l string) {
		cmds, comment := shellCommands(l)
		for _, c := range cmds {
			c.line = i + 1
			out = append(out, c)
		}
		proseLines[i] = comment
	}
	switch mode {
	case markdown:
		for i := 0; i < len(lines); i++ {
			m := fenceOpenRE.FindStringSubmatch(lines[i])
			if m == nil {
				// An indented code block: four spaces after a blank line.
				if strings.HasPrefix(lines[i], "    ") && i > 0 && strings.TrimSpace(lines[i-1]) == "" {
					for ; i < len(lines) && (strings.HasPrefix(lines[i], "    ") || strings.TrimSpace(lines[i]) == ""); i++ {
						j, l := joinContinued(lines, i)
						shellLine(i, strings.TrimSpace(l))
						for k := i + 1; k <= j; k++ {
							proseLines[k] = ""
						}
						i = j
					}
					i--
				}
				continue
			}
			fence, lang := m[1], strings.ToLower(m[2])
			proseLines[i] = ""
			var body []int
			for i++; i < len(lines); i++ {
				if strings.HasPrefix(strings.TrimLeft(lines[i], " "), fence[:3]) && strings.Trim(strings.TrimSpace(lines[i]), fence[:1]) == "" {
					proseLines[i] = ""
					break
				}
				proseLines[i] = ""
				body = append(body, i)
			}
			switch {
			case slices.Contains(shellLangs, lang):
				prompted := slices.ContainsFunc(body, func(j int) bool { return strings.HasPrefix(strings.TrimSpace(lines[j]), "$ ") })
				for n := 0; n < len(body); n++ {
					j := body[n]
					l := strings.TrimSpace(lines[j])
					if prompted && !strings.HasPrefix(l, "$ ") {
						continue
					}
					last, joined := joinContinued(lines, j)
					for n+1 < len(body) && body[n+1] <= last {
						n++
					}
					shellLine(j, strings.TrimPrefix(strings.TrimSpace(joined), "$ "))
				}
			case lang == "toml":
				for _, j := range body {
					if c, ok := tomlCommand(lines[j]); ok {
						c.line = j + 1
						out = append(out, c)
					}
				}
			}
		}
	case shellScript:
		for i := 0; i < len(lines); i++ {
			j, l := joinContinued(lines, i)
			shellLine(i, strings.TrimSpace(l))
			for k := i + 1; k <= j; k++ {
				proseLines[k] = ""
			}
			i = j
		}
	case hashComments:
		for i, l := range lines {
			t := strings.TrimLeft(l, " \t")
			if !strings.HasPrefix(t, "#") {
				proseLines[i] = ""
				continue
			}
			t = strings.TrimPrefix(strings.TrimPrefix(t, "#"), " ")
			proseLines[i] = t
			if strings.HasPrefix(t, "    ") {
				shellLine(i, strings.TrimSpace(t))
			}
		}
	}
	// Code spans, then prose, in what is left.
	rest := strings.Join(proseLines, "\n")
	for _, loc := range spanRE.FindAllStringIndex(rest, -1) {
		span := rest[loc[0]:loc[1]]
		inner := strings.TrimSpace(strings.Trim(span, "`"))
		inner = strings.ReplaceAll(strings.ReplaceAll(inner, "\n", " "), `\|`, "|")
		cmds, _ := shellCommands(inner)
		if c, ok := tomlCommand(strings.TrimPrefix(inner, "engine.")); ok {
			cmds = append(cmds, c)
		}
		line := strings.Count(rest[:loc[0]], "\n") + 1
		for _, c := range cmds {
			c.line, c.span = line, true
			out = append(out, c)
		}
	}
	rest = spanRE.ReplaceAllStringFunc(rest, func(s string) string {
		return strings.Map(func(r rune) rune {
			if r == '\n' {
				return r
			}
			return ' '
		}, s)
	})
	for _, loc := range proseRE.FindAllStringSubmatchIndex(rest, -1) {
		prog, word := rest[loc[2]:loc[3]], trimPunct(rest[loc[4]:loc[5]])
		var flags []string
		for _, f := range strings.Fields(rest[loc[5]:min(len(rest), loc[5]+200)]) {
			if !flagShapeRE.MatchString(f) {
				break
			}
			flags = append(flags, trimPunct(f))
		}
		args := append([]string{word}, flags...)
		switch {
		case prog == "llmlabd" && flagShapeRE.MatchString(word):
		case prog == "llmlab" && (isSubcommand(word) || nameShapeRE.MatchString(word) && !slices.Contains(proseWords, word)):
		default:
			continue
		}
		out = append(out, docCommand{line: strings.Count(rest[:loc[2]], "\n") + 1, text: prog + " " + strings.Join(args, " "),
			prog: prog, args: args, mention: true})
	}
	slices.SortStableFunc(out, func(a, b docCommand) int { return a.line - b.line })
	return out
}

// joinContinued joins line i with the lines a trailing "\" continues it
// onto, and returns the last line's index with the joined text.
func joinContinued(lines []string, i int) (int, string) {
	l := lines[i]
	for strings.HasSuffix(strings.TrimRight(l, " "), `\`) && i+1 < len(lines) {
		i++
		l = strings.TrimSuffix(strings.TrimRight(l, " "), `\`) + " " + strings.TrimSpace(lines[i])
	}
	return i, l
}

func trimPunct(s string) string { return strings.TrimRight(s, `.,;:)!?"'`+"`") }

func isSubcommand(name string) bool {
	return slices.ContainsFunc(append(commands(), helpers()...), func(c command.Command) bool { return c.Name == name })
}

// tomlCommand reads a TOML line command = [...] that runs llmlab or
// llmlabd.
func tomlCommand(line string) (docCommand, bool) {
	var v struct{ Command []string }
	if !strings.HasPrefix(strings.TrimSpace(line), "command") || toml.Unmarshal([]byte(line), &v) != nil || len(v.Command) == 0 {
		return docCommand{}, false
	}
	prog := path.Base(v.Command[0])
	if prog != "llmlab" && prog != "llmlabd" {
		return docCommand{}, false
	}
	return docCommand{text: strings.TrimSpace(line), prog: prog, args: v.Command[1:]}, true
}

// shellWord is a word of a shell line; op is an operator (|, &&, ;, &,
// a redirection).
type shellWord struct {
	s  string
	op bool
}

// shellWords splits a shell line into words and operators, as sh would
// (quotes removed), and returns its comment apart.
func shellWords(line string) ([]shellWord, string) {
	var words []shellWord
	var cur strings.Builder
	inWord := false
	end := func() {
		if inWord {
			words = append(words, shellWord{s: cur.String()})
		}
		cur.Reset()
		inWord = false
	}
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case r == ' ' || r == '\t':
			end()
		case r == '#' && !inWord:
			end()
			return words, string(rs[i:])
		case r == '\'':
			inWord = true
			j := i + 1
			for j < len(rs) && rs[j] != '\'' {
				cur.WriteRune(rs[j])
				j++
			}
			i = j
		case r == '"':
			inWord = true
			j := i + 1
			for ; j < len(rs) && rs[j] != '"'; j++ {
				if rs[j] == '\\' && j+1 < len(rs) && strings.ContainsRune("\"\\$`", rs[j+1]) {
					j++
				}
				cur.WriteRune(rs[j])
			}
			i = j
		case r == '\\' && i+1 < len(rs):
			inWord = true
			i++
			cur.WriteRune(rs[i])
		case r == '|' || r == '&' || r == ';' || r == '<' || r == '>':
			// A redirection's file descriptor (2>) goes with it.
			fd := inWord && strings.Trim(cur.String(), "0123456789") == "" && (r == '<' || r == '>')
			if fd {
				cur.Reset()
				inWord = false
			}
			end()
			op := string(r)
			for i+1 < len(rs) && strings.ContainsRune("|&>", rs[i+1]) && len(op) < 2 {
				i++
				op += string(rs[i])
			}
			words = append(words, shellWord{s: op, op: true})
		default:
			inWord = true
			cur.WriteRune(r)
		}
	}
	end()
	return words, ""
}

// shellCommands returns the llmlab and llmlabd commands of a shell line,
// and its comment.
func shellCommands(line string) ([]docCommand, string) {
	words, comment := shellWords(line)
	var out []docCommand
	var seg []string
	flush := func() {
		defer func() { seg = nil }()
		i := 0
		for i < len(seg) {
			switch w := seg[i]; {
			case assignRE.MatchString(w):
				i++
			case slices.Contains([]string{"if", "then", "else", "do", "while", "until", "!", "{", "("}, w):
				i++
			case w == "sudo" || w == "env" || w == "time" || w == "nohup" || w == "exec":
				i++
				for i < len(seg) && strings.HasPrefix(seg[i], "-") {
					if w == "sudo" && slices.Contains([]string{"-u", "-g", "-C", "-D", "-h", "-p", "-U"}, seg[i]) {
						i++
					}
					i++
				}
			default:
				prog := path.Base(w)
				if prog == "llmlab" || prog == "llmlabd" {
					out = append(out, docCommand{text: strings.TrimSpace(line), prog: prog, args: slices.Clone(seg[i+1:])})
				}
				return
			}
		}
	}
	for k := 0; k < len(words); k++ {
		w := words[k]
		switch {
		case w.op && strings.ContainsAny(w.s, "<>"):
			k++ // the redirection's target
		case w.op:
			flush()
		default:
			seg = append(seg, w.s)
		}
	}
	flush()
	return out, strings.TrimPrefix(comment, "#")
}

// checkDocCommand parses a doc command's arguments with the flags its
// command defines.
func checkDocCommand(c docCommand) error {
	args := c.args
	var fs *flag.FlagSet
	maxArgs := 0
	switch c.prog {
	case "llmlabd":
		fs = daemonFlags()
	default:
		if len(args) == 0 {
			return nil // the toolbox named
		}
		name := args[0]
		args = args[1:]
		if slices.Contains([]string{"help", "-h", "-help", "--help"}, name) {
			return nil
		}
		i := slices.IndexFunc(append(commands(), helpers()...), func(x command.Command) bool { return x.Name == name })
		if i < 0 {
			return fmt.Errorf("llmlab has no command %q", name)
		}
		cmd := append(commands(), helpers()...)[i]
		fs = flag.NewFlagSet("llmlab "+name, flag.ContinueOnError)
		cmd.Flags(fs)
		maxArgs = maxPositional(cmd.Args)
	}
	fs.SetOutput(io.Discard)
	if c.mention {
		for _, a := range args {
			name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if fs.Lookup(name) == nil && name != "h" && name != "help" {
				return fmt.Errorf("%s has no flag -%s", fs.Name(), name)
			}
		}
		return nil
	}
	args = fillPlaceholders(fs, args, c.span)
	if err := fs.Parse(args); err != nil && !errors.Is(err, flag.ErrHelp) {
		return fmt.Errorf("%s: %v", fs.Name(), err)
	}
	rest := fs.Args()
	terminated := len(rest) < len(args) && args[len(args)-len(rest)-1] == "--"
	if !terminated {
		for _, a := range rest {
			if strings.HasPrefix(a, "-") && a != "-" {
				return fmt.Errorf("%s: the flag %s follows the positional argument %q and is not parsed (flags end at the first positional argument)", fs.Name(), a, rest[0])
			}
		}
	}
	if maxArgs >= 0 && len(rest) > maxArgs {
		return fmt.Errorf("%s takes %d positional arguments, not %d (%q)", fs.Name(), maxArgs, len(rest), rest)
	}
	return nil
}

// maxPositional is how many positional arguments a command's Args allow
// ("DIR": 1, "[--show] [PATH]": 1, "[-- COMMAND...]": any, -1).
func maxPositional(args string) int {
	n := 0
	for _, w := range strings.Fields(strings.NewReplacer("[", " ", "]", " ").Replace(args)) {
		switch {
		case strings.HasSuffix(w, "..."):
			return -1
		case !strings.HasPrefix(w, "-"):
			n++
		}
	}
	return n
}

// fillPlaceholders replaces a placeholder flag value by the flag's
// default, drops a "..." that stands for elided arguments and a "$@" that
// stands for a script's, and, in a code span, gives a flag that ends it
// without its value the default (`llmlab bench --sides` names the flag).
func fillPlaceholders(fs *flag.FlagSet, args []string, span bool) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if a == "..." || a == "…" || a == "$@" || a == "$*" {
			continue
		}
		dashes := a[:len(a)-len(strings.TrimLeft(a, "-"))]
		name, value, hasValue := strings.Cut(a[len(dashes):], "=")
		f := fs.Lookup(name)
		if dashes == "" || f == nil {
			out = append(out, a)
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			if hasValue && placeholderRE.MatchString(value) {
				a = dashes + name + "=true"
			}
			out = append(out, a)
			continue
		}
		if hasValue {
			if placeholderRE.MatchString(value) {
				a = dashes + name + "=" + f.DefValue
			}
			out = append(out, a)
			continue
		}
		out = append(out, a)
		if i+1 < len(args) {
			i++
			v := args[i]
			if placeholderRE.MatchString(v) {
				v = f.DefValue
			}
			out = append(out, v)
		} else if span {
			out = append(out, f.DefValue)
		}
	}
	return out
}

// The extractor on a sample that holds each way a doc writes a command,
// and the ways that are not one.
func TestExtractCommands(t *testing.T) {
	text := "Run `llmlab status --watch 2s` or ``llmlab smoke --json``, then\n" + // 1
		"`llmlab tune-engine --config\n/etc/x.toml` (a span over a line break); `journalctl -u llmlab`\n" + // 2-3
		"and `engine.command = [\"bin/llmlab\", \"sim\"]`. " +
		"and `: llmlab queued: 3 ahead`. llmlab sends; llmlab in-flight; llmlab gpu --budget 4GiB shows.\n" + // 4
		"```sh\n" + // 5
		"make build && bin/llmlab sim --port 8000 &   # then llmlab bench\n" + // 6
		"sudo llmlab check-config \\\n" + // 7
		"    --show   /etc/llmlab/llmlab.toml 2>err.log | less\n" + // 8
		"sudo -u llmlab env A=1 llmlabd --config x.toml\n" + // 9
		"```\n" + // 10
		"```console\n$ llmlab status\nllmlab bogus output line\n$ systemctl reload llmlab\n```\n" + // 11-15
		"```toml\ncommand = [\"llmlab\", \"sim\", \"--profile\", \"t4\"]  # or vllm\n```\n" + // 16-18
		"```\nllmlab diagram\n```\n" + // 19-21
		"\n    llmlab sim --fit OUT.json\n\nand llmlab tune-enigne.\n" // 22-25
	var got []string
	for _, c := range extractCommands(text, markdown) {
		kind := "cmd"
		if c.mention {
			kind = "mention"
		}
		got = append(got, fmt.Sprintf("%d %s %s %q", c.line, kind, c.prog, c.args))
	}
	want := []string{
		`1 cmd llmlab ["status" "--watch" "2s"]`,
		`1 cmd llmlab ["smoke" "--json"]`,
		`2 cmd llmlab ["tune-engine" "--config" "/etc/x.toml"]`,
		`4 cmd llmlab ["sim"]`,
		`4 mention llmlab ["gpu" "--budget"]`,
		`6 cmd llmlab ["sim" "--port" "8000"]`,
		`6 mention llmlab ["bench"]`,
		`7 cmd llmlab ["check-config" "--show" "/etc/llmlab/llmlab.toml"]`,
		`9 cmd llmlabd ["--config" "x.toml"]`,
		`12 cmd llmlab ["status"]`,
		`17 cmd llmlab ["sim" "--profile" "t4"]`,
		`23 cmd llmlab ["sim" "--fit" "OUT.json"]`,
		`25 mention llmlab ["tune-enigne"]`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("extractCommands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	comments := "# prose: `llmlab tune-engine` and\n#\n#     llmlab check-config && systemctl reload llmlab\n" +
		"[gateway]\nlisten = \"llmlab status\"\n# (llmlab tune-engine --apply takes; llmlab\n# check-config warns)\n"
	got = nil
	for _, c := range extractCommands(comments, hashComments) {
		got = append(got, fmt.Sprintf("%d %v %q", c.line, c.mention, c.args))
	}
	want = []string{`1 false ["tune-engine"]`, `3 false ["check-config"]`, `6 true ["tune-engine" "--apply"]`, `6 true ["check-config"]`}
	if !slices.Equal(got, want) {
		t.Errorf("extractCommands of comments:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The checks, and the placeholder rules.
	for _, c := range []struct {
		c    docCommand
		fail string
	}{
		{docCommand{prog: "llmlab", args: []string{"status", "--watch", "2s"}}, ""},
		{docCommand{prog: "llmlab", args: []string{"status", "--watch", "N"}}, ""},
		{docCommand{prog: "llmlab", args: []string{"status", "--watch=<interval>"}}, ""},
		{docCommand{prog: "llmlab", args: []string{"bench", "...", "--rate", "2.5"}}, ""},
		{docCommand{prog: "llmlab", args: []string{"status", "--watch", "soon"}}, "invalid value"},
		{docCommand{prog: "llmlab", args: []string{"status", "--nope"}}, "not defined"},
		{docCommand{prog: "llmlab", args: []string{"statsu"}}, `no command "statsu"`},
		{docCommand{prog: "llmlab", args: []string{"tune-enigne"}, mention: true}, `no command "tune-enigne"`},
		{docCommand{prog: "llmlab", args: []string{"gpu", "--nope"}, mention: true}, "no flag -nope"},
		{docCommand{prog: "llmlab", args: []string{"check-config", "x.toml", "--show"}}, "is not parsed"},
		{docCommand{prog: "llmlab", args: []string{"check-config", "a.toml", "b.toml"}}, "takes 1 positional"},
		{docCommand{prog: "llmlab", args: []string{"bench", "x"}}, "takes 0 positional"},
		{docCommand{prog: "llmlab", args: []string{"gpu", "--", "vllm", "serve", "--port", "1"}}, ""},
		{docCommand{prog: "llmlab", args: []string{"sim", "-h"}}, ""},
		{docCommand{prog: "llmlabd", args: []string{"--listen", "127.0.0.1:8080", "--engine-url", "http://x"}}, ""},
		{docCommand{prog: "llmlabd", args: []string{"--port", "1"}}, "not defined"},
	} {
		err := checkDocCommand(c.c)
		switch {
		case c.fail == "" && err != nil:
			t.Errorf("%s %q: %v, want it to pass", c.c.prog, c.c.args, err)
		case c.fail != "" && (err == nil || !strings.Contains(err.Error(), c.fail)):
			t.Errorf("%s %q: %v, want an error with %q", c.c.prog, c.c.args, err, c.fail)
		}
	}
}
