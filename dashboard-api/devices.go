package dashboardapi

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"

	"github.com/gin-gonic/gin"
)

// Live statuses; a device with no live state yet is "unknown".
const (
	statusOnline  = "online"
	statusStale   = "stale"
	statusOffline = "offline"
	statusUnknown = "unknown"
)

// deviceRequest is the body of POST /devices and PUT /devices/{id}: the
// writable fields of a device. The read-only fields a client may echo back
// from a GET (status, created_at, updated_at) are accepted and ignored, so a
// GET-modify-PUT round trip works; anything else unknown is rejected.
type deviceRequest struct {
	ID               string                `json:"id"`
	Name             string                `json:"name"`
	Domain           string                `json:"domain"`
	Type             string                `json:"type"`
	Site             string                `json:"site"`
	Location         *Location             `json:"location"`
	ExpectedInterval int                   `json:"expected_interval"`
	Metrics          map[string]MetricSpec `json:"metrics"`
	Tags             map[string]string     `json:"tags"`
	GatewayID        string                `json:"gateway_id"`
	Lifecycle        string                `json:"lifecycle"`
	Secret           string                `json:"secret"`

	Status    json.RawMessage `json:"status"`
	CreatedAt json.RawMessage `json:"created_at"`
	UpdatedAt json.RawMessage `json:"updated_at"`
}

func (r deviceRequest) device() Device {
	return Device{
		ID: r.ID, Name: r.Name, Domain: r.Domain, Type: r.Type, Site: r.Site,
		Location: r.Location, ExpectedInterval: r.ExpectedInterval, Metrics: r.Metrics,
		Tags: r.Tags, GatewayID: r.GatewayID, Lifecycle: r.Lifecycle, Secret: r.Secret,
	}
}

// deviceResponse is a device as answered: the registry entry plus its live
// status. Secret is set only on the answer that created or rotated it.
type deviceResponse struct {
	Device
	Status string `json:"status"`
}

type deviceList struct {
	Devices []deviceResponse `json:"devices"`
}

// view builds the public form of d; withSecret keeps the secret.
func (s *Server) view(d Device, withSecret bool) deviceResponse {
	if !withSecret {
		d.Secret = ""
	}
	return deviceResponse{Device: d, Status: s.status(d.ID)}
}

func (s *Server) status(id string) string {
	if st, ok := s.opts.Live.Get(id); ok && st.Status != "" {
		return st.Status
	}
	return statusUnknown
}

func (s *Server) listDevices(c *gin.Context) {
	f := DeviceFilter{Domain: c.Query("domain"), Site: c.Query("site"), Type: c.Query("type")}
	status := c.Query("status")
	switch status {
	case "", statusOnline, statusStale, statusOffline, statusUnknown:
	default:
		abort(c, &ValidationError{Fields: map[string]string{"status": "must be online, stale, offline or unknown"}})
		return
	}
	devs := s.opts.Devices.List(f)
	out := deviceList{Devices: make([]deviceResponse, 0, len(devs))}
	for _, d := range devs {
		v := s.view(d, false)
		if status != "" && v.Status != status {
			continue
		}
		out.Devices = append(out.Devices, v)
	}
	sort.Slice(out.Devices, func(i, j int) bool { return out.Devices[i].ID < out.Devices[j].ID })
	c.JSON(http.StatusOK, out)
}

func (s *Server) createDevice(c *gin.Context) {
	var req deviceRequest
	if err := DecodeJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	d, err := s.opts.Devices.Create(c.Request.Context(), req.device())
	if err != nil {
		abort(c, err)
		return
	}
	c.Header("Location", "/api/v1/devices/"+d.ID)
	c.Header("Cache-Control", "no-store") // the answer holds the device's MQTT password
	// The one answer that carries the (possibly generated) secret.
	c.JSON(http.StatusCreated, s.view(d, true))
}

func (s *Server) getDevice(c *gin.Context) {
	d, err := s.opts.Devices.Get(c.Param("id"))
	if err != nil {
		abort(c, err)
		return
	}
	c.JSON(http.StatusOK, s.view(d, false))
}

func (s *Server) updateDevice(c *gin.Context) {
	var req deviceRequest
	if err := DecodeJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	id := c.Param("id")
	if req.ID != "" && req.ID != id {
		abort(c, &ValidationError{Fields: map[string]string{"id": "does not match the id in the path; a device cannot be renamed"}})
		return
	}
	in := req.device()
	in.ID = id
	d, err := s.opts.Devices.Update(c.Request.Context(), in)
	if err != nil {
		abort(c, err)
		return
	}
	// A PUT that sets a secret rotates it; only then is it echoed back.
	if req.Secret != "" {
		c.Header("Cache-Control", "no-store")
	}
	c.JSON(http.StatusOK, s.view(d, req.Secret != ""))
}

func (s *Server) deleteDevice(c *gin.Context) {
	id := c.Param("id")
	if err := s.opts.Devices.Delete(c.Request.Context(), id); err != nil {
		abort(c, err)
		return
	}
	// Live state would drop it at its next sweep, but a device created
	// again with the same id before then would show the deleted one's
	// values and status. After the registry's delete: a reading in flight
	// cannot bring the state back.
	s.opts.Live.Forget(id)
	c.Status(http.StatusNoContent)
}

// latestResponse is GET /devices/{id}/latest.
type latestResponse struct {
	DeviceID string                 `json:"device_id"`
	Status   string                 `json:"status"`
	LastSeen *time.Time             `json:"last_seen"`
	Metrics  map[string]LatestValue `json:"metrics"`
}

// LatestValue is one metric's last value (a number or a boolean), with its
// unit from the registry so a client can label it without a second request.
type LatestValue struct {
	Value any       `json:"value"`
	Time  time.Time `json:"ts"`
	Unit  string    `json:"unit,omitempty"`
}

func (s *Server) latest(c *gin.Context) {
	d, err := s.opts.Devices.Get(c.Param("id"))
	if err != nil {
		abort(c, err)
		return
	}
	status, lastSeen, metrics := s.liveOf(d)
	c.JSON(http.StatusOK, latestResponse{DeviceID: d.ID, Status: status, LastSeen: lastSeen, Metrics: metrics})
}

// liveOf returns a device's status, last-seen time and latest values (never
// a nil map, so clients always get an object).
func (s *Server) liveOf(d Device) (string, *time.Time, map[string]LatestValue) {
	metrics := map[string]LatestValue{}
	st, ok := s.opts.Live.Get(d.ID)
	if !ok {
		return statusUnknown, nil, metrics
	}
	for name, mv := range st.Metrics {
		metrics[name] = LatestValue{Value: mv.Value, Time: mv.Time, Unit: d.Metrics[name].Unit}
	}
	status := st.Status
	if status == "" {
		status = statusUnknown
	}
	return status, st.LastSeen, metrics
}
