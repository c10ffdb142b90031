package auth

import (
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
		{"one field", "alice\n", "line 1: want \"name key [class]\""},
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
