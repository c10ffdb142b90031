package manpage

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func testFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.String("config", "/etc/x.toml", "configuration `file`")
	fs.Int("rate", 0, "requests per second")
	fs.Bool("dry-run", false, "print, do nothing")
	return fs
}

func TestPageListsEveryFlag(t *testing.T) {
	var b bytes.Buffer
	p := Page{Name: "tool", Section: 1, Version: "1.2", Summary: "does things", Synopsis: "[FLAGS]",
		Description: []string{"First.", ".starts with a dot", "  example --flag"},
		Flags:       testFlags(),
		Sections:    []Section{{Title: "Files", Paras: []string{"/etc/x.toml\tthe file"}}}}
	if err := p.Write(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		`.TH TOOL 1 "" "llmlab 1.2"`,
		`\fB\-\-config\fR \fIfile\fR`, "configuration file (default: /etc/x.toml)",
		`\fB\-\-rate\fR \fIint\fR`, `\fB\-\-dry\-run\fR`,
		`\&.starts with a dot`, // a leading dot would be a roff request
		".SH FILES\n.TP\n.B /etc/x.toml\nthe file",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("page lacks %q:\n%s", want, out)
		}
	}
	// man(1) renders it without warnings.
	f := filepath.Join(t.TempDir(), "tool.1")
	os.WriteFile(f, b.Bytes(), 0o644)
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", f)
	if msg, err := cmd.CombinedOutput(); err != nil || len(msg) > 0 {
		t.Errorf("groff: %v\n%s", err, msg)
	}
}

// complete runs the completion in bash for the words typed so far.
func complete(t *testing.T, script string, words ...string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "completion.bash")
	os.WriteFile(f, []byte(script), 0o644)
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, "'"+w+"'")
	}
	prog := `source "$1"; COMP_WORDS=(` + strings.Join(quoted, " ") + `); COMP_CWORD=$((${#COMP_WORDS[@]}-1));
fn=$(complete -p "${COMP_WORDS[0]}" | sed 's/.*-F \([^ ]*\).*/\1/'); $fn; printf '%s\n' "${COMPREPLY[@]}"`
	out, err := exec.Command("bash", "-c", prog, "bash", f).CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("bash is needed for this test")
	}
	run := flag.NewFlagSet("run", flag.ContinueOnError)
	run.Int("rate", 0, "")
	run.String("trace", "", "")
	var b bytes.Buffer
	if err := Bash(&b, "tool", nil, []Command{{Name: "run", Flags: run}, {Name: "check", Args: "[PATH]"}}, []string{"--trace", "--config"}); err != nil {
		t.Fatal(err)
	}
	if err := Bash(&b, "toold", testFlags(), nil, []string{"--config"}); err != nil {
		t.Fatal(err)
	}
	script := b.String()
	if got := complete(t, script, "tool", "r"); got != "run" {
		t.Errorf("tool r<TAB> = %q, want run", got)
	}
	if got := complete(t, script, "tool", "run", "--r"); got != "--rate" {
		t.Errorf("tool run --r<TAB> = %q, want --rate", got)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "arrivals.txt"), nil, 0o644)
	if got := complete(t, script, "tool", "run", "--trace", dir+"/arr"); got != dir+"/arrivals.txt" {
		t.Errorf("tool run --trace <TAB> = %q, want the file", got)
	}
	if got := complete(t, script, "toold", "--c"); got != "--config" {
		t.Errorf("toold --c<TAB> = %q, want --config", got)
	}
	if got := complete(t, script, "toold", "--"); got != "--config\n--dry-run\n--rate" {
		t.Errorf("toold --<TAB> = %q", got)
	}
}
