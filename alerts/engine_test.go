package alerts

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// step is one event of a scenario: a reading of d1's "x" metric, or a Tick.
type step struct {
	at   time.Duration
	v    float64
	tick bool
}

func rd(at time.Duration, v float64) step { return step{at: at, v: v} }
func tk(at time.Duration) step            { return step{at: at, tick: true} }

func TestThresholdScenarios(t *testing.T) {
	gt80clear70 := Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, ClearValue: ptr(70)}
	gt80for5m := Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, For: Duration(5 * time.Minute)}
	lt10 := Rule{Kind: KindThreshold, Metric: "x", Op: "<", Value: 10, ClearValue: ptr(15)}
	cases := []struct {
		name  string
		rule  Rule
		steps []step
		want  []string // notified transitions
		state string   // final state of the (only) alert, "" for none
	}{
		{"below threshold: nothing", gt80clear70, []step{rd(0, 50), rd(time.Minute, 80)}, nil, ""},
		{"fires at once without for", gt80clear70, []step{rd(0, 81)}, []string{"firing"}, "firing"},
		{
			"oscillation around threshold above clear value: exactly one alert", gt80clear70,
			[]step{rd(0, 81), rd(time.Minute, 79), rd(2*time.Minute, 82), rd(3*time.Minute, 71), rd(4*time.Minute, 85), rd(5*time.Minute, 70.5)},
			[]string{"firing"}, "firing",
		},
		{
			"resolves only at or below clear value", gt80clear70,
			[]step{rd(0, 81), rd(time.Minute, 71), rd(2*time.Minute, 70)},
			[]string{"firing", "resolved"}, "resolved",
		},
		{
			"fires again after a real clear", gt80clear70,
			[]step{rd(0, 81), rd(time.Minute, 60), rd(2*time.Minute, 90)},
			[]string{"firing", "resolved", "firing"}, "firing",
		},
		{
			"op < with clear above", lt10,
			[]step{rd(0, 9), rd(time.Minute, 14), rd(2*time.Minute, 15)},
			[]string{"firing", "resolved"}, "resolved",
		},
		{
			"for delays firing until held by reading time", gt80for5m,
			[]step{rd(0, 90), rd(2*time.Minute, 91), rd(4*time.Minute, 92), rd(5*time.Minute, 93)},
			[]string{"firing"}, "firing",
		},
		{
			"a blip shorter than for raises none", gt80for5m,
			[]step{rd(0, 90), rd(time.Minute, 95), rd(2*time.Minute, 50), rd(6*time.Minute, 50), tk(10 * time.Minute)},
			nil, "",
		},
		{
			"pending fires on tick when the condition still holds", gt80for5m,
			[]step{rd(0, 90), tk(4 * time.Minute), rd(4*time.Minute+30*time.Second, 91), tk(5 * time.Minute)},
			[]string{"firing"}, "firing",
		},
		{
			"pending restarts after a dip", gt80for5m,
			[]step{rd(0, 90), rd(3*time.Minute, 70), rd(4*time.Minute, 90), tk(8 * time.Minute), tk(9 * time.Minute)},
			[]string{"firing"}, "firing",
		},
		{
			"late reading older than the newest is ignored", gt80clear70,
			[]step{rd(time.Minute, 81), rd(0, 10)},
			[]string{"firing"}, "firing",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			f.rule(t, tc.rule)
			for _, s := range tc.steps {
				if s.tick {
					f.e.Tick(at(s.at))
				} else {
					f.e.Consume([]telemetry.Reading{reading("d1", at(s.at), "x", s.v)})
				}
			}
			var got []string
			for _, n := range f.rec.all() {
				got = append(got, n.Transition)
			}
			assert.Equal(t, tc.want, got)
			all := f.e.ListAlerts(AlertFilter{DeviceID: "d1"})
			if tc.state == "" {
				assert.Empty(t, all)
				assert.Empty(t, f.e.ListAlerts(AlertFilter{State: "pending"}))
				return
			}
			require.NotEmpty(t, all)
			assert.Equal(t, tc.state, all[0].State.String())
			open := 0
			for _, a := range all {
				if a.State.open() {
					open++
				}
			}
			assert.LessOrEqual(t, open, 1, "one open alert per rule and device")
		})
	}
}

func TestForTimingIsByReadingTime(t *testing.T) {
	f := newFixture(t, nil)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, For: Duration(5 * time.Minute)})
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	pend := f.e.ListAlerts(AlertFilter{State: "pending"})
	require.Len(t, pend, 1)
	assert.Empty(t, f.e.ListAlerts(AlertFilter{}), "pending is not listed by default")
	f.e.Tick(at(5*time.Minute - time.Second))
	assert.Empty(t, f.rec.all())
	f.e.Tick(at(5 * time.Minute))
	fired := f.e.ListAlerts(AlertFilter{State: "firing"})
	require.Len(t, fired, 1)
	assert.Equal(t, pend[0].ID, fired[0].ID, "pending alert keeps its id when it fires")
	assert.Equal(t, at(0), fired[0].StartsAt)
	assert.Equal(t, at(5*time.Minute), fired[0].FiredAt)
	assert.Equal(t, 1, f.e.ActiveCount("d1"))
}

func TestMessageTemplate(t *testing.T) {
	f := newFixture(t, nil)
	f.rule(t, Rule{Name: "Hot", Kind: KindThreshold, Metric: "x", Op: ">", Value: 80,
		Message: "{{.Rule}} {{.DeviceID}}@{{.Site}} {{.Metric}}={{.Value}} > {{.Threshold}}"})
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 81.5)})
	a := f.e.ListAlerts(AlertFilter{})
	require.Len(t, a, 1)
	assert.Equal(t, "Hot d1@north x=81.5 > 80", a[0].Message)
}

func TestAbsence(t *testing.T) {
	for _, metric := range []string{"x", ""} {
		t.Run("metric="+metric, func(t *testing.T) {
			f := newFixture(t, nil)
			f.rule(t, Rule{Kind: KindAbsence, Metric: metric, For: Duration(10 * time.Minute)})
			f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 1)})
			f.e.Consume([]telemetry.Reading{reading("d1", at(5*time.Minute), "x", 1)})
			f.e.Tick(at(14 * time.Minute))
			assert.Empty(t, f.rec.all(), "deadline moved by the second reading")
			f.e.Tick(at(15 * time.Minute))
			require.Equal(t, []string{"firing:d1"}, f.rec.transitions())
			a := f.e.ListAlerts(AlertFilter{State: "firing"})
			require.Len(t, a, 1)
			assert.Equal(t, at(5*time.Minute), a[0].StartsAt)
			f.e.Tick(at(30 * time.Minute))
			assert.Len(t, f.rec.all(), 1, "no duplicate while open")
			f.e.Consume([]telemetry.Reading{reading("d1", at(31*time.Minute), "y", 1)})
			if metric == "x" {
				assert.Len(t, f.rec.all(), 1, "another metric does not count")
				f.e.Consume([]telemetry.Reading{reading("d1", at(32*time.Minute), "x", 1)})
			}
			assert.Equal(t, []string{"firing:d1", "resolved:d1"}, f.rec.transitions())
			assert.Equal(t, 0, f.e.ActiveCount("d1"))
		})
	}
}

func TestRate(t *testing.T) {
	f := newFixture(t, nil)
	// Change per minute over 10 (either way, no op).
	f.rule(t, Rule{Kind: KindRate, Metric: "x", Value: 10})
	steps := []struct {
		at time.Duration
		v  float64
	}{
		{0, 100},
		{time.Minute, 105},                    // +5/min
		{2 * time.Minute, 125},                // +20/min: fires
		{2*time.Minute + 30*time.Second, 131}, // +12/min: still over
		{3 * time.Minute, 132},                // +2/min: resolves
		{4 * time.Minute, 100},                // -32/min: fires
	}
	for _, s := range steps {
		f.e.Consume([]telemetry.Reading{reading("d1", at(s.at), "x", s.v)})
	}
	assert.Equal(t, []string{"firing:d1", "resolved:d1", "firing:d1"}, f.rec.transitions())
	a := f.e.ListAlerts(AlertFilter{State: "firing"})
	require.Len(t, a, 1)
	assert.InDelta(t, -32, a[0].Value, 1e-9)
}

func TestAckThenAutoResolveAndReack(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80, ReackAfter: Duration(30 * time.Minute)})
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	id := f.e.ListAlerts(AlertFilter{})[0].ID

	f.clk.set(at(time.Minute))
	a, err := f.e.Ack(ctx, id, "alice", "on my way")
	require.NoError(t, err)
	assert.Equal(t, StateAcknowledged, a.State)
	assert.Equal(t, "alice", a.AckedBy)
	assert.Equal(t, at(time.Minute), *a.AckedAt)
	_, err = f.e.Ack(ctx, id, "bob", "")
	assert.True(t, errors.Is(err, ErrConflict))

	f.e.Tick(at(30 * time.Minute))
	f.e.Tick(at(31 * time.Minute))
	f.e.Consume([]telemetry.Reading{reading("d1", at(40*time.Minute), "x", 95)})
	f.e.Tick(at(61 * time.Minute))
	assert.Equal(t, []string{"firing", "acknowledged", "renotify", "renotify"}, transitionsOf(f.rec.all()))

	f.e.Consume([]telemetry.Reading{reading("d1", at(62*time.Minute), "x", 50)})
	res := f.e.ListAlerts(AlertFilter{State: "resolved"})
	require.Len(t, res, 1)
	assert.Equal(t, id, res[0].ID)
	assert.Equal(t, "alice", res[0].AckedBy, "acknowledgement kept on the resolved alert")
	assert.Empty(t, res[0].ResolvedBy)
	f.e.Tick(at(200 * time.Minute))
	assert.Equal(t, []string{"firing", "acknowledged", "renotify", "renotify", "resolved"}, transitionsOf(f.rec.all()))

	_, err = f.e.Ack(ctx, id, "bob", "")
	assert.True(t, errors.Is(err, ErrConflict))
	_, err = f.e.Ack(ctx, "nope", "bob", "")
	assert.True(t, errors.Is(err, ErrNotFound))
}

func transitionsOf(ns []Notification) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Transition)
	}
	return out
}

func TestManualResolve(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80})
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	id := f.e.ListAlerts(AlertFilter{})[0].ID
	f.clk.set(at(time.Minute))
	a, err := f.e.Resolve(ctx, id, "bob", "sensor replaced")
	require.NoError(t, err)
	assert.Equal(t, StateResolved, a.State)
	assert.Equal(t, "bob", a.ResolvedBy)
	assert.Equal(t, 0, f.e.ActiveCount("d1"))
	// Still bad on the next reading: a new alert, not the old one reopened.
	f.e.Consume([]telemetry.Reading{reading("d1", at(2*time.Minute), "x", 90)})
	open := f.e.ListAlerts(AlertFilter{State: "firing"})
	require.Len(t, open, 1)
	assert.NotEqual(t, id, open[0].ID)
}

func TestSilenceRecordsButDoesNotNotify(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80})
	_, err := f.e.CreateSilence(ctx, Silence{Selector: Selector{DeviceIDs: []string{"d1"}}, Start: at(0), End: at(time.Hour), CreatedBy: "ops"})
	require.NoError(t, err)
	f.e.Consume([]telemetry.Reading{reading("d1", at(time.Minute), "x", 90), reading("d2", at(time.Minute), "x", 90)})
	f.e.Consume([]telemetry.Reading{reading("d1", at(2*time.Minute), "x", 10)})
	assert.Equal(t, []string{"firing:d2"}, f.rec.transitions(), "d1 silenced; its resolve is not notified either")
	a := f.e.ListAlerts(AlertFilter{DeviceID: "d1"})
	require.Len(t, a, 1)
	assert.True(t, a[0].Silenced)
	assert.Equal(t, StateResolved, a[0].State)
	// After the silence ends, alerts notify again.
	f.e.Consume([]telemetry.Reading{reading("d1", at(2*time.Hour), "x", 90)})
	assert.Equal(t, []string{"firing:d2", "firing:d1"}, f.rec.transitions())

	_, err = f.e.CreateSilence(ctx, Silence{Start: at(time.Hour), End: at(0)})
	var ve *ValidationError
	require.True(t, errors.As(err, &ve))
	assert.Contains(t, ve.Fields, "end")
}

func TestGatewayFolding(t *testing.T) {
	const n = 50
	build := func(t *testing.T) *fixture {
		devs := []*telemetry.Device{dev("gw1", "depot")}
		for i := range n {
			d := dev(fmt.Sprintf("s%02d", i), "depot")
			d.GatewayID = "gw1"
			devs = append(devs, d)
		}
		return newFixture(t, nil, devs...)
	}
	offline := func(id string, t time.Time) telemetry.StatusEvent {
		return telemetry.StatusEvent{DeviceID: id, Status: telemetry.StatusOffline, Time: t}
	}
	t.Run("gateway first", func(t *testing.T) {
		f := build(t)
		f.e.DeviceStatus(offline("gw1", at(0)))
		for i := range n {
			f.e.DeviceStatus(offline(fmt.Sprintf("s%02d", i), at(time.Second)))
		}
		f.e.Tick(at(time.Hour))
		ns := f.rec.all()
		require.Len(t, ns, 1, "one notification, not %d", n+1)
		assert.Equal(t, "gw1", ns[0].Alert.DeviceID)
		assert.Equal(t, n, ns[0].Affected)
		all := f.e.ListAlerts(AlertFilter{State: "firing"})
		require.Len(t, all, n+1, "every device's alert is recorded")
		gw := ns[0].Alert.ID
		for _, a := range all {
			if a.DeviceID != "gw1" {
				assert.Equal(t, gw, a.SuppressedBy)
			}
		}
	})
	t.Run("devices first, gateway within fold wait", func(t *testing.T) {
		f := build(t)
		for i := range n {
			f.e.DeviceStatus(offline(fmt.Sprintf("s%02d", i), at(0)))
		}
		f.e.DeviceStatus(offline("gw1", at(2*time.Second)))
		f.e.Tick(at(time.Hour))
		ns := f.rec.all()
		require.Len(t, ns, 1)
		assert.Equal(t, "gw1", ns[0].Alert.DeviceID)
	})
	t.Run("gateway back, device still down: notified after fold wait", func(t *testing.T) {
		f := build(t)
		f.e.DeviceStatus(offline("gw1", at(0)))
		f.e.DeviceStatus(offline("s01", at(time.Second)))
		f.e.DeviceStatus(offline("s02", at(time.Second)))
		f.e.DeviceStatus(telemetry.StatusEvent{DeviceID: "gw1", Status: telemetry.StatusOnline, Time: at(time.Minute)})
		f.e.DeviceStatus(telemetry.StatusEvent{DeviceID: "s01", Status: telemetry.StatusOnline, Time: at(time.Minute + time.Second)})
		f.e.Tick(at(2 * time.Minute))
		assert.Equal(t, []string{"firing:gw1", "resolved:gw1", "firing:s02"}, f.rec.transitions())
	})
	t.Run("lone device offline is notified after fold wait", func(t *testing.T) {
		f := build(t)
		f.e.DeviceStatus(offline("s07", at(0)))
		f.e.Tick(at(29 * time.Second))
		assert.Empty(t, f.rec.all())
		f.e.Tick(at(30 * time.Second))
		assert.Equal(t, []string{"firing:s07"}, f.rec.transitions())
		f.e.DeviceStatus(telemetry.StatusEvent{DeviceID: "s07", Status: telemetry.StatusOnline, Time: at(time.Minute)})
		assert.Equal(t, []string{"firing:s07", "resolved:s07"}, f.rec.transitions())
	})
}

func TestSubscribeSlowSubscriberDrops(t *testing.T) {
	f := newFixture(t, nil)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80})
	slow, cancelSlow := f.e.Subscribe(1)
	fast, cancelFast := f.e.Subscribe(100)
	defer cancelFast()
	for i := range 10 {
		v := 90.0
		if i%2 == 1 {
			v = 10
		}
		f.e.Consume([]telemetry.Reading{reading("d1", at(time.Duration(i)*time.Minute), "x", v)})
	}
	assert.Len(t, fast, 10)
	assert.Len(t, slow, 1)
	ev := <-fast
	assert.Equal(t, "alert", ev.Kind)
	assert.Equal(t, TransitionFiring, ev.Transition)
	cancelSlow()
	cancelSlow() // idempotent
	_, ok := <-slow
	assert.True(t, ok, "buffered event still readable")
	_, ok = <-slow
	assert.False(t, ok, "closed after cancel")
}

func TestRuleCRUD(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	r := f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 80})
	assert.NotEmpty(t, r.ID)
	assert.Equal(t, SeverityWarning, r.Severity)
	_, err := f.e.CreateRule(ctx, r)
	assert.True(t, errors.Is(err, ErrConflict))
	f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 90)})
	require.Equal(t, 1, f.e.ActiveCount("d1"))

	// Narrowing the selector away from d1 resolves its alert.
	r.Selector.DeviceIDs = []string{"d2"}
	_, err = f.e.UpdateRule(ctx, r.ID, r)
	require.NoError(t, err)
	assert.Equal(t, 0, f.e.ActiveCount("d1"))
	f.e.Consume([]telemetry.Reading{reading("d1", at(time.Minute), "x", 90), reading("d2", at(time.Minute), "x", 90)})
	assert.Equal(t, 0, f.e.ActiveCount("d1"))
	assert.Equal(t, 1, f.e.ActiveCount("d2"))

	require.NoError(t, f.e.DeleteRule(ctx, r.ID))
	assert.Equal(t, 0, f.e.ActiveCount("d2"))
	assert.Empty(t, f.e.ListRules(ctx))
	assert.True(t, errors.Is(f.e.DeleteRule(ctx, r.ID), ErrNotFound))
	assert.True(t, errors.Is(f.e.DeleteRule(ctx, OfflineRuleID), ErrConflict))
	got, err := f.e.GetRule(ctx, OfflineRuleID)
	require.NoError(t, err)
	assert.Equal(t, OfflineRuleID, got.ID)
}

func TestSelectorIndex(t *testing.T) {
	a := dev("a", "north")
	a.Tags = map[string]string{"lane": "1"}
	b := dev("b", "south")
	b.Type = "weather_station"
	f := newFixture(t, nil, a, b)
	f.rule(t, Rule{Name: "by tag", Kind: KindThreshold, Metric: "x", Op: ">", Value: 1, Selector: Selector{Tags: map[string]string{"lane": "1"}}})
	f.rule(t, Rule{Name: "by type+site", Kind: KindThreshold, Metric: "x", Op: ">", Value: 1, Selector: Selector{Type: "weather_station", Site: "north"}})
	f.rule(t, Rule{Name: "by domain", Kind: KindThreshold, Metric: "y", Op: ">", Value: 1, Selector: Selector{Domain: "roads"}})
	f.e.Consume([]telemetry.Reading{reading("a", at(0), "x", 5), reading("b", at(0), "x", 5), reading("b", at(0), "y", 5)})
	assert.Equal(t, 1, f.e.ActiveCount("a"))
	assert.Equal(t, 1, f.e.ActiveCount("b"), "b is south: only the domain rule on y")
}

func TestRuleValidate(t *testing.T) {
	valid := Rule{Name: "n", Kind: KindThreshold, Metric: "x", Op: ">", Value: 1, Severity: SeverityWarning}
	cases := []struct {
		name   string
		mutate func(r *Rule)
		fields []string
	}{
		{"valid", func(*Rule) {}, nil},
		{"everything wrong", func(r *Rule) {
			r.ID, r.Name, r.Kind, r.Severity = "a b", "", "wat", "loud"
			r.Notify.Webhooks = []string{"ftp://x"}
			r.Message = "{{.Oops"
		}, []string{"id", "name", "kind", "severity", "notify.webhooks", "message"}},
		{"threshold without op", func(r *Rule) { r.Op = "" }, []string{"op"}},
		{"bad metric", func(r *Rule) { r.Metric = "X-1" }, []string{"metric"}},
		{"clear above value for >", func(r *Rule) { r.ClearValue = ptr(2) }, []string{"clear_value"}},
		{"clear below value for <", func(r *Rule) { r.Op = "<"; r.ClearValue = ptr(0) }, []string{"clear_value"}},
		{"absence needs for", func(r *Rule) { r.Kind, r.Op, r.Metric = KindAbsence, "", "" }, []string{"for"}},
		{"rate needs metric", func(r *Rule) { r.Kind, r.Metric = KindRate, "" }, []string{"metric"}},
		{"reserved id", func(r *Rule) { r.ID = OfflineRuleID }, []string{"id"}},
		{"bad device id", func(r *Rule) { r.Selector.DeviceIDs = []string{"a/#"} }, []string{"selector.device_ids"}},
		{"negative for", func(r *Rule) { r.For = -1 }, []string{"for"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := valid
			tc.mutate(&r)
			err := r.Validate()
			if tc.fields == nil {
				require.NoError(t, err)
				return
			}
			var ve *ValidationError
			require.True(t, errors.As(err, &ve), "%v", err)
			for _, k := range tc.fields {
				assert.Contains(t, ve.Fields, k)
			}
			assert.Len(t, ve.Fields, len(tc.fields), "%v", ve.Fields)
		})
	}
}

func TestRuleJSON(t *testing.T) {
	var r Rule
	require.NoError(t, jsonUnmarshal(`{"name":"n","enabled":true,"selector":{"device_ids":["a"],"site":"s"},
		"metric":"x","kind":"threshold","op":">","value":80,"clear_value":70,"for":"5m","reack_after":"1h",
		"severity":"critical","notify":{"webhooks":["http://h/x"],"mqtt":true}}`, &r))
	assert.Equal(t, 5*time.Minute, r.For.D())
	assert.Equal(t, time.Hour, r.ReackAfter.D())
	assert.Equal(t, 70.0, *r.ClearValue)
	require.NoError(t, r.Validate())
	b, err := jsonMarshal(r)
	require.NoError(t, err)
	assert.Contains(t, b, `"for":"5m"`)
	assert.Contains(t, b, `"reack_after":"1h"`)
	assert.Contains(t, b, `"device_ids":["a"]`)
	var a Alert
	require.NoError(t, jsonUnmarshal(`{"state":"acknowledged"}`, &a))
	assert.Equal(t, StateAcknowledged, a.State)
	assert.Error(t, jsonUnmarshal(`{"for":"5 minutes"}`, &r))
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	f.rule(t, Rule{Kind: KindThreshold, Metric: "x", Op: ">", Value: 50})
	f.rule(t, Rule{Kind: KindAbsence, For: Duration(time.Minute)})
	events, cancel := f.e.Subscribe(4)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 2000 {
			f.e.Consume([]telemetry.Reading{reading("d1", at(time.Duration(i)*time.Second), "x", float64(i%100))})
		}
	}()
	for i := range 200 {
		f.e.Tick(at(time.Duration(i*10) * time.Second))
		for _, a := range f.e.ListAlerts(AlertFilter{State: "firing"}) {
			_, _ = f.e.Ack(ctx, a.ID, "op", "")
		}
		f.e.DeviceStatus(telemetry.StatusEvent{DeviceID: "d2", Status: []string{"offline", "online"}[i%2], Time: at(time.Duration(i) * time.Second)})
		_ = f.e.ActiveCount("d1")
		select {
		case <-events:
		default:
		}
	}
	<-done
	assert.LessOrEqual(t, f.e.ActiveCount("d1"), 2)
}

// TestAbsencePostponedDeadlines checks absence timers against a model when
// readings keep pushing deadlines later (the timer heap leaves a postponed
// series at its old place and Tick moves it once it gets there): every
// device fires at the first Tick at or after its last reading plus `for`,
// never earlier, exactly once.
func TestAbsencePostponedDeadlines(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 0))
		var devs []*telemetry.Device
		for i := range 40 {
			devs = append(devs, dev(fmt.Sprintf("d%d", i), "north"))
		}
		f := newFixture(t, nil, devs...)
		const forD = 10 * time.Minute
		f.rule(t, Rule{Kind: KindAbsence, Metric: "x", For: Duration(forD)})
		last := map[string]time.Duration{}
		fired := map[string]time.Duration{}
		// Devices report at random until a random minute, then go quiet.
		stop := map[string]time.Duration{}
		for _, d := range devs {
			stop[d.ID] = time.Duration(rng.IntN(60)) * time.Minute
		}
		for now := time.Duration(0); now <= 90*time.Minute; now += 30 * time.Second {
			for _, d := range devs {
				// Gaps stay under `for` while a device reports.
				_, seen := last[d.ID]
				due := !seen || now-last[d.ID] >= 8*time.Minute
				if now <= stop[d.ID] && (due || rng.IntN(3) == 0) {
					f.e.Consume([]telemetry.Reading{reading(d.ID, at(now), "x", 1)})
					last[d.ID] = now
				}
			}
			n := len(f.rec.all())
			f.e.Tick(at(now))
			for _, a := range f.rec.all()[n:] {
				require.Equal(t, TransitionFiring, a.Transition, "seed %d", seed)
				_, dup := fired[a.Alert.DeviceID]
				require.False(t, dup, "seed %d: %s fired twice", seed, a.Alert.DeviceID)
				fired[a.Alert.DeviceID] = now
			}
		}
		for id, l := range last {
			want := l + forD
			if want%(30*time.Second) != 0 {
				want += 30*time.Second - want%(30*time.Second)
			}
			assert.Equal(t, want, fired[id], "seed %d: %s last seen at %v", seed, id, l)
		}
	}
}

// TestAbsenceForChanged: changing an absence rule's `for` moves the
// deadline of series already in the timer heap. Lengthened, they stay at
// their older place until Tick reaches them: no firing at the old deadline.
// Shortened, UpdateRule moves them up (Tick alone would meet them only at
// the old deadline). Either way they fire at the new deadline, once.
func TestAbsenceForChanged(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to time.Duration
	}{
		{"lengthened", 10 * time.Minute, 30 * time.Minute},
		{"shortened", 30 * time.Minute, 10 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			r := f.rule(t, Rule{Kind: KindAbsence, Metric: "x", For: Duration(tc.from)})
			f.e.Consume([]telemetry.Reading{reading("d1", at(0), "x", 1), reading("d2", at(0), "x", 1)})
			f.e.Tick(at(5 * time.Minute))
			r.For = Duration(tc.to)
			_, err := f.e.UpdateRule(context.Background(), r.ID, r)
			require.NoError(t, err)
			for m := 6 * time.Minute; m < tc.to; m += time.Minute {
				f.e.Tick(at(m))
			}
			assert.Empty(t, f.rec.all(), "nothing before the new deadline (%v)", tc.to)
			f.e.Tick(at(tc.to))
			assert.ElementsMatch(t, []string{"firing:d1", "firing:d2"}, f.rec.transitions())
			f.e.Tick(at(tc.to + max(tc.from, tc.to)))
			assert.Len(t, f.rec.all(), 2, "once")
		})
	}
}
