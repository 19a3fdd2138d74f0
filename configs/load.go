package configs

import (
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts every environment override: INFRAWATCH_<SECTION>_<KEY>.
const EnvPrefix = "INFRAWATCH_"

const (
	// envAdminToken is the documented shortcut for auth.admin_token (SPEC);
	// INFRAWATCH_AUTH_ADMIN_TOKEN wins when both are set.
	envAdminToken = "INFRAWATCH_ADMIN_TOKEN"
	// envInfluxd is read by internal/testenv, not by the configuration.
	envInfluxd = "INFRAWATCH_INFLUXD"
)

// Load builds the configuration: the embedded defaults, then the YAML file at
// path (none when path is ""; a missing explicit file is an error), then
// INFRAWATCH_<SECTION>_<KEY> variables from environ (as from os.Environ), then
// Validate. It reports every problem, not just the first: the returned error
// joins one *FieldError per problem, each naming its key and source.
func Load(path string, environ []string) (*Config, error) {
	c := Default()
	origin := map[string]string{}
	var errs []*FieldError
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, &FieldError{Msg: fmt.Sprintf("read config file: %v", err), Err: err})
		} else {
			decodeYAML(data, path, c, origin, &errs)
		}
	}
	applyEnv(environ, c, origin, &errs)

	// A key that failed to decode kept its previous, valid value; do not
	// report it twice.
	failed := map[string]bool{}
	for _, e := range errs {
		failed[e.Key] = true
	}
	for _, e := range c.validate() {
		if failed[e.Key] {
			continue
		}
		e.Source = origin[e.Key]
		if e.Source == "" {
			e.Source = "default"
		}
		errs = append(errs, e)
	}
	if len(errs) > 0 {
		return nil, joinFieldErrors(errs)
	}
	return c, nil
}

// decodeYAML overlays the YAML document data (named name in messages) onto c.
func decodeYAML(data []byte, name string, c *Config, origin map[string]string, errs *[]*FieldError) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		*errs = append(*errs, &FieldError{Source: name, Msg: fmt.Sprintf("parse YAML: %v", err), Err: err})
		return
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return // an empty file changes nothing
	}
	d := decoder{
		src:    func(n *yaml.Node) string { return fmt.Sprintf("%s:%d", name, n.Line) },
		origin: origin,
		errs:   errs,
	}
	d.decode(doc.Content[0], reflect.ValueOf(c).Elem(), "")
}

// applyEnv overlays INFRAWATCH_* variables onto c. Each variable becomes a
// one-key YAML tree {section: {key: value}} decoded by the same code as a
// file, so types, checks and messages are identical.
func applyEnv(environ []string, c *Config, origin map[string]string, errs *[]*FieldError) {
	var alias string
	var haveAlias, haveAuthToken bool
	for _, kv := range environ {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		switch name {
		case envAdminToken:
			alias, haveAlias = val, true
			continue
		case envInfluxd:
			continue
		}
		if name == EnvPrefix+"AUTH_ADMIN_TOKEN" {
			haveAuthToken = true
		}
		// Section names contain no underscore, so the first one ends it.
		section, key, _ := strings.Cut(strings.ToLower(strings.TrimPrefix(name, EnvPrefix)), "_")
		decodeEnv(name, section, key, val, c, origin, errs)
	}
	// An empty INFRAWATCH_ADMIN_TOKEN counts as unset, as the SPEC says
	// "if set": it must not wipe a token from the file.
	if haveAlias && alias != "" && !haveAuthToken {
		decodeEnv(envAdminToken, "auth", "admin_token", alias, c, origin, errs)
	}
}

func decodeEnv(name, section, key, val string, c *Config, origin map[string]string, errs *[]*FieldError) {
	src := "env " + name
	if key == "" {
		*errs = append(*errs, &FieldError{
			Source: src, Key: section, Err: ErrUnknownKey,
			Msg: fmt.Sprintf("unknown key %q (want %s<SECTION>_<KEY>)", section, EnvPrefix),
		})
		return
	}
	str := func(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v} }
	root := &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{
		str(section),
		{Kind: yaml.MappingNode, Content: []*yaml.Node{str(key), str(val)}},
	}}
	d := decoder{src: func(*yaml.Node) string { return src }, origin: origin, errs: errs}
	d.decode(root, reflect.ValueOf(c).Elem(), "")
}

// decoder walks a yaml.Node tree against a struct by reflection: mappings
// select fields by their yaml tag, leaves are parsed by the field's type.
type decoder struct {
	src    func(*yaml.Node) string
	origin map[string]string // key -> source of the value that set it; may be nil
	errs   *[]*FieldError
}

var durationType = reflect.TypeFor[time.Duration]()

func (d *decoder) fail(n *yaml.Node, key string, cause error, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if key != "" && cause != ErrUnknownKey {
		msg = key + ": " + msg
	}
	*d.errs = append(*d.errs, &FieldError{Source: d.src(n), Key: key, Msg: msg, Err: cause})
}

// decode stores n into v; key is v's dotted key ("" for the root).
func (d *decoder) decode(n *yaml.Node, v reflect.Value, key string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if v.Kind() == reflect.Struct && v.Type() != durationType {
		d.decodeStruct(n, v, key)
		return
	}
	if err := setLeaf(n, v); err != nil {
		d.fail(n, key, nil, "%s", err)
		return
	}
	if d.origin != nil {
		d.origin[key] = d.src(n)
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, key string) {
	if isNull(n) {
		return // "http:" with every key commented out
	}
	if n.Kind != yaml.MappingNode {
		if key == "" {
			d.fail(n, key, nil, "expected a mapping of sections, got %s", kindName(n))
		} else {
			d.fail(n, key, nil, "expected a mapping of keys, got %s", kindName(n))
		}
		return
	}
	t := v.Type()
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		name := kn.Value
		full := joinKey(key, name)
		if seen[name] {
			d.fail(kn, full, nil, "duplicate key")
			continue
		}
		seen[name] = true
		f, ok := fieldByTag(t, name)
		if !ok {
			if key == "" {
				d.fail(kn, full, ErrUnknownKey, "unknown section %q", full)
			} else {
				d.fail(kn, full, ErrUnknownKey, "unknown key %q", full)
			}
			continue
		}
		d.decode(vn, v.FieldByIndex(f.Index), full)
	}
}

// fieldByTag finds the field of struct type t whose yaml tag is name.
func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if f.IsExported() && yamlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// yamlName is the key of field f: its yaml tag without options.
func yamlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

// setLeaf parses the scalar (or sequence) n into v according to v's type.
// Errors do not repeat the key; the caller adds it.
func setLeaf(n *yaml.Node, v reflect.Value) error {
	if v.Kind() == reflect.Slice {
		return setList(n, v)
	}
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("expected a single value, got %s", kindName(n))
	}
	s := n.Value
	switch {
	case v.Type() == durationType:
		if isNull(n) {
			return fmt.Errorf("missing value (want a duration like 10s)")
		}
		dur, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("bad duration %q (want e.g. 100ms, 30s, 5m, 168h)", s)
		}
		v.SetInt(int64(dur))
	case v.Kind() == reflect.String:
		if isNull(n) {
			s = ""
		}
		v.SetString(s)
	case v.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("bad boolean %q (want true or false)", s)
		}
		v.SetBool(b)
	case v.CanInt():
		// YAML allows 1_000_000; decimal only, so "010" is ten, not eight.
		i, err := strconv.ParseInt(strings.ReplaceAll(strings.TrimSpace(s), "_", ""), 10, v.Type().Bits())
		if err != nil {
			if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
				return fmt.Errorf("integer %q out of range", s)
			}
			return fmt.Errorf("bad integer %q", s)
		}
		v.SetInt(i)
	default:
		// Only reachable if Config gains a field of a new type; the
		// defaults test decodes every field and would fail.
		return fmt.Errorf("unsupported field type %s", v.Type())
	}
	return nil
}

// setList accepts a YAML sequence of strings, or a scalar of comma-separated
// items (the environment form); null or "" is the empty list.
func setList(n *yaml.Node, v reflect.Value) error {
	if v.Type().Elem().Kind() != reflect.String {
		return fmt.Errorf("unsupported field type %s", v.Type())
	}
	var items []string
	switch n.Kind {
	case yaml.SequenceNode:
		for i, e := range n.Content {
			for e.Kind == yaml.AliasNode && e.Alias != nil {
				e = e.Alias
			}
			if e.Kind != yaml.ScalarNode || isNull(e) {
				return fmt.Errorf("item %d: expected a string, got %s", i, kindName(e))
			}
			items = append(items, e.Value)
		}
	case yaml.ScalarNode:
		if !isNull(n) {
			for _, it := range strings.Split(n.Value, ",") {
				if it = strings.TrimSpace(it); it != "" {
					items = append(items, it)
				}
			}
		}
	default:
		return fmt.Errorf("expected a list, got %s", kindName(n))
	}
	out := reflect.MakeSlice(v.Type(), len(items), len(items))
	for i, it := range items {
		out.Index(i).SetString(it)
	}
	if len(items) == 0 {
		out = reflect.Zero(v.Type()) // nil: empty lists compare equal however written
	}
	v.Set(out)
	return nil
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		return fmt.Sprintf("the value %q", n.Value)
	}
	return "an unexpected YAML node"
}
