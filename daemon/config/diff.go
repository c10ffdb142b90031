package config

import (
	"fmt"
	"reflect"
	"strings"
	"unicode"
)

// Diff lists the keys whose values differ between a and b, as
// "section.key: old -> new", in file order.
func Diff(a, b *Config) []string {
	var out []string
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	t := va.Type()
	for i := 0; i < t.NumField(); i++ {
		sec := t.Field(i)
		if sec.Type.Kind() != reflect.Struct {
			continue
		}
		for j := 0; j < sec.Type.NumField(); j++ {
			x := fmt.Sprint(va.Field(i).Field(j).Interface())
			y := fmt.Sprint(vb.Field(i).Field(j).Interface())
			if x != y {
				out = append(out, fmt.Sprintf("%s.%s: %s -> %s", snake(sec.Name), snake(sec.Type.Field(j).Name), x, y))
			}
		}
	}
	return out
}

// snake turns a Go field name into its TOML key (MaxInflight: max_inflight,
// MaxNumSeqs: max_num_seqs, URL: url).
func snake(s string) string {
	var b strings.Builder
	r := []rune(s)
	for i, c := range r {
		if unicode.IsUpper(c) && i > 0 && (unicode.IsLower(r[i-1]) || (i+1 < len(r) && unicode.IsLower(r[i+1]))) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}
