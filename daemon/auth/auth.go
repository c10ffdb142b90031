// Package auth owns the optional API keys. A keys file holds one key a line,
// with an optional priority class (interactive, the default, or batch):
//
//	# name   key                    class
//	alice    sk-0123456789abcdef
//	nightly  sk-fedcba9876543210    batch
//
// Blank lines and lines starting with '#' are ignored. Names appear in logs
// and metrics; keys never do. Keys are compared through their SHA-256 digest
// so that lookup time does not depend on how much of a key matches.
package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
)

// Keys maps key digests to names. The zero value (nil) means no keys are
// configured and every request is anonymous.
type Keys struct {
	byDigest map[[32]byte]string
	batch    map[string]bool // names whose class is batch
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Load reads a keys file. A file that others may read (any permission for
// "other") is refused: the keys are secrets, and the file belongs to root
// with group llmlab, mode 0640.
func Load(path string) (*Keys, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading keys file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading keys file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		return nil, fmt.Errorf("keys file %s is open to other users (mode %04o): the keys are secrets; chmod o-rwx %s (0640, owner root, group llmlab)", path, perm, path)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading keys file: %w", err)
	}
	return Parse(path, data)
}

// Parse reads keys file content; path is used in messages.
func Parse(path string, data []byte) (*Keys, error) {
	k := &Keys{byDigest: map[[32]byte]string{}, batch: map[string]bool{}}
	names := map[string]bool{}
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 && len(f) != 3 {
			errs = append(errs, fmt.Errorf("keys file %s: line %d: want \"name key [class]\", got %d fields", path, n, len(f)))
			continue
		}
		name, key, class := f[0], f[1], "interactive"
		if len(f) == 3 {
			class = f[2]
		}
		switch {
		case class != "interactive" && class != "batch":
			errs = append(errs, fmt.Errorf("keys file %s: line %d: class %q of %q: want interactive or batch", path, n, class, name))
		case !nameRE.MatchString(name):
			errs = append(errs, fmt.Errorf("keys file %s: line %d: name %q: use letters, digits, '.', '_' or '-' (at most 64)", path, n, name))
		case len(key) < 16:
			errs = append(errs, fmt.Errorf("keys file %s: line %d: the key of %q is shorter than 16 characters", path, n, name))
		case names[name]:
			errs = append(errs, fmt.Errorf("keys file %s: line %d: name %q appears twice", path, n, name))
		default:
			d := sha256.Sum256([]byte(key))
			if _, dup := k.byDigest[d]; dup {
				errs = append(errs, fmt.Errorf("keys file %s: line %d: the key of %q is also another name's key", path, n, name))
			}
			k.byDigest[d] = name
			names[name] = true
			if class == "batch" {
				k.batch[name] = true
			}
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("keys file %s: %w", path, err))
	}
	if len(errs) == 0 && len(k.byDigest) == 0 {
		errs = append(errs, fmt.Errorf("keys file %s: no keys", path))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return k, nil
}

// Enabled reports whether keys are required.
func (k *Keys) Enabled() bool { return k != nil && len(k.byDigest) > 0 }

// Len is the number of keys.
func (k *Keys) Len() int {
	if k == nil {
		return 0
	}
	return len(k.byDigest)
}

// Batch reports whether the key named name is of the batch class.
func (k *Keys) Batch(name string) bool { return k != nil && k.batch[name] }

// Errors returned by Authenticate.
var (
	ErrMissing = errors.New("missing API key: send it as 'Authorization: Bearer KEY'")
	ErrInvalid = errors.New("incorrect API key provided")
)

// Authenticate returns the name of the key the request carries, "" when
// keys are not enabled, or ErrMissing / ErrInvalid.
func (k *Keys) Authenticate(r *http.Request) (string, error) {
	if !k.Enabled() {
		return "", nil
	}
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", ErrMissing
	}
	name, ok := k.byDigest[sha256.Sum256([]byte(strings.TrimSpace(token)))]
	if !ok {
		return "", ErrInvalid
	}
	return name, nil
}
