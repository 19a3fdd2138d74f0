package stream

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

// TestConsumeCopiesValues: whatever the number of values, alone or in a
// batch, the hub keeps a copy of them (ingest reuses its slices), and no
// event's values can reach into another's.
func TestConsumeCopiesValues(t *testing.T) {
	h := newManualHub(t, nil)
	for n := range maxInline + 3 {
		for _, size := range []int{1, 3} {
			batch := make([]telemetry.Reading, size)
			want := make([][]telemetry.Value, size)
			for j := range batch {
				vals := make([]telemetry.Value, n)
				for k := range vals {
					vals[k] = num("m"+strconv.Itoa(k), float64(100*j+k))
				}
				if n > 0 {
					vals[n-1] = telemetry.Value{Name: "door", Bool: true, IsBool: true}
				}
				batch[j] = reading("tc-1", int64(j), vals...)
				want[j] = append([]telemetry.Value(nil), vals...)
			}
			from := h.Seq()
			h.Consume(batch)
			for j := range batch {
				clear(batch[j].Values)
			}
			h.flush()
			for j := range batch {
				e := ringAt(h, from+1+uint64(j))
				require.Equal(t, from+1+uint64(j), e.seq)
				require.Len(t, e.values, n, "values=%d batch=%d", n, size)
				if n > 0 {
					require.Equal(t, want[j], e.values, "values=%d batch=%d", n, size)
				}
				require.Equal(t, len(e.values), cap(e.values), "values=%d batch=%d", n, size)
			}
		}
	}
}

// TestConsumeOneAllocation: a one-reading Consume allocates its event and
// values together, and nothing else once the intake has grown.
func TestConsumeOneAllocation(t *testing.T) {
	h := newManualHub(t, nil)
	batch := []telemetry.Reading{reading("tc-1", 1, num("flow", 1), num("speed", 2), num("occupancy", 0.3))}
	for range 2 { // both intake buffers grown
		for range 1100 {
			h.Consume(batch)
		}
		h.flush()
	}
	require.Equal(t, 1.0, testing.AllocsPerRun(1000, func() { h.Consume(batch) }))
}

// TestPlaceIsRegistryEntry: an event points at the registry entry its
// device had when it was published (entries are immutable: a change is a
// new entry), so a device's events share it, status events too, and an
// event keeps its place when the device moves.
func TestPlaceIsRegistryEntry(t *testing.T) {
	dev := &telemetry.Device{ID: "mv-1", Located: true, Lat: 52.1, Lon: 5.2, Profile: &telemetry.Profile{Domain: "roads", Site: "a12"}}
	h := newManualHub(t, func(o *Options) {
		o.Lookup = func(id string) (*telemetry.Device, bool) {
			if id == dev.ID {
				return dev, true
			}
			return lookup(id)
		}
	})
	last := func() *event { return ringAt(h, h.seq) }
	publish := func(id string) *event {
		h.Consume([]telemetry.Reading{reading(id, 1, num("flow", 1))})
		h.flush()
		return last()
	}
	a12 := place{domain: "roads", site: "a12", lat: 52.1, lon: 5.2, hasLoc: true}

	first, second := publish("mv-1"), publish("tc-1")
	require.Equal(t, a12, first.where())
	require.Equal(t, a12, second.where(), "tc-1 sits at the same place")
	require.Same(t, first.reg, publish("mv-1").reg, "a device's events share its entry")

	dev = &telemetry.Device{ID: "mv-1", Profile: &telemetry.Profile{Domain: "roads", Site: "a13"}} // moved, unlocated
	moved := publish("mv-1")
	require.Equal(t, place{domain: "roads", site: "a13"}, moved.where())
	require.Equal(t, a12, first.where(), "published before the move")

	h.Status(telemetry.StatusEvent{DeviceID: "mv-1", Status: telemetry.StatusOnline, Time: time.UnixMilli(2)})
	h.flush()
	require.Same(t, moved.reg, last().reg, "status events share it too")

	// The registry says whether a device has a location: one at (0, 0)
	// has one, a device without reads as unlocated whatever it holds.
	dev = &telemetry.Device{ID: "mv-1", Located: true, Profile: &telemetry.Profile{Domain: "roads", Site: "a13"}}
	require.Equal(t, place{domain: "roads", site: "a13", hasLoc: true}, publish("mv-1").where(), "located at (0, 0)")
	dev = &telemetry.Device{ID: "mv-1", Lat: 1, Lon: 2, Profile: &telemetry.Profile{Domain: "roads", Site: "a13"}}
	require.Equal(t, place{domain: "roads", site: "a13"}, publish("mv-1").where(), "not located")

	unknown := publish("nope")
	require.Nil(t, unknown.reg)
	require.Equal(t, place{}, unknown.where())

	site := compile(Filter{Sites: []string{"a12"}})
	box := compile(Filter{BBox: []float64{0, 45, 10, 55}})
	for _, tc := range []struct {
		e          *event
		site, bbox bool
	}{{first, true, true}, {moved, false, false}, {unknown, false, false}} {
		require.Equal(t, tc.site, site.match(tc.e), tc.e.where().site)
		require.Equal(t, tc.bbox, box.match(tc.e), tc.e.where().site)
		require.True(t, compile(Filter{}).match(tc.e))
	}
}

// TestAlertPlace: an alert's own domain and site win over the registry's,
// which fills in what the alert leaves empty, and the location.
func TestAlertPlace(t *testing.T) {
	h := newManualHub(t, nil)
	alert := map[string]string{"id": "a1"}
	for _, ev := range []AlertEvent{
		{DeviceID: "tc-1", Domain: "ops"},
		{DeviceID: "tc-1"},
		{DeviceID: "zz-9", Domain: "ops", Site: "hq"},
		{Site: "hq"},
	} {
		ev.Transition, ev.Alert = "firing", alert
		h.Alert(ev)
	}
	from := h.Seq() - 3
	h.flush()
	at := func(i int) place { return ringAt(h, from+uint64(i)).where() }
	require.Equal(t, place{domain: "ops", site: "a12", lat: 52.1, lon: 5.2, hasLoc: true}, at(0))
	require.Equal(t, place{domain: "roads", site: "a12", lat: 52.1, lon: 5.2, hasLoc: true}, at(1))
	require.Equal(t, place{domain: "ops", site: "hq"}, at(2), "not registered")
	require.Equal(t, place{site: "hq"}, at(3), "no device")
}

// ringAt is the replay ring's event of seq.
func ringAt(h *Hub, seq uint64) *event { return h.ring[seq%uint64(len(h.ring))] }

// TestReadingsDeviceSparesLookup: a reading that carries its registry entry
// (ingest's do) is placed by it, without a lookup; one that carries another
// device's entry, or none, is looked up.
func TestReadingsDeviceSparesLookup(t *testing.T) {
	var lookups int
	h := newManualHub(t, func(o *Options) {
		o.Lookup = func(id string) (*telemetry.Device, bool) { lookups++; return lookup(id) }
	})
	rd := reading("tc-1", 1, num("flow", 1))
	rd.Device = testDevices["tc-1"]
	batch := []telemetry.Reading{rd, rd}
	batch[1].Time = time.UnixMilli(2)
	h.Consume([]telemetry.Reading{rd})
	h.Consume(batch)
	h.flush()
	require.Zero(t, lookups)
	require.Same(t, testDevices["tc-1"], ringAt(h, h.seq).reg)

	wrong := reading("tc-2", 3, num("flow", 1))
	wrong.Device = testDevices["tc-1"]
	h.Consume([]telemetry.Reading{wrong})
	h.flush()
	require.Equal(t, 1, lookups)
	require.Same(t, testDevices["tc-2"], ringAt(h, h.seq).reg)
}
