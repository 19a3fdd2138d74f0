package alerts

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"
)

func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(wal)")
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestRestartKeepsAlertsAndPendingTimers(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "infrawatch.db")

	// First life: an acknowledged alert on d1, a pending `for` on d2, a
	// silence, and a resolved alert.
	db1 := openDB(t, path)
	st1, err := NewSQLiteStore(ctx, db1)
	require.NoError(t, err)
	f1 := newFixture(t, st1)
	hot := f1.rule(t, Rule{Name: "hot", Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, ClearValue: ptr(70),
		Selector: Selector{DeviceIDs: []string{"d1"}}, ReackAfter: Duration(time.Hour)})
	slow := f1.rule(t, Rule{Name: "slow", Kind: KindThreshold, Metric: "x", Op: ">", Value: 80,
		Selector: Selector{DeviceIDs: []string{"d2"}}, For: Duration(10 * time.Minute)})
	_, err = f1.e.CreateSilence(ctx, Silence{Selector: Selector{Site: "south"}, Start: at(0), End: at(time.Hour), Comment: "works"})
	require.NoError(t, err)
	f1.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90), reading("d2", at(time.Minute), "x", 90)})
	id := f1.e.ListAlerts(AlertFilter{})[0].ID
	f1.clk.set(at(2 * time.Minute))
	_, err = f1.e.Ack(ctx, id, "alice", "looking")
	require.NoError(t, err)
	pend := f1.e.ListAlerts(AlertFilter{State: "pending"})
	require.Len(t, pend, 1)
	require.NoError(t, f1.e.Flush(ctx))
	require.NoError(t, db1.Close())

	// Second life on the same database.
	db2 := openDB(t, path)
	st2, err := NewSQLiteStore(ctx, db2)
	require.NoError(t, err)
	f2 := newFixture(t, st2)
	f2.clk.set(at(3 * time.Minute))
	rules := f2.e.ListRules(ctx)
	require.Len(t, rules, 2)
	assert.Equal(t, hot.ID, rules[0].ID)
	assert.Equal(t, 70.0, *rules[0].ClearValue)
	assert.Len(t, f2.e.ListSilences(ctx), 1)

	acked := f2.e.ListAlerts(AlertFilter{State: "acknowledged"})
	require.Len(t, acked, 1)
	assert.Equal(t, id, acked[0].ID)
	assert.Equal(t, "alice", acked[0].AckedBy)
	assert.Equal(t, 1, f2.e.ActiveCount("d1"))

	// Hysteresis state survived: 75 is in the band, stays open; no duplicate.
	f2.e.Consume([]telemetry.Reading{reading("d1", at(4*time.Minute), "x", 75)})
	f2.e.Consume([]telemetry.Reading{reading("d1", at(5*time.Minute), "x", 95)})
	assert.Len(t, f2.e.ListAlerts(AlertFilter{DeviceID: "d1"}), 1)

	// The pending timer continues from the first life's start.
	f2.e.Tick(at(10*time.Minute + 59*time.Second))
	assert.Empty(t, f2.e.ListAlerts(AlertFilter{State: "firing"}))
	f2.e.Tick(at(11 * time.Minute))
	fired := f2.e.ListAlerts(AlertFilter{State: "firing"})
	require.Len(t, fired, 1)
	assert.Equal(t, pend[0].ID, fired[0].ID)
	assert.Equal(t, slow.ID, fired[0].RuleID)
	assert.Equal(t, at(time.Minute), fired[0].StartsAt)

	// Reack continues too: acked at 2m with reack_after 1h.
	f2.e.Tick(at(62 * time.Minute))
	assert.Equal(t, []string{"firing:d2", "renotify:d1"}, f2.rec.transitions())

	// Resolve and restart once more: the resolved alert is listed, not open.
	f2.e.Consume([]telemetry.Reading{reading("d1", at(63*time.Minute), "x", 60)})
	require.NoError(t, f2.e.Flush(ctx))
	f3 := newFixture(t, st2)
	assert.Equal(t, 0, f3.e.ActiveCount("d1"))
	res := f3.e.ListAlerts(AlertFilter{State: "resolved"})
	require.Len(t, res, 1)
	assert.Equal(t, id, res[0].ID)
}

func TestCancelledPendingIsDeleted(t *testing.T) {
	ctx := context.Background()
	st, err := NewSQLiteStore(ctx, openDB(t, filepath.Join(t.TempDir(), "a.db")))
	require.NoError(t, err)
	f := newFixture(t, st)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, For: Duration(time.Hour)})
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	require.NoError(t, f.e.Flush(ctx))
	open, err := st.LoadOpenAlerts(ctx)
	require.NoError(t, err)
	require.Len(t, open, 1)
	f.e.Consume([]telemetry.Reading{reading("d1", at(time.Minute), "x", 10)})
	require.NoError(t, f.e.Flush(ctx))
	open, err = st.LoadOpenAlerts(ctx)
	require.NoError(t, err)
	assert.Empty(t, open)
}

func TestRunFlushesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := NewSQLiteStore(ctx, openDB(t, filepath.Join(t.TempDir(), "a.db")))
	require.NoError(t, err)
	reg := newRegistry(dev("d1", "north"))
	e, err := NewEngine(ctx, Options{Lookup: reg.lookup, Store: st, Registerer: prometheus.NewRegistry(), TickInterval: 10 * time.Millisecond})
	require.NoError(t, err)
	_, err = e.CreateRule(ctx, Rule{Name: "r", Enabled: true, Kind: KindThreshold, Metric: "x", Op: ">", Value: 1})
	require.NoError(t, err)
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	e.Consume([]telemetry.Reading{reading("d1", time.Now(), "x", 5)})
	require.Eventually(t, func() bool {
		open, err := st.LoadOpenAlerts(ctx)
		return err == nil && len(open) == 1
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	<-done
}
