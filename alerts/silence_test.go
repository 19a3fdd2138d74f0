package alerts

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// An alert that fired under a silence and still fires when the silence
// ends is notified then: a silence mutes only while it lasts.
func TestSilenceEndNotifiesAlertsStillFiring(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, ClearValue: ptr(70)})
	_, err := f.e.CreateSilence(ctx, Silence{Selector: Selector{DeviceIDs: []string{"d1"}}, Start: at(0), End: at(time.Hour)})
	require.NoError(t, err)
	f.e.Consume([]telemetry.Reading{reading("d1", at(time.Minute), "x", 90)})
	f.e.Tick(at(30 * time.Minute))
	assert.Empty(t, f.rec.transitions(), "muted while the silence lasts")

	f.e.Tick(at(time.Hour + time.Second))
	assert.Equal(t, []string{"firing:d1"}, f.rec.transitions())
	a := f.e.ListAlerts(AlertFilter{DeviceID: "d1"})
	require.Len(t, a, 1)
	assert.False(t, a[0].Silenced)
	f.e.Tick(at(time.Hour + time.Minute))
	assert.Len(t, f.rec.transitions(), 1, "notified once")
	// Notified, so its resolution is too.
	f.e.Consume([]telemetry.Reading{reading("d1", at(time.Hour+2*time.Minute), "x", 10)})
	assert.Equal(t, []string{"firing:d1", "resolved:d1"}, f.rec.transitions())
}

// Ended silences are deleted, from memory and the Store, SilenceRetention
// after they end; running ones and recently ended ones stay.
func TestEndedSilencesArePruned(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "infrawatch.db")
	st, err := NewSQLiteStore(ctx, openDB(t, path))
	require.NoError(t, err)
	f := newFixture(t, st)
	for _, s := range []Silence{
		{ID: "old", Start: at(0), End: at(time.Hour)},
		{ID: "recent", Start: at(0), End: at(24 * time.Hour)},
		{ID: "running", Start: at(0), End: at(48 * time.Hour)},
	} {
		_, err := f.e.CreateSilence(ctx, s)
		require.NoError(t, err)
	}
	f.clk.set(at(26 * time.Hour)) // "old" ended 25h ago, past the default 24h
	f.e.o.TickInterval = 5 * time.Millisecond
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.e.Run(runCtx) }()
	ids := func(ss []Silence) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.ID)
		}
		return out
	}
	require.Eventually(t, func() bool { return len(f.e.ListSilences(ctx)) == 2 }, 5*time.Second, time.Millisecond)
	cancel()
	<-done
	assert.Equal(t, []string{"recent", "running"}, ids(f.e.ListSilences(ctx)))
	stored, err := st.LoadSilences(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"recent", "running"}, ids(stored))
}
