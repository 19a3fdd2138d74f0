package dashboardapi

import (
	"net/http"
	"sort"
	"time"

	"github.com/gin-gonic/gin"
)

// SnapshotFilter selects devices for a dashboard snapshot; an empty list
// matches all, several values match any of them.
type SnapshotFilter struct {
	Domains []string
	Sites   []string
	Devices []string
}

// Snapshot is the dashboard's picture of the fleet: GET /api/v1/state, and
// the first message of a websocket subscription.
type Snapshot struct {
	Time    time.Time       `json:"ts"`
	Devices []DeviceSummary `json:"devices"`
}

// DeviceSummary is what a dashboard needs to draw one device.
type DeviceSummary struct {
	ID           string                 `json:"id"`
	Name         string                 `json:"name"`
	Domain       string                 `json:"domain"`
	Type         string                 `json:"type"`
	Site         string                 `json:"site"`
	Location     *Location              `json:"location,omitempty"`
	Lifecycle    string                 `json:"lifecycle"`
	Status       string                 `json:"status"`
	LastSeen     *time.Time             `json:"last_seen"`
	Metrics      map[string]LatestValue `json:"metrics"`
	ActiveAlerts int                    `json:"active_alerts"`
}

// Snapshot builds the dashboard snapshot for f, devices sorted by id. now is
// the time stamped on it.
func (s *Server) Snapshot(f SnapshotFilter, now time.Time) Snapshot {
	// A single domain/site narrows the registry query; several are matched here.
	var df DeviceFilter
	if len(f.Domains) == 1 {
		df.Domain = f.Domains[0]
	}
	if len(f.Sites) == 1 {
		df.Site = f.Sites[0]
	}
	devs := s.opts.Devices.List(df)
	out := Snapshot{Time: now.UTC(), Devices: make([]DeviceSummary, 0, len(devs))}
	for _, d := range devs {
		if !matchAny(f.Domains, d.Domain) || !matchAny(f.Sites, d.Site) || !matchAny(f.Devices, d.ID) {
			continue
		}
		status, lastSeen, metrics := s.liveOf(d)
		alerts := 0
		if s.opts.AlertCount != nil {
			alerts = s.opts.AlertCount(d.ID)
		}
		out.Devices = append(out.Devices, DeviceSummary{
			ID: d.ID, Name: d.Name, Domain: d.Domain, Type: d.Type, Site: d.Site,
			Location: d.Location, Lifecycle: d.Lifecycle, Status: status, LastSeen: lastSeen,
			Metrics: metrics, ActiveAlerts: alerts,
		})
	}
	sort.Slice(out.Devices, func(i, j int) bool { return out.Devices[i].ID < out.Devices[j].ID })
	return out
}

func matchAny(set []string, v string) bool {
	if len(set) == 0 {
		return true
	}
	for _, s := range set {
		if s == v {
			return true
		}
	}
	return false
}

func (s *Server) state(c *gin.Context) {
	f := SnapshotFilter{Domains: nonEmpty(c.QueryArray("domain")), Sites: nonEmpty(c.QueryArray("site"))}
	c.JSON(http.StatusOK, s.Snapshot(f, time.Now()))
}

// nonEmpty drops empty values, so "?domain=" means "all", as for /devices.
func nonEmpty(vs []string) []string {
	out := vs[:0:0]
	for _, v := range vs {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}
