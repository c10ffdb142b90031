package packaging

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// build runs build-deb.sh into a folder of its own and returns the .deb.
func build(t *testing.T, env ...string) string {
	t.Helper()
	dist := t.TempDir()
	cmd := exec.Command("sh", "build-deb.sh")
	cmd.Env = append(append(os.Environ(), "DIST="+dist), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build-deb.sh: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func TestDeb(t *testing.T) {
	epoch, err := exec.Command("git", "log", "-1", "--format=%ct").Output()
	if err != nil {
		t.Fatal(err)
	}
	sde := "SOURCE_DATE_EPOCH=" + strings.TrimSpace(string(epoch))
	a, b := build(t, sde), build(t, sde)

	t.Run("reproducible", func(t *testing.T) {
		da, _ := os.ReadFile(a)
		db, _ := os.ReadFile(b)
		if sha256.Sum256(da) != sha256.Sum256(db) {
			t.Fatalf("two builds of one commit differ: %s and %s", a, b)
		}
	})

	t.Run("version from git", func(t *testing.T) {
		// No tag on HEAD: <last tag or 0>~git<UTC time>.<hash>, later builds sorting later.
		name := filepath.Base(a)
		if tag, err := exec.Command("git", "describe", "--tags", "--exact-match").Output(); err == nil {
			want := "llmlab_" + strings.TrimPrefix(strings.TrimSpace(string(tag)), "v") + "_amd64.deb"
			if name != want {
				t.Fatalf("package %s, want %s", name, want)
			}
			return
		}
		if !regexp.MustCompile(`^llmlab_[0-9][0-9.]*~git\d{14}\.[0-9a-f]{12}_amd64\.deb$`).MatchString(name) {
			t.Fatalf("package %s: want llmlab_<tag or 0>~git<UTC time>.<hash>_amd64.deb", name)
		}
		e, _ := strconv.ParseInt(strings.TrimPrefix(sde, "SOURCE_DATE_EPOCH="), 10, 64)
		later := build(t, fmt.Sprintf("SOURCE_DATE_EPOCH=%d", e+60))
		v := func(deb string) string { return strings.Split(filepath.Base(deb), "_")[1] }
		if err := exec.Command("dpkg", "--compare-versions", v(later), "gt", v(a)).Run(); err != nil {
			t.Fatalf("a later build's version %s does not sort after %s", v(later), v(a))
		}
	})

	t.Run("lintian", func(t *testing.T) {
		if _, err := exec.LookPath("lintian"); err != nil {
			t.Fatal("lintian is needed (apt-get install lintian)")
		}
		out, err := exec.Command("lintian", "--pedantic", "--fail-on", "error,warning,pedantic", a).CombinedOutput()
		var tags []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "llmlab") {
				tags = append(tags, l)
			}
		}
		if err != nil || len(tags) > 0 {
			t.Fatalf("lintian: %v\n%s", err, out)
		}
	})

	t.Run("contents", func(t *testing.T) {
		conffiles, err := exec.Command("dpkg-deb", "-f", a, "Package").Output()
		if err != nil || strings.TrimSpace(string(conffiles)) != "llmlab" {
			t.Fatalf("dpkg-deb -f: %v %s", err, conffiles)
		}
		ctl := t.TempDir()
		if out, err := exec.Command("dpkg-deb", "-e", a, ctl).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -e: %v %s", err, out)
		}
		cf, _ := os.ReadFile(filepath.Join(ctl, "conffiles"))
		if got := strings.Fields(string(cf)); !slices.Equal(got, []string{"/etc/llmlab/engine.env", "/etc/llmlab/llmlab.toml"}) {
			t.Errorf("conffiles %v", got)
		}
		list, err := exec.Command("dpkg-deb", "-c", a).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"./usr/bin/llmlabd", "./usr/bin/llmlab", "./usr/libexec/llmlab/llmlab-engine",
			"./lib/systemd/system/llmlab.socket", "./lib/systemd/system/llmlab.service", "./lib/systemd/system/llmlab-vllm.service",
			"./usr/share/polkit-1/rules.d/50-llmlab.rules", "./usr/lib/sysusers.d/llmlab.conf", "./usr/lib/tmpfiles.d/llmlab.conf",
			"./usr/share/man/man1/llmlab.1.gz", "./usr/share/man/man8/llmlabd.8.gz",
			"./usr/share/bash-completion/completions/llmlab", "./usr/share/bash-completion/completions/llmlabd",
			"./usr/share/doc/llmlab/copyright", "./usr/share/doc/llmlab/changelog.gz", "./usr/share/doc/llmlab/install.md",
			"./usr/share/doc/llmlab/operations.md", "./usr/share/doc/llmlab/metrics.md", "./usr/share/doc/llmlab/scaling.md",
			"./usr/share/doc/llmlab/examples/haproxy.cfg", "./usr/share/doc/llmlab/examples/llmlab-503.http", "./usr/share/doc/llmlab/examples/nginx.conf", "./usr/share/doc/llmlab/examples/tuning-gtx1650.toml", "./usr/share/doc/llmlab/tuning.md", "./usr/share/llmlab/monitoring/llmlab-alerts.yml",
			"./usr/share/llmlab/monitoring/llmlab-dashboard.json"} {
			if !strings.Contains(string(list), " "+f+"\n") && !strings.Contains(string(list), " "+f+" -> ") {
				t.Errorf("the package lacks %s", f)
			}
		}
	})

	// Every relative link of a page in the package names a file or folder
	// in the package (TestShippedDocLinksShipped reasons from nfpm.yaml;
	// this reads the package itself, README.md as build-deb.sh made it).
	t.Run("doc links", func(t *testing.T) {
		root := t.TempDir()
		if out, err := exec.Command("dpkg-deb", "-x", a, root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x: %v %s", err, out)
		}
		docs := filepath.Join(root, "usr/share/doc/llmlab")
		pages := 0
		err := filepath.WalkDir(docs, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".md") {
				return err
			}
			pages++
			text, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			for _, l := range relativeLinks(string(text)) {
				target := filepath.Join(filepath.Dir(p), l.target)
				if r, err := filepath.Rel(root, target); err != nil || strings.HasPrefix(r, "..") {
					t.Errorf("/%s:%d: %s leaves the package", rel, l.line, l.target)
				} else if _, err := os.Stat(target); err != nil {
					t.Errorf("/%s:%d: %s: the package has no /%s", rel, l.line, l.target, r)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if pages < 5 {
			t.Errorf("%d pages in /usr/share/doc/llmlab, want README.md and the pages of docs/", pages)
		}
	})

	// Depends names libc6 (>= 2.34): the binaries must need no newer
	// symbol version.
	t.Run("libc dependency", func(t *testing.T) {
		dep, _ := exec.Command("dpkg-deb", "-f", a, "Depends").Output()
		m := regexp.MustCompile(`libc6 \(>= 2\.(\d+)\)`).FindSubmatch(dep)
		if m == nil {
			t.Fatalf("Depends %q names no libc6 version", dep)
		}
		declared, _ := strconv.Atoi(string(m[1]))
		root := t.TempDir()
		if out, err := exec.Command("dpkg-deb", "-x", a, root).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb -x: %v %s", err, out)
		}
		// The binaries start (a link option such as -z now breaks go-nvml's
		// lazy symbols at start, on every machine).
		if out, err := exec.Command(filepath.Join(root, "usr/bin/llmlabd"), "--version").CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "llmlabd ") {
			t.Errorf("llmlabd --version: %v %s", err, out)
		}
		if out, err := exec.Command(filepath.Join(root, "usr/bin/llmlab"), "help").CombinedOutput(); err != nil {
			t.Errorf("llmlab help: %v %s", err, out)
		}
		for _, bin := range []string{"usr/bin/llmlabd", "usr/bin/llmlab"} {
			f, err := elf.Open(filepath.Join(root, bin))
			if err != nil {
				t.Fatal(err)
			}
			syms, err := f.ImportedSymbols()
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range syms {
				if v, ok := strings.CutPrefix(s.Version, "GLIBC_2."); ok {
					minor, _ := strconv.Atoi(strings.Split(v, ".")[0])
					if minor > declared {
						t.Errorf("%s needs %s@%s, newer than the declared libc6 (>= 2.%d)", bin, s.Name, s.Version, declared)
					}
				}
			}
		}
	})
}
