package auth

import (
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const file = `# name key
alice  sk-alice-0123456789
bob    sk-bob-0123456789abc
`

func TestAuthenticate(t *testing.T) {
	k, err := Parse("keys", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, header, want string
		err                error
	}{
		{"alice", "Bearer sk-alice-0123456789", "alice", nil},
		{"bob lower-case scheme", "bearer sk-bob-0123456789abc", "bob", nil},
		{"missing", "", "", ErrMissing},
		{"basic scheme", "Basic sk-alice-0123456789", "", ErrMissing},
		{"wrong", "Bearer sk-alice-0123456780", "", ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/v1/completions", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			got, err := k.Authenticate(r)
			if got != tt.want || err != tt.err {
				t.Errorf("Authenticate(%q) = %q, %v; want %q, %v", tt.header, got, err, tt.want, tt.err)
			}
		})
	}
}

func TestNoKeysMeansAnonymous(t *testing.T) {
	var k *Keys
	r := httptest.NewRequest("POST", "/", nil)
	if name, err := k.Authenticate(r); name != "" || err != nil {
		t.Fatalf("nil Keys: Authenticate = %q, %v", name, err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, data, want string }{
		{"one field", "alice\n", "line 1: want \"name key [class] [weight=N] [tpm=N]\""},
		{"zero weight", "alice sk-0123456789abcdef weight=0\n", "keys file keys: line 1: weight \"0\" of \"alice\": want a number from 0.01 to 1000"},
		{"negative weight", "alice sk-0123456789abcdef weight=-1\n", "weight \"-1\" of \"alice\""},
		{"weight not a number", "alice sk-0123456789abcdef weight=heavy\n", "weight \"heavy\" of \"alice\""},
		{"weight NaN", "alice sk-0123456789abcdef weight=NaN\n", "weight \"NaN\" of \"alice\""},
		{"weight too large", "alice sk-0123456789abcdef weight=1e6\n", "weight \"1e6\" of \"alice\""},
		{"zero tpm", "alice sk-0123456789abcdef tpm=0\n", "tpm \"0\" of \"alice\": want a whole number of tokens per minute, at least 1"},
		{"fractional tpm", "alice sk-0123456789abcdef tpm=1.5\n", "tpm \"1.5\" of \"alice\""},
		{"unknown option", "alice sk-0123456789abcdef share=2\n", "option \"share=2\" of \"alice\": want interactive, batch, class=, weight= or tpm="},
		{"option twice", "alice sk-0123456789abcdef weight=2 weight=3\n", "weight of \"alice\" is given twice"},
		{"class twice", "alice sk-0123456789abcdef batch class=interactive\n", "class of \"alice\" is given twice"},
		{"bad class option", "alice sk-0123456789abcdef class=urgent\n", "class \"urgent\" of \"alice\""},
		{"the other label", "other sk-0123456789abcdef\n", "name \"other\" is the metrics' label"},
		{"bad class", "alice sk-0123456789abcdef urgent\n", "class \"urgent\" of \"alice\": want interactive or batch"},
		{"short key", "alice short\n", "shorter than 16"},
		{"bad name", "al/ice sk-0123456789abcdef\n", "name \"al/ice\""},
		{"duplicate name", "a sk-0123456789abcdef\na sk-0123456789abcdeg\n", "appears twice"},
		{"shared key", "a sk-0123456789abcdef\nb sk-0123456789abcdef\n", "also another name's key"},
		{"empty", "# nothing\n", "no keys"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("keys", []byte(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestClasses(t *testing.T) {
	k, err := Parse("keys", []byte("alice sk-0123456789abcdef\nnightly sk-fedcba9876543210 batch\nbob sk-0123456789abcdeX interactive\n"))
	if err != nil {
		t.Fatal(err)
	}
	if k.Batch("alice") || !k.Batch("nightly") || k.Batch("bob") || k.Batch("nobody") {
		t.Fatalf("classes: alice %v nightly %v bob %v", k.Batch("alice"), k.Batch("nightly"), k.Batch("bob"))
	}
	var none *Keys
	if none.Batch("x") {
		t.Fatal("no keys: batch")
	}
}

// Options after the key: a class, a weight and tokens per minute, in any
// order; every key has the defaults for what it leaves out.
func TestOptions(t *testing.T) {
	k, err := Parse("keys", []byte(`alice sk-0123456789abcdef
acme sk-0a1b2c3d4e5f6a7b weight=3 tpm=200000
nightly sk-fedcba9876543210 tpm=1000 batch weight=0.5
eve sk-0a1b2c3d4e5f6a7X class=batch
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		want  Options
		batch bool
	}{
		{"alice", Options{Weight: 1}, false},
		{"acme", Options{Weight: 3, TokensPerMinute: 200000}, false},
		{"nightly", Options{Weight: 0.5, TokensPerMinute: 1000}, true},
		{"eve", Options{Weight: 1}, true},
		{"", Options{Weight: 1}, false},
		{"nobody", Options{Weight: 1}, false},
	}
	for _, tt := range tests {
		if got := k.Options(tt.name); got != tt.want || k.Batch(tt.name) != tt.batch {
			t.Errorf("Options(%q) = %+v, batch %v; want %+v, batch %v", tt.name, got, k.Batch(tt.name), tt.want, tt.batch)
		}
	}
	var none *Keys
	if got := none.Options("x"); got != (Options{Weight: 1}) {
		t.Errorf("no keys: Options = %+v, want weight 1 and no limit", got)
	}
}

// Metrics label the file's first MetricKeys keys by name and the rest as
// "other", so that the series stay bounded; without keys, "anonymous".
func TestLabelsBounded(t *testing.T) {
	var b strings.Builder
	for i := range MetricKeys + 10 {
		fmt.Fprintf(&b, "key%03d sk-0123456789abcdef%03d\n", i, i)
	}
	k, err := Parse("keys", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if got := k.Label("key000"); got != "key000" {
		t.Errorf("Label(first key) = %q, want its name", got)
	}
	last := fmt.Sprintf("key%03d", MetricKeys-1)
	if got := k.Label(last); got != last {
		t.Errorf("Label(key %d) = %q, want its name", MetricKeys, got)
	}
	if got := k.Label(fmt.Sprintf("key%03d", MetricKeys)); got != OtherLabel {
		t.Errorf("Label(key %d) = %q, want %q", MetricKeys+1, got, OtherLabel)
	}
	if got := k.Label("a-client-supplied-string"); got != OtherLabel {
		t.Errorf("Label(not a key) = %q, want %q", got, OtherLabel)
	}
	labels := k.Labels()
	if len(labels) != MetricKeys+1 || labels[len(labels)-1] != OtherLabel {
		t.Errorf("Labels() = %d labels ending %q, want %d ending %q", len(labels), labels[len(labels)-1], MetricKeys+1, OtherLabel)
	}
	var none *Keys
	if got := none.Label(""); got != AnonymousLabel {
		t.Errorf("no keys: Label = %q, want %q", got, AnonymousLabel)
	}
	if got := none.Labels(); len(got) != 1 || got[0] != AnonymousLabel {
		t.Errorf("no keys: Labels = %q", got)
	}
}

// A keys file other users may read is refused, naming the file, its mode
// and the fix; one only its owner and group read loads.
func TestLoadRefusesAFileOthersCanRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644) // whatever the umask
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "0644") || !strings.Contains(err.Error(), "chmod o-rwx") {
		t.Fatalf("a world-readable keys file: %v", err)
	}
	// Any permission for others, not only reading: one who may write the
	// file may add a key of their own.
	for _, mode := range []os.FileMode{0o642, 0o641, 0o647} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path); err == nil {
			t.Errorf("a keys file of mode %04o loaded; want it refused", mode)
		}
	}
	os.Chmod(path, 0o640)
	k, err := Load(path)
	if err != nil || k.Len() != 2 {
		t.Fatalf("a 0640 keys file: %v, %d keys", err, k.Len())
	}
}
