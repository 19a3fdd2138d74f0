package main

import (
	"context"
	"slices"
	"time"

	"github.com/infrawatch/infrawatch/devices"
	"github.com/infrawatch/infrawatch/store"
	"github.com/infrawatch/infrawatch/telemetry"
)

// seedState restores each registered device's newest stored reading into
// the live state and the alert engine's absence timers, so that a device
// that died before the restart still goes stale and offline and raises its
// alerts (see devices.Live.Seed and alerts.Engine.SeedLastReadings). It
// runs before ingest takes messages. An InfluxDB that does not answer in
// time (devices.seed_timeout) costs the seeding, not the start-up: a
// warning, and the devices not seeded stay unknown until they report. A
// device silent for longer than devices.seed_window stays unknown too: its
// device_offline alert, if any, survives the restart in the alert store.
func (s *server) seedState(ctx context.Context) {
	start := time.Now()
	byType := map[string][]string{}
	for _, d := range s.registry.List(devices.Filter{}) {
		if d.Lifecycle != telemetry.LifecycleRetired {
			byType[d.Type] = append(byType[d.Type], d.ID)
		}
	}
	if len(byType) == 0 {
		return
	}
	qctx, cancel := context.WithTimeout(ctx, s.cfg.Devices.SeedTimeout)
	readings, err := s.store.LastReadings(qctx, store.LastReadingsQuery{Devices: byType, Now: start, Window: s.cfg.Devices.SeedWindow})
	cancel()
	if err != nil {
		s.log.Warn("could not read the newest stored readings; devices not seeded stay unknown until they report",
			"err", err, "readings", len(readings))
	}
	// The outage: from when the fleet was last stored to now. With other
	// instances sharing the ingest load it is about zero. Reading times are
	// device clocks, which ingest accepts up to MaxFuture ahead: the newest
	// of all would let one fast clock shrink the outage to nothing and
	// every other device go offline at the first sweep. The 90th
	// percentile of the devices' newest times ignores such a few, and the
	// devices that were already quiet (or dead) before the outage, which
	// a median would count and so stretch the outage.
	var outage time.Duration
	if newest, ok := fleetNewest(readings); ok {
		outage = max(time.Since(newest), 0)
	}
	seeded := s.live.Seed(readings, outage)
	armed := s.alerts.SeedLastReadings(readings, outage, time.Now())
	s.log.Info("live state seeded from InfluxDB", "devices", seeded, "absence_timers", armed,
		"outage", outage.Round(time.Millisecond), "took", time.Since(start).Round(time.Millisecond))
}

// fleetNewest is the 90th percentile over devices of each device's newest
// reading time (readings are grouped by device, as store.LastReadings
// returns them); false without readings.
func fleetNewest(readings []telemetry.Reading) (time.Time, bool) {
	var newest []time.Time
	for i := range readings {
		r := &readings[i]
		if i > 0 && readings[i-1].DeviceID == r.DeviceID {
			if r.Time.After(newest[len(newest)-1]) {
				newest[len(newest)-1] = r.Time
			}
			continue
		}
		newest = append(newest, r.Time)
	}
	if len(newest) == 0 {
		return time.Time{}, false
	}
	slices.SortFunc(newest, time.Time.Compare)
	return newest[(len(newest)-1)*9/10], true
}
