package auth

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The example keys file the package ships (etc/keys.example, installed
// as /usr/share/doc/llmlab/examples/keys) loads once its example lines
// are uncommented, as its header tells the operator, and each line means
// what its comment says; as shipped, it holds no key at all.
func TestShippedExample(t *testing.T) {
	data, err := os.ReadFile("../../etc/keys.example")
	if err != nil {
		t.Fatal(err)
	}
	if k, err := Parse("keys.example", data); err == nil || k.Enabled() {
		t.Fatalf("the example as shipped loads keys (%v): a copied file must not serve its example keys", err)
	}
	// "#name key ..." lines are the examples; "# ..." lines are prose.
	example := regexp.MustCompile(`(?m)^#([A-Za-z0-9._-]+\s+sk-)`)
	on := example.ReplaceAll(data, []byte("$1"))
	k, err := Parse("keys.example", on)
	if err != nil {
		t.Fatalf("the example, uncommented: %v", err)
	}
	if k.Len() != 3 || k.Batch("alice") || !k.Batch("nightly") {
		t.Fatalf("the example, uncommented: %d keys, alice batch %v, nightly batch %v; want 3, false, true", k.Len(), k.Batch("alice"), k.Batch("nightly"))
	}
	if o := k.Options("acme"); o.Weight != 3 || o.TokensPerMinute != 200000 {
		t.Fatalf("acme's options: %+v, want weight 3 and tpm 200000", o)
	}
	// The key it tells how to make is long enough.
	if !strings.Contains(string(data), "head -c 16 /dev/urandom | od -An -tx1") {
		t.Fatal("the example no longer says how to make a key")
	}
}

// FirstKey gives the first key of a file llmlabd would load, and refuses
// one it would refuse.
func TestFirstKey(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/keys"
	if err := os.WriteFile(path, []byte("# name key\n\nalice  sk-alice-0123456789 batch\nbob sk-bob-0123456789abc\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if name, key, err := FirstKey(path); err != nil || name != "alice" || key != "sk-alice-0123456789" {
		t.Fatalf("FirstKey = %q %q %v, want alice sk-alice-0123456789", name, key, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := FirstKey(path); err == nil || !strings.Contains(err.Error(), "open to other users") {
		t.Fatalf("FirstKey of a file others can read: %v, want llmlabd's refusal", err)
	}
}
