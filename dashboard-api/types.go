package dashboardapi

import (
	"github.com/infrawatch/infrawatch/devices"

	"context"
	"time"
)

// Location is a device position (WGS 84 degrees).
type Location = devices.Location

// MetricSpec is a metric's unit and normal range.
type MetricSpec = devices.MetricSpec

// Device is a registry entry as the API sees it; Secret is write-only: the
// API puts it in an answer only when the request created or rotated it.
type Device = devices.Device

// MetricValue is the last value of one metric and when it was measured.
type MetricValue = devices.MetricValue

// DeviceState is the live state of one device.
type DeviceState = devices.State

// DeviceFilter selects devices by exact match; an empty field matches all.
type DeviceFilter = devices.Filter

// DeviceService is the device registry. Errors wrap ErrNotFound, ErrConflict
// or *ValidationError where those apply; anything else is rendered as a 500.
type DeviceService interface {
	// Create registers d; an empty Secret means "generate one". The returned
	// Device carries the secret in effect.
	Create(ctx context.Context, d Device) (Device, error)
	// Get returns the device or an error wrapping ErrNotFound.
	Get(id string) (Device, error)
	// List returns the devices matching f.
	List(f DeviceFilter) []Device
	// Update replaces the writable fields of the device d.ID. An empty
	// Secret keeps the current secret; a non-empty one rotates it.
	// CreatedAt and UpdatedAt in d are ignored.
	Update(ctx context.Context, d Device) (Device, error)
	// Delete removes the device or returns an error wrapping ErrNotFound.
	Delete(ctx context.Context, id string) error
}

// LiveState reads the live status and latest values of devices.
type LiveState interface {
	// Get returns the device's state, or false when nothing is known yet.
	Get(id string) (DeviceState, bool)
	// Forget drops a device's state once it is deleted from the registry,
	// so that a device created again with the same id starts unknown.
	Forget(id string)
}

// Token is an API token's metadata; the token itself is never listed.
type Token struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

// Principal is who a request acts as, set by the authentication middleware.
type Principal struct {
	TokenID string
	Name    string
	Role    Role
}

// TokenService issues and verifies API tokens.
type TokenService interface {
	// Create issues a token and returns its metadata and the secret, which
	// the caller sees exactly once.
	Create(ctx context.Context, name string, role Role) (Token, string, error)
	// List returns every token's metadata.
	List() []Token
	// Delete revokes a token or returns an error wrapping ErrNotFound.
	Delete(ctx context.Context, id string) error
	// Verify maps a presented secret to its principal.
	Verify(secret string) (Principal, bool)
}
