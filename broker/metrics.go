package broker

import (
	"errors"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
)

// ACL actions (label of the denial metric).
const (
	actionPublish   = "publish"
	actionSubscribe = "subscribe" // a SUBSCRIBE filter or a delivery to the client
	actionWill      = "will"      // a last will refused at CONNECT
)

// metrics are the broker's own counters plus a collector that reads mochi's
// server.Info on scrape, so the hot path pays nothing for them.
type metrics struct {
	info         *system.Info
	authFailures *prometheus.CounterVec
	aclDenied    *prometheus.CounterVec
}

func newMetrics(info *system.Info) *metrics {
	m := &metrics{
		info: info,
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infrawatch_broker_auth_failures_total",
			Help: "MQTT connections refused, by reason (bad_client_id, anonymous, bad_username, bad_credentials, will_denied, client_id_in_use).",
		}, []string{"reason"}),
		aclDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "infrawatch_broker_acl_denied_total",
			Help: "MQTT operations refused by the ACL, by identity (device, token, service) and action (publish, subscribe, will).",
		}, []string{"identity", "action"}),
	}
	// Pre-create the series people alert on, so they read 0 rather than absent.
	for _, r := range []string{reasonBadClientID, reasonAnonymous, reasonBadUsername, reasonBadCredential, reasonWillDenied, reasonClientIDInUse, reasonRateLimited} {
		m.authFailures.WithLabelValues(r)
	}
	for _, k := range []kind{kindDevice, kindPerson, kindService} {
		for _, a := range []string{actionPublish, actionSubscribe, actionWill} {
			m.aclDenied.WithLabelValues(k.String(), a)
		}
	}
	return m
}

func (m *metrics) register(r prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.authFailures, m.aclDenied, (*infoCollector)(m)} {
		if err := r.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// infoCollector exports mochi's server.Info.
type infoCollector metrics

type infoMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(*system.Info) *int64
}

var infoMetrics = []infoMetric{
	gauge("clients_connected", "MQTT clients currently connected.", func(i *system.Info) *int64 { return &i.ClientsConnected }),
	counter("messages_received_total", "PUBLISH packets received from clients.", func(i *system.Info) *int64 { return &i.MessagesReceived }),
	counter("messages_sent_total", "PUBLISH packets sent to clients.", func(i *system.Info) *int64 { return &i.MessagesSent }),
	counter("messages_dropped_total", "Messages dropped because a client's outbound queue was full.", func(i *system.Info) *int64 { return &i.MessagesDropped }),
	counter("inflight_dropped_total", "QoS 1/2 messages dropped because a client's inflight store was full.", func(i *system.Info) *int64 { return &i.InflightDropped }),
	gauge("inflight_messages", "QoS 1/2 messages awaiting acknowledgement.", func(i *system.Info) *int64 { return &i.Inflight }),
	gauge("subscriptions", "Active subscriptions.", func(i *system.Info) *int64 { return &i.Subscriptions }),
	gauge("retained_messages", "Retained messages held.", func(i *system.Info) *int64 { return &i.Retained }),
	counter("bytes_received_total", "Bytes received from clients.", func(i *system.Info) *int64 { return &i.BytesReceived }),
	counter("bytes_sent_total", "Bytes sent to clients.", func(i *system.Info) *int64 { return &i.BytesSent }),
}

func gauge(name, help string, v func(*system.Info) *int64) infoMetric {
	return infoMetric{prometheus.NewDesc("infrawatch_broker_"+name, help, nil, nil), prometheus.GaugeValue, v}
}

func counter(name, help string, v func(*system.Info) *int64) infoMetric {
	return infoMetric{prometheus.NewDesc("infrawatch_broker_"+name, help, nil, nil), prometheus.CounterValue, v}
}

// Describe implements prometheus.Collector.
func (c *infoCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range infoMetrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector.
func (c *infoCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range infoMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, float64(atomic.LoadInt64(m.value(c.info))))
	}
}
