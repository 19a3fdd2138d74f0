package dashboardapi

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/ingest"
)

// fakeDeadLetters is a DeadLetterService over a fixed list.
type fakeDeadLetters struct {
	mu       sync.Mutex
	list     []ingest.StoredDeadLetter
	replayed []ingest.ReplaySelector
}

func (f *fakeDeadLetters) DeadLetters(flt ingest.DeadLetterFilter) []ingest.StoredDeadLetter {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ingest.StoredDeadLetter
	for _, d := range f.list {
		if (flt.Reason == "" || d.Reason == flt.Reason) && (flt.DeviceID == "" || d.DeviceID == flt.DeviceID) {
			out = append(out, d)
		}
		if flt.Limit > 0 && len(out) == flt.Limit {
			break
		}
	}
	return out
}

func (f *fakeDeadLetters) ReplayDeadLetters(_ context.Context, sel ingest.ReplaySelector) (ingest.ReplayResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replayed = append(f.replayed, sel)
	return ingest.ReplayResult{Replayed: len(sel.IDs)}, nil
}

var testDeadLetters = map[*testing.T]*fakeDeadLetters{}
var testDeadLettersMu sync.Mutex

func init() {
	envHooks = append(envHooks, func(t *testing.T, o *Options) {
		f := &fakeDeadLetters{list: []ingest.StoredDeadLetter{
			{ID: 2, DeadLetter: ingest.DeadLetter{Reason: "unknown_device", DeviceID: "new-1", Topic: "devices/new-1/telemetry", Payload: "{}"}, Replayable: true},
			{ID: 1, DeadLetter: ingest.DeadLetter{Reason: "malformed_json", DeviceID: "dev-1", Topic: "devices/dev-1/telemetry", Payload: "{"}, Replayable: true},
		}}
		o.DeadLetters = f
		testDeadLettersMu.Lock()
		testDeadLetters[t] = f
		testDeadLettersMu.Unlock()
		t.Cleanup(func() {
			testDeadLettersMu.Lock()
			delete(testDeadLetters, t)
			testDeadLettersMu.Unlock()
		})
	})
	extraAuthCases = append(extraAuthCases, func() []authCase {
		return []authCase{
			{"GET", "/api/v1/deadletters", nil, RoleAdmin, 200},
			{"POST", "/api/v1/deadletters/replay", func() any { return map[string]any{"ids": []int{1}} }, RoleAdmin, 200},
		}
	})
}

func TestDeadLettersListAndReplay(t *testing.T) {
	e := newEnv(t)
	var list struct {
		DeadLetters []ingest.StoredDeadLetter `json:"deadletters"`
	}
	r := e.do("GET", "/api/v1/deadletters?reason=unknown_device", adminTok, nil)
	require.Equal(t, 200, r.status, "body: %s", r.body)
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.DeadLetters, 1)
	require.Equal(t, uint64(2), list.DeadLetters[0].ID)
	require.Equal(t, "new-1", list.DeadLetters[0].DeviceID)

	r = e.do("GET", "/api/v1/deadletters?limit=0", adminTok, nil)
	require.Equal(t, 400, r.status)

	r = e.do("POST", "/api/v1/deadletters/replay", adminTok, map[string]any{"reason": "unknown_device", "device_id": "new-1"})
	require.Equal(t, 200, r.status, "body: %s", r.body)
	var res ingest.ReplayResult
	require.NoError(t, json.Unmarshal(r.body, &res))
	require.NotNil(t, res.NotFound)
	f := testDeadLetters[t]
	require.Equal(t, []ingest.ReplaySelector{{Reason: "unknown_device", DeviceID: "new-1"}}, f.replayed)

	for _, bad := range []map[string]any{{}, {"ids": []int{1}, "reason": "x"}} {
		r = e.do("POST", "/api/v1/deadletters/replay", adminTok, bad)
		require.Equal(t, 400, r.status, "%v", bad)
	}
}
