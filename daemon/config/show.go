package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Setting is one key of the effective configuration.
type Setting struct {
	// Key is "section.key".
	Key string
	// Value is the value in effect, written as TOML.
	Value string
	// FromFile is true when the file wrote the key (else it is the
	// built-in default).
	FromFile bool
	// Default is the built-in default, written as TOML.
	Default string
	// Derived says what a value that follows another key comes to ("":
	// the value is used as written).
	Derived string
}

// Show parses data (read from path) as Parse does and lists every key
// with the value in effect and where it came from, in schema order.
func Show(path string, data []byte) ([]Setting, error) {
	c, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	r := defaults()
	md, err := toml.Decode(string(data), &r)
	if err != nil {
		return nil, err // Parse has already reported it
	}
	derived := derivedValues(c)
	var out []Setting
	rv, dv := reflect.ValueOf(r), reflect.ValueOf(defaults())
	rt := rv.Type()
	for i := range rt.NumField() {
		sec := rt.Field(i).Tag.Get("toml")
		for j := range rt.Field(i).Type.NumField() {
			f := rt.Field(i).Type.Field(j)
			key := f.Tag.Get("toml")
			if f.Tag.Get("deprecated") != "" && !md.IsDefined(sec, key) {
				continue
			}
			v := tomlValue(rv.Field(i).Field(j))
			if derived[sec+"."+key] == v {
				delete(derived, sec+"."+key) // used as written
			}
			out = append(out, Setting{Key: sec + "." + key, Value: v,
				FromFile: md.IsDefined(sec, key), Default: tomlValue(dv.Field(i).Field(j)), Derived: derived[sec+"."+key]})
		}
	}
	return out, nil
}

// derivedValues says what each key that follows another comes to in c.
func derivedValues(c *Config) map[string]string {
	d := map[string]string{}
	if c.Queue.MaxBatch == 0 || c.Queue.MaxBatch > c.Queue.MaxInflight {
		d["queue.max_batch"] = "the in-flight limit"
	}
	if c.Queue.FromModel() && c.Queue.TargetLatency == 0 {
		if c.SLO.Latency > 0 {
			d["queue.target_latency"] = "slo.latency (" + c.SLO.Latency.String() + "; docs/admission.md)"
		} else {
			d["queue.target_latency"] = "none: the engine's knee and queue.max_inflight bound the limit"
		}
	}
	if c.Limits.Rate > 0 {
		d["limits.burst"] = strconv.Itoa(c.Limits.Burst)
	}
	if c.Limits.GlobalRate > 0 {
		d["limits.global_burst"] = strconv.Itoa(c.Limits.GlobalBurst)
	}
	// A file that still says "adaptive" gets the model (Parse says why).
	d["queue.concurrency"] = strconv.Quote(c.Queue.Concurrency)
	if c.Queue.FromModel() {
		d["queue.min_inflight"] = strconv.Itoa(c.Queue.MinInflight)
	}
	return d
}

// tomlValue writes v as a TOML value.
func tomlValue(v reflect.Value) string {
	switch v.Kind() {
	case reflect.String:
		return strconv.Quote(v.String())
	case reflect.Slice:
		parts := make([]string, v.Len())
		for i := range v.Len() {
			parts[i] = tomlValue(v.Index(i))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case reflect.Pointer:
		if v.IsNil() {
			return "(unset)"
		}
		return tomlValue(v.Elem())
	case reflect.Float64:
		s := strconv.FormatFloat(v.Float(), 'f', -1, 64)
		if !strings.ContainsAny(s, ".e") {
			s += ".0"
		}
		return s
	default:
		return fmt.Sprint(v.Interface())
	}
}
