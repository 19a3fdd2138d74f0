package devices

import (
	"context"
	"encoding/json"
	"testing"
)

// FuzzCreateDevice feeds API request bodies to Create: it must never panic,
// must reject with a *ValidationError or accept, and an accepted device must
// read back unchanged (apart from the write-only secret) and be usable on the
// hot path.
func FuzzCreateDevice(f *testing.F) {
	f.Add([]byte(`{"id":"tc-1","domain":"roads","type":"traffic_counter","site":"a1","metrics":{"flow_vph":{"unit":"veh/h","min":0,"max":3000}}}`))
	f.Add([]byte(`{"id":"token","domain":"x","type":"y","site":"z"}`))
	f.Add([]byte(`{"id":"a","domain":"roads","type":"t","site":"s","location":{"lat":91,"lon":0},"tags":{"a\n":"b"},"secret":"short"}`))
	f.Add([]byte(`{"id":"gw","domain":"transport","type":"bus","site":"depot","gateway_id":"gw","lifecycle":"retired","expected_interval":-1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var d Device
		if json.Unmarshal(body, &d) != nil {
			return
		}
		reg, err := NewRegistry(context.Background(), &memStore{recs: map[string]Record{}})
		if err != nil {
			t.Fatal(err)
		}
		created, err := reg.Create(context.Background(), d)
		if err != nil {
			if _, ok := err.(*ValidationError); !ok {
				t.Fatalf("unexpected error type %T: %v", err, err)
			}
			return
		}
		if !verify(t, reg, created.ID, created.Secret) && created.Lifecycle != "retired" {
			t.Fatal("secret from create does not verify")
		}
		got, err := reg.Get(created.ID)
		if err != nil {
			t.Fatal(err)
		}
		created.Secret = ""
		a, _ := json.Marshal(created)
		b, _ := json.Marshal(got)
		if string(a) != string(b) {
			t.Fatalf("read back differs:\n%s\n%s", a, b)
		}
		if td, ok := reg.Lookup(created.ID); !ok || td.Type != created.Type || td.Interval <= 0 {
			t.Fatalf("lookup: %v %+v", ok, td)
		}
	})
}
