package alerts

import (
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
)

// SeedLastReadings arms the absence rules of devices from their newest
// stored readings (store.LastReadings), at start-up, before ingest hands
// the engine any reading: without it an absence timer starts only at a
// device's first reading after start-up, so a device that died shortly
// before a restart would never raise its absence alert.
//
// A rule's timer then runs as if the stored reading had just been
// evaluated when infrawatch stopped storing: it fires `for` after the
// reading plus outage, how long infrawatch stored nothing before this
// start. Quiet time during the outage is not the device's fault (no
// device could be heard), and counting it would fire, right after a long
// deploy, the absence alerts of a whole fleet that is only reconnecting.
//
// A device whose reading is older than that, whose timer would already be
// due at now, is not armed: had infrawatch been running it would have
// fired then, and that alert, if still open, was restored from the Store;
// if it is not open, someone resolved it or the rule is younger than the
// silence, and a restart should not page for it. Such a device still
// goes offline through the live state, which raises device_offline.
//
// Series that already hold an alert (restored) or a newer reading are
// left alone. It returns the number of (rule, device) timers armed.
func (e *Engine) SeedLastReadings(readings []telemetry.Reading, outage time.Duration, now time.Time) int {
	outage = max(outage, 0)
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	arm := func(c *compiled, dev *telemetry.Device, t time.Time) {
		if c.Kind != KindAbsence || !c.Selector.Matches(dev) {
			return
		}
		heard := t.Add(outage)
		if !now.Before(heard.Add(c.For.D())) {
			return
		}
		s := e.series[c.ID][dev.ID]
		if s != nil && (s.phase != phaseIdle || !t.After(s.lastSeen)) {
			return
		}
		if s == nil {
			s = e.seriesFor(c.ID, dev.ID)
			n++
		}
		s.lastSeen = t
		if heard.After(s.heardAt) {
			s.heardAt = heard
		}
		e.timers.schedule(s, s.nextDue(c))
	}
	for i := range readings {
		r := &readings[i]
		dev, ok := e.o.Lookup(r.DeviceID)
		if !ok || dev == nil || dev.Lifecycle == telemetry.LifecycleRetired {
			continue
		}
		for _, b := range e.bucketsOf(dev) {
			for _, c := range b[""] {
				arm(c, dev, r.Time)
			}
			for _, v := range r.Values {
				for _, c := range b[v.Name] {
					arm(c, dev, r.Time)
				}
			}
		}
	}
	return n
}

// bucketsOf returns the index buckets a reading of dev visits (as
// evaluate does). Caller holds e.mu.
func (e *Engine) bucketsOf(dev *telemetry.Device) []metricBucket {
	idx := e.idx
	bs := []metricBucket{idx.byDevice[dev.ID]}
	if dev.Site != "" {
		bs = append(bs, idx.bySite[dev.Site])
	}
	if dev.Type != "" {
		bs = append(bs, idx.byType[dev.Type])
	}
	if dev.Domain != "" {
		bs = append(bs, idx.byDomain[dev.Domain])
	}
	for k, v := range dev.Tags {
		if b := idx.byTag[tagKey(k, v)]; b != nil {
			bs = append(bs, b)
		}
	}
	return append(bs, idx.all)
}
