package ingest

import (
	"context"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/internal/testenv"
	"github.com/infrawatch/infrawatch/store"
)

// TestSessionPresentOverTLS: ingest dials the broker itself (ssl://, with
// its TLS config) to read the CONNACK's session-present flag. Across a
// restart of a Mosquitto that keeps sessions nothing is counted; across a
// restart of one that forgets them, the lost session is.
func TestSessionPresentOverTLS(t *testing.T) {
	for _, tc := range []struct {
		persistence string
		lost        float64
	}{{"true", 0}, {"false", 1}} {
		t.Run("persistence "+tc.persistence, func(t *testing.T) {
			certFile, keyFile, pool := testenv.TLSCert(t)
			mq := testenv.Mosquitto(t, testenv.MosquittoOptions{
				Extra: fmt.Sprintf("certfile %s\nkeyfile %s\npersistence %s", certFile, keyFile, tc.persistence)})
			influx := testenv.Influx(t)
			st, err := store.New(context.Background(), store.Options{URL: influx.URL, Bucket: testenv.NewDB(t), CreateDatabase: true})
			require.NoError(t, err)
			t.Cleanup(st.Close)
			in, reg, _ := runIngester(t, Options{
				BrokerURL: fmt.Sprintf("ssl://127.0.0.1:%d", mq.Port), ClientID: "ingest-tls-" + tc.persistence,
				TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
				KeepAlive: 2 * time.Second, Writer: st, Lookup: registry{}.lookup,
			}) // connected over TLS

			mq.Stop()
			require.NoError(t, mq.Start())
			require.Eventually(t, func() bool { return in.connections.Load() == 2 && in.Connected() },
				30*time.Second, 50*time.Millisecond, "reconnected over TLS")
			require.Equal(t, tc.lost, metricValue(t, reg, "infrawatch_ingest_mqtt_sessions_lost_total", "", ""))
		})
	}
}
