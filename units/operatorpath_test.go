//go:build systemtest

package units

// A new operator's path, as docs/install.md and docs/operations.md write
// it, run as written on a fresh Debian rootfs under a real systemd.

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// docBlock is a fenced sh block of a page: the "## " heading it is under,
// its first line's number, and its text.
type docBlock struct {
	heading string
	line    int
	script  string
}

// shBlocks returns the ```sh blocks of a Markdown page, in order.
func shBlocks(page string) []docBlock {
	var out []docBlock
	var cur *docBlock
	heading := ""
	for i, l := range strings.Split(page, "\n") {
		switch {
		case cur != nil && strings.HasPrefix(l, "```"):
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.script += l + "\n"
		case l == "```sh":
			cur = &docBlock{heading: heading, line: i + 2}
		case strings.HasPrefix(l, "## "):
			heading = strings.TrimPrefix(l, "## ")
		}
	}
	return out
}

// dollarLines returns the commands on the "$ " lines of a page.
func dollarLines(page string) []string {
	var cmds []string
	for _, line := range strings.Split(page, "\n") {
		if cmd, ok := strings.CutPrefix(line, "$ "); ok {
			cmds = append(cmds, cmd)
		}
	}
	return cmds
}

// The stand-ins for what a container without GPU or network cannot
// install: each puts its files where the real one does and behaves like
// it where the path depends on it. They live in /usr/local/lib/standins;
// apt's stand-in installs python3's, python3's venv installs pip's, pip
// installs uv's, and uv's writes vLLM's console scripts (vllm, hf), each
// naming the environment's interpreter on its first line as pip does.
var standins = map[string]string{
	// Debian's packages come from the network; a local .deb goes to apt.
	"/usr/local/sbin/apt": `#!/bin/sh
if [ "$1" = install ]; then
	shift
	for a; do case "$a" in ./*|/*) exec /usr/bin/apt install "$@";; esac; done
	for a; do case "$a" in -*|gcc|python3-dev|python3-venv) ;; *) echo "apt stand-in: no network for $a" >&2; exit 100;; esac; done
	install -m 755 /usr/local/lib/standins/python3 /usr/local/bin/python3
	echo "stand-in: installed $*"
	exit 0
fi
exec /usr/bin/apt "$@"
`,
	"/usr/local/lib/standins/python3": `#!/bin/sh
set -eu
[ "$1 $2" = "-m venv" ] || { echo "python3 stand-in: only -m venv DIR" >&2; exit 2; }
mkdir -p "$3/bin"
install -m 755 /usr/local/lib/standins/pip "$3/bin/pip"
`,
	"/usr/local/lib/standins/pip": `#!/bin/sh
set -eu
[ "$*" = "install uv" ] || { echo "pip stand-in: only install uv" >&2; exit 2; }
install -m 755 /usr/local/lib/standins/uv "$(dirname "$0")/uv"
echo "Successfully installed uv"
`,
	// uv: venv makes an environment whose python3 is a link to the Python
	// uv downloads (3.12 is not Debian 12's), kept where uv keeps it:
	// UV_PYTHON_INSTALL_DIR, else the data directory under the home
	// (docs.astral.sh/uv/reference/storage). The "interpreter" is a shell,
	// so that the console scripts run.
	"/usr/local/lib/standins/uv": `#!/bin/sh
set -eu
case "$1" in
venv)
	shift; dir=
	while [ $# -gt 0 ]; do case "$1" in --python) shift;; -*) ;; *) dir=$1;; esac; shift; done
	py=${UV_PYTHON_INSTALL_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/uv/python}/cpython-3.12.11-linux-x86_64-gnu/bin
	mkdir -p "$py" "$dir/bin"
	cp /bin/dash "$py/python3.12"
	ln -sfn "$py/python3.12" "$dir/bin/python3"
	ln -sfn python3 "$dir/bin/python"
	echo "Using CPython 3.12.11"
	echo "Creating virtual environment with seed packages at: $dir";;
pip)
	shift; [ "$1" = install ]; shift; dir=; pkgs=
	while [ $# -gt 0 ]; do case "$1" in --python) dir=$2; shift;; -*) ;; *) pkgs="$pkgs $1";; esac; shift; done
	[ "$pkgs" = " vllm" ] || { echo "uv stand-in: only vllm" >&2; exit 2; }
	for f in vllm hf; do { echo "#!$dir/bin/python3"; cat /usr/local/lib/standins/$f; } > "$dir/bin/$f"; chmod 755 "$dir/bin/$f"; done
	mkdir -p "$dir/lib/python3.12/site-packages/vllm/engine"
	echo "    max_num_queued_reqs: int | None = None" > "$dir/lib/python3.12/site-packages/vllm/engine/arg_utils.py"
	echo "Installed 1 package";;
*) echo "uv stand-in: only venv and pip install" >&2; exit 2;;
esac
`,
	// huggingface_hub's hf: download MODEL into HF_HOME's hub cache.
	"/usr/local/lib/standins/hf": `set -eu
[ "${1:-}" = download ] && [ -n "${2:-}" ] || { echo "usage: hf download MODEL" >&2; exit 2; }
d="${HF_HOME:-$HOME/.cache/huggingface}/hub/models--$(echo "$2" | sed 's|/|--|g')"
mkdir -p "$d/snapshots/standin" "$d/refs"
echo standin > "$d/refs/main"
echo '{"architectures": ["Qwen2ForCausalLM"]}' > "$d/snapshots/standin/config.json"
echo "$d/snapshots/standin"
`,
	// vLLM's CLI: --version; serve MODEL fails as vLLM does offline when
	// the model is not in HF_HOME's cache, then behaves as standinVLLM.
	"/usr/local/lib/standins/vllm": `set -eu
if [ "${1:-}" = --version ]; then echo "0.0.0+llmlab.standin"; exit 0; fi
d="${HF_HOME:-$HOME/.cache/huggingface}/hub/models--$(echo "$2" | sed 's|/|--|g')"
if [ ! -f "$d/refs/main" ]; then
	echo "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for the specified revision on the local disk and outgoing traffic has been disabled." >&2
	exit 1
fi
` + strings.Replace(strings.TrimPrefix(standinVLLM, "#!/bin/sh\nset -eu\n"), "--profile instant", "--profile gtx1650", 1),
}

// From a fresh Debian rootfs (no network, no GPU) to a tuned, keyed
// service: every sh block of docs/install.md in order, as written, in one
// root shell's variables (bash, as an operator's terminal); operations.md's
// "$ " commands where install.md sends the operator there; then its
// upgrade and removal. After each step, what the page says success looks
// like is checked. On the way it confirms what the page warns of: an
// environment made with uv's default Python location cannot be run by the
// llmlab user, and the engine unit says why.
func TestOperatorPath(t *testing.T) {
	install, err := os.ReadFile("../docs/install.md")
	if err != nil {
		t.Fatal(err)
	}
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks, opsCmds := shBlocks(string(install)), dollarLines(string(ops))
	if len(blocks) < 8 || len(opsCmds) < 10 {
		t.Fatalf("install.md has %d sh blocks and operations.md %d commands", len(blocks), len(opsCmds))
	}
	c, first, next := bootFresh(t, "--private-network")
	version := func(deb string) string {
		return strings.TrimSuffix(strings.TrimPrefix(deb, "llmlab_"), "_amd64.deb")
	}
	c.must("sh", "-c", "cp /mnt/dist/*.deb /root/")
	for path, body := range standins {
		c.write(path, body)
		c.must("chmod", "755", path)
	}
	// run runs a script in root's shell on the box, with the variables the
	// earlier scripts left, answering yes where apt asks (remove, purge).
	run := func(script string) (string, error) {
		c.write("/root/.step", "cd /root && { . /root/.vars 2>/dev/null || true; } && set -eo pipefail\n"+script+
			"\nset | grep -E '^[a-z_][a-z0-9_]*=' > /root/.vars || true\n")
		return c.exec("sh", "-c", "yes | env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb bash /root/.step")
	}
	journal := func() string { j, _ := c.exec("journalctl", "--no-pager", "-n", "60"); return j }

	// What success looks like after each step, by a line of its block.
	checks := []struct {
		in    string
		check func(out string)
	}{
		{"apt install ./llmlab_<version>", func(out string) {
			for _, w := range []string{"\nactive\n", "llmlab: scaled to zero", "llmlab.socket active (listening) on 127.0.0.1:8080"} {
				if !strings.Contains(out, w) {
					t.Fatalf("step 3: no %q in\n%s", w, out)
				}
			}
		}},
		{"uv venv", func(out string) {
			if !strings.Contains(out, "0.0.0+llmlab.standin") {
				t.Fatalf("step 4: the llmlab user cannot run vLLM:\n%s", out)
			}
			// What the page warns of, with uv's default: the Python lands
			// in root's home, and the llmlab user cannot run it.
			c.must("sh", "-c", "HOME=/root /opt/uv/bin/uv venv --python 3.12 --seed /opt/vllm-default && /opt/uv/bin/uv pip install --python /opt/vllm-default vllm")
			if link := c.must("readlink", "/opt/vllm-default/bin/python3"); !strings.HasPrefix(link, "/root/.local/share/uv/python/") {
				t.Fatalf("uv's stand-in put the default Python at %s", link)
			}
			if out, err := c.exec("sudo", "-u", "llmlab", "/opt/vllm-default/bin/vllm", "--version"); err == nil || !strings.Contains(out, "Permission denied") {
				t.Fatalf("with uv's default Python location, the llmlab user ran vLLM: %v\n%s", err, out)
			}
		}},
		{"hf download", func(out string) {
			if !strings.Contains(out, "/var/lib/llmlab-vllm/huggingface/hub/models--Qwen--Qwen2.5-0.5B-Instruct/snapshots/") {
				t.Fatalf("step 5: hf printed\n%s", out)
			}
		}},
		{"llmlab check-config\nllmlab smoke", func(out string) {
			for _, w := range []string{"/etc/llmlab/llmlab.toml: ok", "engine ready", "ok: ", `"choices"`} {
				if !strings.Contains(out, w) {
					t.Fatalf("step 7: no %q in\n%s\n%s", w, out, journal())
				}
			}
			// The engine unit, pointed at the environment made with uv's
			// default, says why it cannot start, and smoke passes it on.
			c.must("sh", "-c", "echo LLMLAB_VLLM=/opt/vllm-default/bin/vllm >> /etc/llmlab/engine.env && systemctl stop llmlab-vllm.service")
			if out, err := run("llmlab smoke --timeout 60s"); err == nil || !strings.Contains(out, "vLLM's Python cannot be run by the llmlab user") ||
				!strings.Contains(out, "/root/.local/share/uv/python/") {
				t.Fatalf("smoke with vLLM's Python in root's home: %v\n%s", err, out)
			}
			c.must("sh", "-c", "sed -i '/^LLMLAB_VLLM=/d' /etc/llmlab/engine.env && rm -r /opt/vllm-default")
			if out, err := run("llmlab smoke --timeout 120s"); err != nil {
				t.Fatalf("smoke once vLLM is back: %v\n%s\n%s", err, out, journal())
			}
		}},
		{"--find-max", func(out string) {
			m := regexp.MustCompile(`sustainable rate within the SLO \(.*\): ([0-9.]+) req/s`).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("step 8: no sustainable rate in\n%s", out)
			}
			// The simulator's GTX 1650 profile holds about 5 req/s through
			// llmlabd (docs/benchmarks.md); a figure far off means the
			// path measured something else.
			if r, _ := strconv.ParseFloat(m[1], 64); r < 2 || r > 12 {
				t.Fatalf("step 8: %s req/s on the simulator's GTX 1650 profile\n%s", m[1], out)
			}
			t.Logf("step 8: %s", m[0])
		}},
		{"keys_file", func(out string) {
			if !strings.Contains(out, "ok: ") {
				t.Fatalf("step 9: smoke with a key:\n%s", out)
			}
			code := c.must("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8080/v1/models")
			if code != "401" {
				t.Fatalf("step 9: a request without a key got %s, want 401", code)
			}
		}},
		{"ListenStream=127.0.0.1:8090", func(out string) {
			if !strings.Contains(out, "from http://127.0.0.1:8090") {
				t.Fatalf("step 9: smoke after moving the socket:\n%s", out)
			}
		}},
		{"apt install ./llmlab_<newer>", func(out string) {
			if !strings.Contains(out, version(next)) {
				t.Fatalf("step 11: after the upgrade, dpkg says\n%s\nwant %s", out, version(next))
			}
			if out, err := run("llmlab smoke"); err != nil || !strings.Contains(out, "with the key of \"alice\"") {
				t.Fatalf("smoke after the upgrade (as root, with the keys file's key): %v\n%s", err, out)
			}
		}},
		{"apt purge llmlab", func(out string) {
			for _, gone := range []string{"/usr/bin/llmlabd", "/usr/bin/llmlab", "/etc/llmlab", "/var/lib/llmlab", "/var/lib/llmlab-vllm", "/opt/vllm"} {
				if _, err := c.exec("test", "-e", gone); err == nil {
					t.Errorf("step 12: %s is still there", gone)
				}
			}
			for _, u := range []string{"llmlab.socket", "llmlab.service", "llmlab-vllm.service"} {
				if s := c.active(u); s == "active" || s == "activating" {
					t.Errorf("step 12: %s is %s", u, s)
				}
			}
			c.must("id", "llmlab")
		}},
	}

	done := map[string]bool{}
	opsDone := false
	for _, b := range blocks {
		script := strings.NewReplacer("<version>", version(first), "<newer>", version(next)).Replace(b.script)
		if strings.Contains(b.script, "<newer>") {
			// install.md's step 10 sends the operator to operations.md:
			// its commands, on the box as the steps left it.
			for _, cmd := range opsCmds {
				out, err := run(cmd)
				silent := strings.HasPrefix(cmd, "systemctl try-reload-or-restart") // says nothing on success
				if err != nil || (!silent && strings.TrimSpace(out) == "") || strings.Contains(out, "-- No entries --") {
					t.Fatalf("docs/operations.md: %q: %v\n%s\n%s", cmd, err, out, journal())
				}
			}
			opsDone = true
		}
		start := time.Now()
		out, err := run(script)
		if err != nil {
			t.Fatalf("docs/install.md:%d (%s): %v\n%s\n%s\njournal:\n%s", b.line, b.heading, err, b.script, out, journal())
		}
		t.Logf("docs/install.md:%d (%s): %s", b.line, b.heading, time.Since(start).Round(time.Second))
		for _, ch := range checks {
			if strings.Contains(b.script, ch.in) {
				ch.check(out)
				done[ch.in] = true
			}
		}
	}
	for _, ch := range checks {
		if !done[ch.in] {
			t.Errorf("docs/install.md has no sh block with %q: a step of the path is gone", ch.in)
		}
	}
	if !opsDone {
		t.Error("docs/install.md has no upgrade block, where operations.md's commands run")
	}
}
