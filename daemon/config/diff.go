package config

import (
	"fmt"
	"reflect"
	"sync"
)

// Need is what a change of a key needs before it takes effect, as the
// key's reload tag declares it (see Config).
type Need int

const (
	// NeedNothing: a reload applies the new value.
	NeedNothing Need = iota
	// NeedDaemonRestart: the value is read only when llmlabd starts; a
	// reload logs that the change needs a restart and leaves the running
	// part as it is.
	NeedDaemonRestart
	// NeedEngineRestart: the value is read when the engine starts; a
	// reload drains the engine and starts it again with the new value.
	NeedEngineRestart
	// NeedSleepMode: a rung of the sleep ladder. The reload applies the
	// new idle time; the engine is restarted only when vLLM's sleep mode,
	// which it is started with, turns on or off (Engine.SleepMode).
	NeedSleepMode
)

// needTags are the reload tag's values.
var needTags = map[string]Need{"none": NeedNothing, "daemon": NeedDaemonRestart, "engine": NeedEngineRestart, "sleep_mode": NeedSleepMode}

// String names the need as the reload tag writes it.
func (n Need) String() string {
	switch n {
	case NeedNothing:
		return "none"
	case NeedDaemonRestart:
		return "daemon"
	case NeedEngineRestart:
		return "engine"
	case NeedSleepMode:
		return "sleep_mode"
	}
	return fmt.Sprintf("Need(%d)", int(n))
}

// Change is one key whose value differs between two configurations.
type Change struct {
	// Key is "section.key", as the file writes it.
	Key string
	// Old and New are the values, as Config holds them.
	Old, New any
	// Needs is what the change needs before it takes effect.
	Needs Need
}

// String is the change as the reload's log line writes it:
// "section.key: old -> new".
func (c Change) String() string { return fmt.Sprintf("%s: %v -> %v", c.Key, c.Old, c.New) }

// Diff lists the keys whose values differ between a and b, in file order.
func Diff(a, b *Config) []Change {
	var out []Change
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for _, k := range schema() {
		x, y := va.FieldByIndex(k.index).Interface(), vb.FieldByIndex(k.index).Interface()
		if fmt.Sprint(x) != fmt.Sprint(y) {
			out = append(out, Change{Key: k.name, Old: x, New: y, Needs: k.needs})
		}
	}
	return out
}

// key is one key of Config: its name, its field, and what its change
// needs.
type key struct {
	name  string
	index []int
	needs Need
	// declared says the field has a toml tag and a known reload tag.
	declared bool
}

// schema lists Config's keys in file order, read once from its tags. A key
// whose reload tag is missing or unknown (the package's tests refuse one)
// is taken to need a restart of llmlabd, so that its change is at least
// logged.
var schema = sync.OnceValue(func() []key {
	var keys []key
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		sec := t.Field(i)
		if sec.Type.Kind() != reflect.Struct {
			continue
		}
		for j := range sec.Type.NumField() {
			f := sec.Type.Field(j)
			name, hasName := f.Tag.Lookup("toml")
			need, hasNeed := needTags[f.Tag.Get("reload")]
			if !hasName {
				name = f.Name
			}
			if !hasNeed {
				need = NeedDaemonRestart
			}
			keys = append(keys, key{name: sec.Tag.Get("toml") + "." + name, index: []int{i, j}, needs: need, declared: hasName && hasNeed})
		}
	}
	return keys
})
