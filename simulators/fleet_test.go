package simulators

import (
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func defaultFleet(t testing.TB) *Fleet {
	t.Helper()
	b, err := os.ReadFile("../" + DefaultFleetFile)
	require.NoError(t, err, "read the fleet file")
	f, err := ParseFleet(b)
	require.NoError(t, err, "parse the fleet file")
	return f
}

func TestDefaultFleet(t *testing.T) {
	f := defaultFleet(t)
	devs, err := f.Build(BuildOptions{Seed: 1})
	require.NoError(t, err)
	require.Truef(t, len(devs) >= 120, "default fleet has %d devices, want >= 120", len(devs))
	require.Truef(t, len(devs) == f.Total(), "built %d, file lists %d", len(devs), f.Total())

	types := map[string]int{}
	domains := map[string]int{}
	ids := map[string]bool{}
	gateways := map[string]*DeviceSpec{}
	for i, d := range devs {
		types[d.Type]++
		domains[d.Domain]++
		require.Truef(t, !ids[d.ID], "duplicate id %s", d.ID)
		ids[d.ID] = true
		require.Truef(t, idRE.MatchString(d.ID), "bad id %q", d.ID)
		require.Truef(t, d.Interval > 0 && d.ExpectedInterval >= d.Interval, "%s: interval %v expected %v", d.ID, d.Interval, d.ExpectedInterval)
		require.Truef(t, d.Location.Lat > 51.8 && d.Location.Lat < 52 && d.Location.Lon > 4.4 && d.Location.Lon < 4.6, "%s placed at %v", d.ID, d.Location)
		require.Truef(t, d.Model != nil && len(d.Metrics) > 0, "%s has no model", d.ID)
		if d.Type == "gateway" {
			gateways[d.ID] = &devs[i]
		}
	}
	for _, typ := range Types() {
		assert.Truef(t, types[typ] > 0, "no %s in the default fleet", typ)
	}
	assert.Truef(t, len(domains) == 3, "domains %v", domains)
	carried := 0
	for _, d := range devs {
		if d.GatewayID == "" {
			continue
		}
		carried++
		gw, ok := gateways[d.GatewayID]
		require.Truef(t, ok, "%s: gateway %s missing", d.ID, d.GatewayID)
		require.Truef(t, gw.Site == d.Site, "%s on a gateway of another site", d.ID)
		assert.Truef(t, d.ExpectedInterval >= gw.Interval, "%s: expected interval %v shorter than its gateway's %v", d.ID, d.ExpectedInterval, gw.Interval)
	}
	assert.Truef(t, carried > 0, "no device behind a gateway")
	t.Logf("default fleet: %d devices, %d behind %d gateways, %.1f readings/s", len(devs), carried, len(gateways), ReadingsPerSecond(devs))
}

func TestFleetScaling(t *testing.T) {
	f := defaultFleet(t)
	total := f.Total()
	for _, n := range []int{1, 7, 40, 100, total, 500, 10_000} {
		devs, err := f.Build(BuildOptions{Devices: n, Seed: 1})
		require.NoErrorf(t, err, "build %v", n)
		require.Truef(t, len(devs) == n, "--devices %d built %d", n, len(devs))
		byType := map[string]int{}
		for _, d := range devs {
			byType[d.Type]++
			if d.GatewayID != "" {
				require.Truef(t, strings.HasPrefix(d.GatewayID, d.Site+"-gw-"), "%s: gateway %s", d.ID, d.GatewayID)
			}
		}
		if n >= 100 {
			// Proportional: each type keeps its share within one device per group.
			full, _ := f.Build(BuildOptions{})
			fullByType := map[string]int{}
			for _, d := range full {
				fullByType[d.Type]++
			}
			for typ, c := range fullByType {
				exact := float64(c) * float64(n) / float64(total)
				assert.Truef(t, math.Abs(float64(byType[typ])-exact) <= 4, "n=%d %s: %d, proportional %.1f", n, typ, byType[typ], exact)
			}
		}
	}
	// Scaling the same fleet twice gives the same devices (ids are stable).
	a, _ := f.Build(BuildOptions{Devices: 50, Seed: 3})
	b, _ := f.Build(BuildOptions{Devices: 50, Seed: 3})
	for i := range a {
		require.Truef(t, a[i].ID == b[i].ID && a[i].Location == b[i].Location, "build differs at %d", i)
	}
}

func TestFleetRate(t *testing.T) {
	f := defaultFleet(t)
	base, err := f.Build(BuildOptions{Devices: 60})
	require.NoError(t, err)
	for _, rate := range []float64{1, 10, 250} {
		devs, err := f.Build(BuildOptions{Devices: 60, Rate: rate})
		require.NoError(t, err)
		got := ReadingsPerSecond(devs)
		assert.Truef(t, math.Abs(got-rate)/rate < 0.01, "rate %v gives %.3f readings/s", rate, got)
		// The rhythm between types is kept.
		r0 := float64(base[0].Interval) / float64(base[len(base)-1].Interval)
		r1 := float64(devs[0].Interval) / float64(devs[len(devs)-1].Interval)
		assert.Truef(t, math.Abs(r0-r1) < 1e-6, "interval ratio %v became %v", r0, r1)
	}
	devs, _ := f.Build(BuildOptions{Devices: 10, Rate: 1e6})
	for _, d := range devs {
		require.Truef(t, d.Interval >= MinInterval, "%s interval %v below the floor", d.ID, d.Interval)
	}
}

func TestFleetSameSeedSameReadings(t *testing.T) {
	f := defaultFleet(t)
	run := func(seed int64) [][]map[string]any {
		devs, err := f.Build(BuildOptions{Devices: 60, Seed: seed})
		require.NoError(t, err)
		var out [][]map[string]any
		for i := range 50 {
			ts := monday.Add(7*time.Hour + time.Duration(i)*10*time.Second)
			var row []map[string]any
			for _, d := range devs {
				row = append(row, d.Model.Next(ts))
			}
			out = append(out, row)
		}
		return out
	}
	a, b, c := run(9), run(9), run(10)
	require.Truef(t, reflect.DeepEqual(a, b), "same seed, other readings")
	require.Truef(t, !reflect.DeepEqual(a, c), "another seed, same readings")
}

func TestParseFleetErrors(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown key", "sites: []\ncolour: red\n", "colour"},
		{"no sites", "name: x\n", "sites: no sites"},
		{"bad type", "sites:\n- {id: a, lat: 51, lon: 4, devices: [{type: toaster, count: 1}]}\n", "sites[0].devices[0].type"},
		{"bad id", "sites:\n- {id: 'a b', lat: 51, lon: 4}\n", "sites[0].id"},
		{"dup id", "sites:\n- {id: a, lat: 51, lon: 4}\n- {id: a, lat: 51, lon: 4}\n", "sites[1].id: duplicate"},
		{"no location", "sites:\n- {id: a}\n", "sites[0]: lat/lon"},
		{"bus without route", "sites:\n- {id: a, lat: 51, lon: 4, devices: [{type: bus, count: 1}]}\n", "sites[0].devices[0].route"},
		{"unknown route", "sites:\n- {id: a, lat: 51, lon: 4, devices: [{type: bus, count: 1, route: r9}]}\n", "unknown route"},
		{"short route", "routes: {r: [[51, 4]]}\nsites:\n- {id: a, lat: 51, lon: 4}\n", "routes.r"},
		{"bad zone", "timezone: Mars/Olympus\nsites:\n- {id: a, lat: 51, lon: 4}\n", "timezone"},
		{"negative count", "sites:\n- {id: a, lat: 51, lon: 4, devices: [{type: ups, count: -1}]}\n", "count"},
		{"gateway via gateway", "sites:\n- {id: a, lat: 51, lon: 4, devices: [{type: gateway, count: 1, via_gateway: true}]}\n", "via_gateway"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseFleet([]byte(c.yaml))
			require.Truef(t, err != nil && strings.Contains(err.Error(), c.want), "err = %v, want it to mention %q", err, c.want)
		})
	}
}

func TestGatewayLostWhenScaledDown(t *testing.T) {
	f, err := ParseFleet([]byte(`
sites:
- id: jn
  lat: 51.9
  lon: 4.5
  devices:
  - {type: traffic_counter, count: 20, via_gateway: true}
  - {type: gateway, count: 1}
`))
	require.NoError(t, err)
	devs, err := f.Build(BuildOptions{Devices: 10})
	require.NoError(t, err)
	for _, d := range devs {
		// 21 scaled to 10: the gateway rounds away, so its sensors connect themselves.
		require.Truef(t, d.Type != "gateway" && d.GatewayID == "", "%s: %s via %q", d.ID, d.Type, d.GatewayID)
	}
	devs, _ = f.Build(BuildOptions{})
	for _, d := range devs {
		if d.Type != "gateway" {
			require.Truef(t, d.GatewayID == "jn-gw-01", "%s via %q", d.ID, d.GatewayID)
		}
	}
}

func FuzzParseFleet(f *testing.F) {
	b, err := os.ReadFile("../" + DefaultFleetFile)
	if err == nil {
		f.Add(b)
	}
	f.Add([]byte("sites:\n- {id: a, lat: 51, lon: 4, devices: [{type: ups, count: 2}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fl, err := ParseFleet(data)
		if err != nil {
			return
		}
		if fl.Total() > 5000 {
			return
		}
		// A fleet that parses builds without panicking.
		_, _ = fl.Build(BuildOptions{Devices: 0})
	})
}
