package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestShutdownEvaluatesEveryStoredReading: a reading that ingest stores
// (and so acknowledges) while serve shuts down is evaluated by the alert
// engine and its alert persisted. A device streams large messages, message
// k carrying metric m<k> over the threshold of rule k, and Close starts in
// the middle of the stream; every metric in InfluxDB afterwards must have
// its rule's alert after a restart. The engine used to stop together with
// ingest, so a message ingest was still decoding when both saw the
// shutdown was stored and acknowledged after the engine's final release
// and flush: held for reordering forever, never alerted on.
func TestShutdownEvaluatesEveryStoredReading(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs influxd")
	}
	ts := startSystem(t, "INFRAWATCH_INGEST_DEVICE_RATE_LIMIT=1000000", "INFRAWATCH_INGEST_DEVICE_BURST=1000000")
	const messages, perMessage = 120, 1000
	rules := make([]string, messages)
	for k := range rules {
		rules[k] = ts.createRule(map[string]any{
			"name": fmt.Sprintf("m%d high", k), "selector": map[string]any{"device_ids": []string{"sh-1"}},
			"metric": fmt.Sprintf("m%d", k), "kind": "threshold", "op": ">", "value": 10, "severity": "critical",
		})
	}
	secret := ts.createDevice("sh-1", "traffic_counter", "s1", "")
	c, err := connect(t, ts.mqtt, "sh-1", "sh-1", secret)
	require.NoError(t, err)

	base := time.Now().Add(-time.Hour).UnixMilli()
	acked := make(chan struct{}, messages)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for k := range messages {
			var b strings.Builder
			b.WriteByte('[')
			for j := range perMessage {
				if j > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `{"ts":%d,"values":{"m%d":100}}`, base+int64(k*perMessage+j), k)
			}
			b.WriteByte(']')
			tok := c.Publish("devices/sh-1/telemetry", 1, false, b.String())
			go func() {
				if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
					acked <- struct{}{}
				}
			}()
		}
	}()
	for range messages / 4 {
		<-acked // the stream is under way
	}
	ts.srv.Close()
	<-done

	var stored []int
	for _, row := range influxRows(t, ts.influx.URL, ts.db, `SHOW FIELD KEYS FROM "traffic_counter"`) {
		var k int
		if _, err := fmt.Sscanf(row[0].(string), "m%d", &k); err == nil {
			stored = append(stored, k)
		}
	}
	require.NotEmpty(t, stored)
	ts.restart()
	alerted := map[string]bool{}
	for _, a := range ts.alerts("?device_id=sh-1") {
		alerted[a.RuleID] = true
	}
	var missing []string
	for _, k := range stored {
		if !alerted[rules[k]] {
			missing = append(missing, fmt.Sprintf("m%d", k))
		}
	}
	t.Logf("%d of %d messages stored, %d alerts", len(stored), messages, len(alerted))
	require.Empty(t, missing, "stored (so acknowledged) readings that raised no alert")
}
