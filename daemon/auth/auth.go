// Package auth owns the optional API keys. A keys file holds one key a line:
// its name, the key, and options: a priority class (interactive, the
// default, or batch), a weight (weight=N: the key's share of the engine's
// work when it is contended, counted in tokens; 1 by default) and a limit
// in tokens per minute (tpm=N: prompt and output tokens; none by default):
//
//	# name   key                    options
//	alice    sk-0123456789abcdef
//	nightly  sk-fedcba9876543210    batch
//	acme     sk-0a1b2c3d4e5f6a7b    weight=3 tpm=200000
//
// Blank lines and lines starting with '#' are ignored. Names appear in logs
// and metrics; keys never do. Keys are compared through their SHA-256 digest
// so that lookup time does not depend on how much of a key matches.
//
// Metrics label a key by its name for the first MetricKeys keys of the
// file and as "other" beyond, so that a file of many keys cannot grow the
// series without bound; without keys the label is "anonymous".
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
	"slices"
	"strconv"
	"strings"
)

// Keys maps key digests to names. The zero value (nil) means no keys are
// configured and every request is anonymous.
type Keys struct {
	byDigest map[[32]byte]string
	batch    map[string]bool // names whose class is batch
	opts     map[string]Options
	// labelled are the names metrics show by name, the file's first
	// MetricKeys.
	labelled map[string]bool
}

// Options are a key's settings beyond its class.
type Options struct {
	// Weight is the key's share of the engine's work under contention,
	// relative to the other keys' (default 1).
	Weight float64
	// TokensPerMinute limits the prompt and output tokens the key may ask
	// for a minute (0: no limit).
	TokensPerMinute int
}

// MetricKeys is how many keys, the first of the file, metrics label by
// name; the rest share the label OtherLabel.
const MetricKeys = 32

// Labels of metrics that are not a key's name.
const (
	OtherLabel     = "other"
	AnonymousLabel = "anonymous"
)

// Limits of the options: a weight from MinWeight to MaxWeight keeps the
// fair scheduler's arithmetic well within float64's precision.
const (
	MinWeight = 0.01
	MaxWeight = 1000
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// Load reads a keys file. A file that others may read (any permission for
// "other") is refused: the keys are secrets, and the file belongs to root
// with group llmlab, mode 0640.
func Load(path string) (*Keys, error) {
	data, err := read(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// read returns a keys file's content, refusing one that others may read.
func read(path string) ([]byte, error) {
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
	return data, nil
}

// Parse reads keys file content; path is used in messages.
func Parse(path string, data []byte) (*Keys, error) {
	k := &Keys{byDigest: map[[32]byte]string{}, batch: map[string]bool{}, opts: map[string]Options{}, labelled: map[string]bool{}}
	names := map[string]bool{}
	var errs []error
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			errs = append(errs, fmt.Errorf("keys file %s: line %d: want \"name key [class] [weight=N] [tpm=N]\", got %d fields", path, n, len(f)))
			continue
		}
		name, key := f[0], f[1]
		class, o, bad := parseOptions(f[2:], name)
		for _, err := range bad {
			errs = append(errs, fmt.Errorf("keys file %s: line %d: %w", path, n, err))
		}
		switch {
		case len(bad) > 0:
		case !nameRE.MatchString(name):
			errs = append(errs, fmt.Errorf("keys file %s: line %d: name %q: use letters, digits, '.', '_' or '-' (at most 64)", path, n, name))
		case name == OtherLabel:
			errs = append(errs, fmt.Errorf("keys file %s: line %d: name %q is the metrics' label for the keys past the first %d; choose another", path, n, name, MetricKeys))
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
			k.opts[name] = o
			if len(k.labelled) < MetricKeys {
				k.labelled[name] = true
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

// parseOptions reads the fields after a key: a class (interactive or
// batch, bare or as class=...), weight=N and tpm=N, each at most once. The
// errors name the key and the value.
func parseOptions(fields []string, name string) (class string, o Options, errs []error) {
	class, o.Weight = "interactive", 1
	seen := map[string]bool{}
	for _, f := range fields {
		opt, val, isSet := strings.Cut(f, "=")
		if !isSet {
			opt, val = "class", f
		}
		if seen[opt] {
			errs = append(errs, fmt.Errorf("%s of %q is given twice", opt, name))
			continue
		}
		seen[opt] = true
		switch opt {
		case "class":
			if val != "interactive" && val != "batch" {
				errs = append(errs, fmt.Errorf("class %q of %q: want interactive or batch", val, name))
			}
			class = val
		case "weight":
			w, err := strconv.ParseFloat(val, 64)
			if err != nil || !(w >= MinWeight && w <= MaxWeight) {
				errs = append(errs, fmt.Errorf("weight %q of %q: want a number from %g to %g (the key's share of the engine's work under contention; default 1)", val, name, MinWeight, float64(MaxWeight)))
			}
			o.Weight = w
		case "tpm":
			t, err := strconv.Atoi(val)
			if err != nil || t < 1 {
				errs = append(errs, fmt.Errorf("tpm %q of %q: want a whole number of tokens per minute, at least 1 (leave it out for no limit)", val, name))
			}
			o.TokensPerMinute = t
		default:
			errs = append(errs, fmt.Errorf("option %q of %q: want interactive, batch, class=, weight= or tpm=", f, name))
		}
	}
	return class, o, errs
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

// Options returns the options of the key named name; a name that is not
// a key's ("" without keys) has the defaults (weight 1, no token limit).
func (k *Keys) Options(name string) Options {
	if k != nil {
		if o, ok := k.opts[name]; ok {
			return o
		}
	}
	return Options{Weight: 1}
}

// Label is the metrics label of the key named name: the name for the
// file's first MetricKeys keys, OtherLabel for the rest, AnonymousLabel
// for "" (no keys).
func (k *Keys) Label(name string) string {
	switch {
	case name == "":
		return AnonymousLabel
	case k != nil && k.labelled[name]:
		return name
	}
	return OtherLabel
}

// Labels are the metrics labels the keys use, sorted: the labelled names,
// and OtherLabel if there are more keys; AnonymousLabel without keys.
func (k *Keys) Labels() []string {
	if !k.Enabled() {
		return []string{AnonymousLabel}
	}
	out := make([]string, 0, len(k.labelled)+1)
	for name := range k.labelled {
		out = append(out, name)
	}
	slices.Sort(out)
	if len(k.byDigest) > len(k.labelled) {
		out = append(out, OtherLabel)
	}
	return out
}

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

// FirstKey returns the name and the key of a keys file's first key, for a
// client on the same box (llmlab smoke run by root) that was given none.
// The file is read and parsed as llmlabd loads it, so a file llmlabd
// would refuse gives its error here too.
func FirstKey(path string) (name, key string, err error) {
	data, err := read(path)
	if err != nil {
		return "", "", err
	}
	if _, err := Parse(path, data); err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if f := strings.Fields(line); len(f) >= 2 && !strings.HasPrefix(line, "#") {
			return f[0], f[1], nil
		}
	}
	return "", "", fmt.Errorf("keys file %s: no keys", path)
}
