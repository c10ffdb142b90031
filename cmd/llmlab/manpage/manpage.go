// Package manpage renders manual pages (roff, man(7) macros) and bash
// completion from flag definitions, so that neither can drift from the
// flags the binaries really take.
package manpage

import (
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Page is one manual page.
type Page struct {
	Name     string // the command, e.g. "llmlabd"
	Section  int
	Version  string // shown in the footer
	Summary  string // the NAME line's description
	Synopsis string // after the name, e.g. "[FLAGS]"
	// Description paragraphs (plain text; a line starting with two spaces
	// is set as an example).
	Description []string
	// Flags are shown under OPTIONS when set.
	Flags *flag.FlagSet
	// Commands are shown under COMMANDS, each with its flags.
	Commands []Command
	// Sections follow, e.g. SIGNALS, FILES, SEE ALSO.
	Sections []Section
}

// Command is a subcommand with its own flags.
type Command struct {
	Name, Args, Summary string
	Flags               *flag.FlagSet
}

// Section is a titled section of paragraphs; a paragraph "TERM\tTEXT"
// becomes a tagged paragraph.
type Section struct {
	Title string
	Paras []string
}

// Escape makes plain text safe for roff.
func Escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	var b strings.Builder
	for i, line := range strings.Split(s, "\n") {
		if i > 0 {
			b.WriteByte('\n')
		}
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			b.WriteString(`\&`)
		}
		b.WriteString(line)
	}
	return b.String()
}

// Write renders p.
func (p Page) Write(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, ".TH %s %d \"\" \"llmlab %s\" \"llmlab manual\"\n", strings.ToUpper(p.Name), p.Section, Escape(p.Version))
	fmt.Fprintf(&b, ".SH NAME\n%s \\- %s\n", Escape(p.Name), Escape(p.Summary))
	fmt.Fprintf(&b, ".SH SYNOPSIS\n.B %s\n%s\n", Escape(p.Name), Escape(p.Synopsis))
	b.WriteString(".SH DESCRIPTION\n")
	paras(&b, p.Description)
	if p.Flags != nil {
		b.WriteString(".SH OPTIONS\n")
		flags(&b, p.Flags)
	}
	if len(p.Commands) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, c := range p.Commands {
			fmt.Fprintf(&b, ".SS \"%s %s\"\n", Escape(c.Name), Escape(c.Args))
			fmt.Fprintf(&b, "%s\n", Escape(c.Summary))
			if c.Flags != nil {
				flags(&b, c.Flags)
			}
		}
	}
	for _, s := range p.Sections {
		fmt.Fprintf(&b, ".SH %s\n", Escape(strings.ToUpper(s.Title)))
		paras(&b, s.Paras)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func paras(b *strings.Builder, ps []string) {
	for i, para := range ps {
		if term, text, ok := strings.Cut(para, "\t"); ok {
			fmt.Fprintf(b, ".TP\n.B %s\n%s\n", Escape(term), Escape(text))
			continue
		}
		if strings.HasPrefix(para, "  ") {
			fmt.Fprintf(b, ".PP\n.nf\n.RS 4\n%s\n.RE\n.fi\n", Escape(strings.TrimPrefix(para, "  ")))
			continue
		}
		if i > 0 {
			b.WriteString(".PP\n")
		}
		fmt.Fprintf(b, "%s\n", Escape(para))
	}
}

func flags(b *strings.Builder, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(b, ".TP\n\\fB\\-\\-%s\\fR", Escape(f.Name))
		if name != "" {
			fmt.Fprintf(b, " \\fI%s\\fR", Escape(name))
		}
		b.WriteByte('\n')
		text := usage
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			text += fmt.Sprintf(" (default: %s)", f.DefValue)
		}
		fmt.Fprintf(b, "%s\n", Escape(text))
	})
}

// Bash writes a bash completion function named _name for the command
// name: with commands, the first word completes to a command name and the
// later ones to that command's flags; without, to the top-level flags.
// After one of the flags named in files ("--config"), a word completes to
// a file name.
func Bash(w io.Writer, name string, top *flag.FlagSet, cmds []Command, files []string) error {
	var b strings.Builder
	fn := "_" + strings.ReplaceAll(name, "-", "_")
	fmt.Fprintf(&b, "%s() {\n\tlocal cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n", fn)
	b.WriteString("\tcase $prev in\n")
	if files := present(files, top, cmds); len(files) > 0 {
		fmt.Fprintf(&b, "\t%s)\n\t\tCOMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n", strings.Join(files, "|"))
	}
	b.WriteString("\tesac\n")
	if len(cmds) == 0 {
		fmt.Fprintf(&b, "\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n}\n", flagWords(top))
	} else {
		var names []string
		for _, c := range cmds {
			names = append(names, c.Name)
		}
		fmt.Fprintf(&b, "\tif [ \"$COMP_CWORD\" -eq 1 ]; then\n\t\tCOMPREPLY=($(compgen -W %q -- \"$cur\"))\n\t\treturn\n\tfi\n", strings.Join(names, " "))
		b.WriteString("\tcase ${COMP_WORDS[1]} in\n")
		for _, c := range cmds {
			words := flagWords(c.Flags)
			if words == "" {
				fmt.Fprintf(&b, "\t%s) COMPREPLY=($(compgen -f -- \"$cur\")) ;;\n", c.Name)
				continue
			}
			fmt.Fprintf(&b, "\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")) ;;\n", c.Name, words)
		}
		b.WriteString("\tesac\n}\n")
	}
	fmt.Fprintf(&b, "complete -F %s %s\n", fn, name)
	_, err := io.WriteString(w, b.String())
	return err
}

func flagWords(fs *flag.FlagSet) string {
	if fs == nil {
		return ""
	}
	var words []string
	fs.VisitAll(func(f *flag.Flag) { words = append(words, "--"+f.Name) })
	return strings.Join(words, " ")
}

// present keeps the flags of files that some flag set defines.
func present(files []string, top *flag.FlagSet, cmds []Command) []string {
	defined := func(fs *flag.FlagSet, name string) bool {
		return fs != nil && fs.Lookup(strings.TrimPrefix(name, "--")) != nil
	}
	var out []string
	for _, f := range files {
		ok := defined(top, f)
		for _, c := range cmds {
			ok = ok || defined(c.Flags, f)
		}
		if ok {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}
