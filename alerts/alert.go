package alerts

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/infrawatch/infrawatch/telemetry"
)

// State is the state of an alert.
type State int

// Alert states. Pending alerts (condition holding, `for` not yet elapsed)
// are kept and persisted but not listed unless asked for.
const (
	StatePending State = iota + 1
	StateFiring
	StateAcknowledged
	StateResolved
)

var stateNames = map[State]string{
	StatePending:      "pending",
	StateFiring:       "firing",
	StateAcknowledged: "acknowledged",
	StateResolved:     "resolved",
}

// String returns the state's name as the API spells it.
func (s State) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// ParseState reads a state name.
func ParseState(s string) (State, error) {
	for k, v := range stateNames {
		if v == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown alert state %q", s)
}

// open reports whether an alert in state s is still open.
func (s State) open() bool { return s == StateFiring || s == StateAcknowledged }

// MarshalJSON writes the state's name.
func (s State) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a state name.
func (s *State) UnmarshalJSON(b []byte) error {
	var n string
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	v, err := ParseState(n)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Transitions reported on events and notifications.
const (
	TransitionFiring       = "firing"
	TransitionAcknowledged = "acknowledged"
	TransitionResolved     = "resolved"
	// TransitionRenotify re-sends an acknowledged alert still open after
	// its rule's reack_after.
	TransitionRenotify = "renotify"
)

// Alert is one alert of one rule on one device.
type Alert struct {
	ID       string  `json:"id"`
	RuleID   string  `json:"rule_id"`
	DeviceID string  `json:"device_id"`
	Site     string  `json:"site"`
	Metric   string  `json:"metric"`
	Severity string  `json:"severity"`
	Message  string  `json:"message"`
	State    State   `json:"state"`
	Value    float64 `json:"value"`
	// StartsAt is when the condition began (reading time); FiredAt when
	// the alert fired (after `for`).
	StartsAt    time.Time  `json:"starts_at"`
	FiredAt     time.Time  `json:"fired_at,omitzero"`
	AckedBy     string     `json:"acked_by,omitempty"`
	AckNote     string     `json:"ack_note,omitempty"`
	AckedAt     *time.Time `json:"acked_at,omitempty"`
	ResolvedBy  string     `json:"resolved_by,omitempty"` // "" when resolved by the readings
	ResolveNote string     `json:"resolve_note,omitempty"`
	ResolvedAt  *time.Time `json:"resolved_at,omitempty"`
	// Silenced is set when a silence (or the device's maintenance
	// lifecycle) matched as the alert fired: it is recorded, not notified.
	Silenced bool `json:"silenced"`
	// SuppressedBy is the id of the gateway's alert that this offline or
	// absence alert is folded into; it is not notified on its own.
	SuppressedBy string `json:"suppressed_by,omitempty"`
	// LastNotifiedAt is when notifiers were last handed this alert; zero if
	// never.
	LastNotifiedAt time.Time `json:"last_notified_at,omitzero"`
}

// Silence mutes notifications of matching alerts between Start and End.
type Silence struct {
	ID        string    `json:"id"`
	Selector  Selector  `json:"selector"`
	Start     time.Time `json:"start"`
	End       time.Time `json:"end"`
	Comment   string    `json:"comment"`
	CreatedBy string    `json:"created_by"`
}

// Validate checks a silence and names each bad field.
func (s Silence) Validate() error {
	errs := map[string]string{}
	if s.ID != "" && !idPattern.MatchString(s.ID) {
		errs["id"] = "must match " + idPattern.String()
	}
	s.Selector.validate("selector", errs)
	if s.End.IsZero() {
		errs["end"] = "required"
	} else if !s.End.After(s.Start) {
		errs["end"] = "must be after start"
	}
	if len(s.Comment) > maxMessageLen {
		errs["comment"] = fmt.Sprintf("at most %d characters", maxMessageLen)
	}
	if len(errs) > 0 {
		return &ValidationError{Fields: errs}
	}
	return nil
}

func (s Silence) activeAt(t time.Time, dev *telemetry.Device) bool {
	return !t.Before(s.Start) && t.Before(s.End) && s.Selector.Matches(dev)
}

// AlertFilter selects alerts for ListAlerts; empty fields match all. State
// is a state name; empty lists firing, acknowledged and recently resolved
// alerts (pending only when asked for by name).
type AlertFilter struct {
	State    string
	Severity string
	DeviceID string
	Site     string
}

// Event is what Subscribe delivers: an alert after a transition.
type Event struct {
	Kind       string `json:"kind"` // always "alert"
	Alert      Alert  `json:"alert"`
	Transition string `json:"transition"`
}

// Errors a caller decides on (compare with errors.Is).
var (
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request does not fit the current state (acknowledge
	// a resolved alert, change a built-in rule, create an existing id).
	ErrConflict = errors.New("conflict")
)

func (a *Alert) clone() Alert {
	c := *a
	if a.AckedAt != nil {
		t := *a.AckedAt
		c.AckedAt = &t
	}
	if a.ResolvedAt != nil {
		t := *a.ResolvedAt
		c.ResolvedAt = &t
	}
	return c
}
