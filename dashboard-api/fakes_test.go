package dashboardapi

import (
	"context"
	"fmt"
	"regexp"
	"sync"
	"time"
)

// In-memory fakes of the three seams. They behave like the real services on
// the points the API depends on (errors, secret handling) and nothing more.

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

type fakeDevices struct {
	mu   sync.Mutex
	devs map[string]Device
	now  time.Time
}

func newFakeDevices() *fakeDevices {
	return &fakeDevices{devs: map[string]Device{}, now: time.Date(2025, 11, 26, 9, 0, 0, 0, time.UTC)}
}

func (f *fakeDevices) validate(d Device) error {
	fields := map[string]string{}
	if !idRE.MatchString(d.ID) {
		fields["id"] = "must match ^[A-Za-z0-9_-]{1,64}$"
	}
	if d.Name == "" {
		fields["name"] = "required"
	}
	if len(fields) > 0 {
		return fmt.Errorf("validate device: %w", &ValidationError{Fields: fields})
	}
	return nil
}

func (f *fakeDevices) Create(_ context.Context, d Device) (Device, error) {
	if err := f.validate(d); err != nil {
		return Device{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.devs[d.ID]; ok {
		return Device{}, fmt.Errorf("create device %s: %w", d.ID, ErrConflict)
	}
	if d.Secret == "" {
		d.Secret = "generated-" + d.ID
	}
	if d.Lifecycle == "" {
		d.Lifecycle = "active"
	}
	d.CreatedAt, d.UpdatedAt = f.now, f.now
	f.devs[d.ID] = d
	return d, nil
}

// Get returns the secret too, like a careless service would: the API must
// strip it.
func (f *fakeDevices) Get(id string) (Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.devs[id]
	if !ok {
		return Device{}, fmt.Errorf("device %s: %w", id, ErrNotFound)
	}
	return d, nil
}

func (f *fakeDevices) List(flt DeviceFilter) []Device {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Device
	for _, d := range f.devs {
		if (flt.Domain == "" || flt.Domain == d.Domain) && (flt.Site == "" || flt.Site == d.Site) &&
			(flt.Type == "" || flt.Type == d.Type) {
			out = append(out, d)
		}
	}
	return out
}

func (f *fakeDevices) Update(_ context.Context, d Device) (Device, error) {
	if err := f.validate(d); err != nil {
		return Device{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	old, ok := f.devs[d.ID]
	if !ok {
		return Device{}, fmt.Errorf("update device %s: %w", d.ID, ErrNotFound)
	}
	if d.Secret == "" {
		d.Secret = old.Secret
	}
	if d.Lifecycle == "" {
		d.Lifecycle = old.Lifecycle
	}
	d.CreatedAt, d.UpdatedAt = old.CreatedAt, f.now.Add(time.Minute)
	f.devs[d.ID] = d
	return d, nil
}

func (f *fakeDevices) Delete(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.devs[id]; !ok {
		return fmt.Errorf("delete device %s: %w", id, ErrNotFound)
	}
	delete(f.devs, id)
	return nil
}

func (f *fakeDevices) secret(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.devs[id].Secret
}

type fakeLive struct {
	mu     sync.Mutex
	states map[string]DeviceState
}

func (f *fakeLive) Get(id string) (DeviceState, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.states[id]
	return s, ok
}

func (f *fakeLive) Forget(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.states, id)
}

func (f *fakeLive) set(s DeviceState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.states[s.DeviceID] = s
}

type fakeTokens struct {
	mu     sync.Mutex
	next   int
	tokens map[string]Token     // by id
	byTok  map[string]Principal // by secret
}

func newFakeTokens() *fakeTokens {
	f := &fakeTokens{tokens: map[string]Token{}, byTok: map[string]Principal{}}
	for _, r := range []Role{RoleViewer, RoleOperator, RoleAdmin} {
		id := "t-" + r.String()
		f.tokens[id] = Token{ID: id, Name: r.String(), Role: r.String(), CreatedAt: time.Date(2025, 1, int(r), 0, 0, 0, 0, time.UTC)}
		f.byTok[r.String()+"-secret"] = Principal{TokenID: id, Name: r.String(), Role: r}
	}
	return f
}

func (f *fakeTokens) Create(_ context.Context, name string, role Role) (Token, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next++
	id := fmt.Sprintf("t-%d", f.next)
	secret := fmt.Sprintf("secret-%d", f.next)
	t := Token{ID: id, Name: name, Role: role.String(), CreatedAt: time.Date(2025, 2, 1, 0, 0, f.next, 0, time.UTC)}
	f.tokens[id] = t
	f.byTok[secret] = Principal{TokenID: id, Name: name, Role: role}
	return t, secret, nil
}

func (f *fakeTokens) List() []Token {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Token, 0, len(f.tokens))
	for _, t := range f.tokens {
		out = append(out, t)
	}
	return out
}

func (f *fakeTokens) Delete(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.tokens[id]; !ok {
		return fmt.Errorf("delete token %s: %w", id, ErrNotFound)
	}
	delete(f.tokens, id)
	for s, p := range f.byTok {
		if p.TokenID == id {
			delete(f.byTok, s)
		}
	}
	return nil
}

func (f *fakeTokens) Verify(secret string) (Principal, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.byTok[secret]
	return p, ok
}
