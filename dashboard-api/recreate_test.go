package dashboardapi

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/devices"
	"github.com/infrawatch/infrawatch/telemetry"
)

// TestDeletedDeviceStateForgotten: over the real registry and live state,
// a device deleted and created again with the same id is a new device: it
// has not been heard from, so it has none of the deleted one's values or
// status, in /latest, /devices, /state and a stream snapshot alike. Live
// state only sweeps deleted devices out every SweepInterval; a re-create
// within it must not inherit them.
func TestDeletedDeviceStateForgotten(t *testing.T) {
	ctx := context.Background()
	db, err := devices.OpenDB(filepath.Join(t.TempDir(), "registry.db"))
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	st, err := devices.NewSQLiteStore(ctx, db)
	require.NoError(t, err)
	reg, err := devices.NewRegistry(ctx, st)
	require.NoError(t, err)
	live := devices.NewLive(devices.LiveOptions{Lookup: reg.Lookup})
	e := newEnv(t, func(o *Options) { o.Devices, o.Live = reg, live })

	require.Equal(t, http.StatusCreated, e.do("POST", "/api/v1/devices", adminTok, validDevice("tc-9")).status)
	live.Consume([]telemetry.Reading{{DeviceID: "tc-9", Time: time.Now(),
		Values: []telemetry.Value{{Name: "flow_vph", Num: 1234}}}})
	r := e.do("GET", "/api/v1/devices/tc-9/latest", viewerTok, nil)
	require.Equal(t, http.StatusOK, r.status)
	require.Equal(t, "online", r.json(t)["status"])

	require.Equal(t, http.StatusNoContent, e.do("DELETE", "/api/v1/devices/tc-9", adminTok, nil).status)
	r = e.do("POST", "/api/v1/devices", adminTok, validDevice("tc-9"))
	require.Equal(t, http.StatusCreated, r.status)
	require.Equal(t, "unknown", r.json(t)["status"], "a new device, never heard from")

	r = e.do("GET", "/api/v1/devices/tc-9/latest", viewerTok, nil)
	require.Equal(t, http.StatusOK, r.status)
	latest := r.json(t)
	require.Equal(t, "unknown", latest["status"])
	require.Nil(t, latest["last_seen"])
	require.Empty(t, latest["metrics"], "the deleted device's values")

	snap := e.api.Snapshot(SnapshotFilter{Devices: []string{"tc-9"}}, time.Now())
	require.Len(t, snap.Devices, 1)
	require.Equal(t, "unknown", snap.Devices[0].Status)
	require.Empty(t, snap.Devices[0].Metrics)
}
