package loadgen

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestWSSubscription(t *testing.T) {
	ids := make([]string, 25)
	for i := range ids {
		ids[i] = fmt.Sprintf("d%d", i)
	}
	type sub struct {
		Type    string   `json:"type"`
		Batch   bool     `json:"batch"`
		Events  []string `json:"events"`
		Devices []string `json:"devices"`
	}
	for _, tc := range []struct {
		mode    string
		client  int
		devices []string
	}{
		{WSAll, 7, nil},
		{WSSite, 0, ids[:10]},
		{WSSite, 1, ids[10:]}, // two sites of 10: the last takes the remainder
		{WSSite, 2, ids[:10]},
	} {
		t.Run(fmt.Sprint(tc.mode, tc.client), func(t *testing.T) {
			b, watched := wsSubscription(tc.mode, ids, tc.client)
			var got sub
			require.NoError(t, json.Unmarshal(b, &got))
			require.Equal(t, sub{Type: "subscribe", Batch: true, Events: []string{"reading"}, Devices: tc.devices}, got)
			want := len(tc.devices)
			if tc.devices == nil {
				want = len(ids)
			}
			require.Equal(t, want, watched)
		})
	}
}

func TestForEachReadingInBatch(t *testing.T) {
	msg := []byte(`{"type":"batch","seq":12,"events":[` +
		`{"type":"reading","seq":11,"device_id":"a","ts":"2026-01-02T03:04:05.006Z","values":{"x":1}},` +
		`{"type":"reading","seq":12,"device_id":"b","ts":"2026-01-02T03:04:05.007Z","values":{"x":2}}]}`)
	var got []string
	forEachReading(msg, func(ev []byte) {
		id, ts, ok := parseReadingMsg(ev)
		require.True(t, ok)
		got = append(got, fmt.Sprint(id, "@", ts%1000))
	})
	require.Equal(t, []string{"a@6", "b@7"}, got)

	got = nil
	forEachReading([]byte(`{"type":"reading","seq":3,"device_id":"c","ts":"2026-01-02T03:04:05.008Z","values":{}}`), func(ev []byte) {
		id, ts, ok := parseReadingMsg(ev)
		require.True(t, ok)
		got = append(got, fmt.Sprint(id, "@", ts%1000))
	})
	require.Equal(t, []string{"c@8"}, got, "one reading per message (no batch)")
}
