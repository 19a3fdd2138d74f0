package devices

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openTestDB opens a fresh SQLite database in a temp dir; the path is
// returned so a test can reopen it.
func openTestDB(t testing.TB) (*sql.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sub", "infrawatch.db")
	db, err := OpenDB(path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db, path
}

func newTestRegistry(t testing.TB) (*Registry, *sql.DB) {
	t.Helper()
	db, _ := openTestDB(t)
	store, err := NewSQLiteStore(context.Background(), db)
	require.NoError(t, err)
	reg, err := NewRegistry(context.Background(), store)
	require.NoError(t, err)
	return reg, db
}

func validDevice(id string) Device {
	lo, hi := 0.0, 3000.0
	return Device{
		ID:       id,
		Name:     "Traffic counter " + id,
		Domain:   "roads",
		Type:     "traffic_counter",
		Site:     "a1-km12",
		Location: &Location{Lat: 52.52, Lon: 13.40},
		Metrics: map[string]MetricSpec{
			"flow_vph":  {Unit: "veh/h", Min: &lo, Max: &hi},
			"speed_kmh": {Unit: "km/h"},
		},
		Tags: map[string]string{"lane": "2", "direction": "north"},
	}
}
