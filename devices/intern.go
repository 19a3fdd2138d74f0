package devices

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/infrawatch/infrawatch/telemetry"
)

// Interning: a fleet repeats the same few labels (domain, type, site, tag
// keys and values, metric names and units) across thousands of devices, and
// every device decoded from JSON brings its own copy of each. Keeping one
// copy per distinct value is most of what a device's memory can save.
//
// The registry interns through reference-counted tables guarded by its writer
// lock, so that a value leaves with its last device and the tables never grow
// past what is registered. Live, which has no such lock, keeps metric names
// as unique.Handle values: the unique package drops a value once no handle
// to it is left, so that table cannot grow past the names in use either.

// internLifecycle maps the known lifecycles to the package constants.
func internLifecycle(s string) string {
	switch s {
	case telemetry.LifecycleActive:
		return telemetry.LifecycleActive
	case telemetry.LifecycleMaintenance:
		return telemetry.LifecycleMaintenance
	case telemetry.LifecycleRetired:
		return telemetry.LifecycleRetired
	}
	return s
}

// shared is one interned value and the number of references to it. val is
// immutable; refs is only touched under the registry's writer lock, and
// readers of published records never read it.
type shared[T any] struct {
	key  string
	refs int
	val  T
}

// internTable maps a canonical encoding of a value to its shared copy.
type internTable[T any] struct {
	m map[string]*shared[T]
	// drop, when set, is called with a value whose last reference went.
	drop func(T)
}

// acquire returns the shared value for key with one more reference, building
// it when missing; build gets the table's own copy of key.
func (t *internTable[T]) acquire(key string, build func(key string) T) *shared[T] {
	s, ok := t.m[key]
	if !ok {
		if t.m == nil {
			t.m = map[string]*shared[T]{}
		}
		k := strings.Clone(key)
		s = &shared[T]{key: k, val: build(k)}
		t.m[k] = s
	}
	s.refs++
	return s
}

// release drops one reference to s (nil is a no-op).
func (t *internTable[T]) release(s *shared[T]) {
	if s == nil {
		return
	}
	if s.refs--; s.refs <= 0 {
		delete(t.m, s.key)
		if t.drop != nil {
			t.drop(s.val)
		}
	}
}

// stringTable interns strings; the empty string is never counted.
type stringTable struct{ internTable[string] }

func (t *stringTable) get(s string) string {
	if s == "" {
		return ""
	}
	return t.acquire(s, func(k string) string { return k }).val
}

func (t *stringTable) put(s string) {
	if s != "" {
		t.release(t.m[s])
	}
}

// specsKey is an unambiguous encoding of a metric spec map: sorted names,
// each field length-prefixed or in fixed form.
func specsKey(m map[string]MetricSpec) string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(m)) {
		spec := m[name]
		writeLP(&b, name)
		writeLP(&b, spec.Unit)
		writeOptFloat(&b, spec.Min)
		writeOptFloat(&b, spec.Max)
	}
	return b.String()
}

// profileKey is an unambiguous encoding of the part of d that goes into its
// telemetry.Profile; tags is tagsKey(d.Tags), last so that it needs no
// length prefix.
func profileKey(d *Device, tags string) string {
	var b strings.Builder
	writeLP(&b, d.Type)
	writeLP(&b, d.Domain)
	writeLP(&b, d.Site)
	writeLP(&b, d.GatewayID)
	writeLP(&b, d.Lifecycle)
	b.WriteString(strconv.Itoa(d.ExpectedInterval))
	b.WriteByte(';')
	b.WriteString(tags)
	return b.String()
}

// tagsKey is an unambiguous encoding of a tag map: sorted keys, each key and
// value length-prefixed.
func tagsKey(m map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		writeLP(&b, k)
		writeLP(&b, m[k])
	}
	return b.String()
}

func writeLP(b *strings.Builder, s string) {
	b.WriteString(strconv.Itoa(len(s)))
	b.WriteByte(':')
	b.WriteString(s)
}

// writeOptFloat writes "-" for absent, else the exact bits (so -0 and 0, which
// read back differently, are different specs).
func writeOptFloat(b *strings.Builder, f *float64) {
	if f == nil {
		b.WriteByte('-')
		return
	}
	b.WriteByte('=')
	b.WriteString(strconv.FormatUint(math.Float64bits(*f), 16))
	b.WriteByte(';')
}
