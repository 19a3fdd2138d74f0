package auth

import "fmt"

// Role is what a token may do. Roles are ordered: each allows everything the
// ones below it allow.
type Role int

// The roles, least privileged first.
const (
	// RoleViewer reads and streams.
	RoleViewer Role = iota + 1
	// RoleOperator also acknowledges and resolves alerts and manages silences.
	RoleOperator
	// RoleAdmin also manages devices, rules and tokens.
	RoleAdmin
)

// ParseRole parses "viewer", "operator" or "admin".
func ParseRole(s string) (Role, error) {
	switch s {
	case "viewer":
		return RoleViewer, nil
	case "operator":
		return RoleOperator, nil
	case "admin":
		return RoleAdmin, nil
	}
	return 0, fmt.Errorf("unknown role %q (want viewer, operator or admin): %w", s, ErrInvalid)
}

// String returns the role's name, or "" for the zero Role.
func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	}
	return ""
}

// Allows reports whether r grants at least min. The zero Role allows nothing.
func (r Role) Allows(min Role) bool {
	return r.valid() && min.valid() && r >= min
}

func (r Role) valid() bool { return r >= RoleViewer && r <= RoleAdmin }

// MarshalText encodes the role by name.
func (r Role) MarshalText() ([]byte, error) {
	if !r.valid() {
		return nil, fmt.Errorf("marshal role %d: %w", int(r), ErrInvalid)
	}
	return []byte(r.String()), nil
}

// UnmarshalText decodes a role name.
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRole(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}
