package devices

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// memStore is an in-memory Store for pure-logic tests and fuzzing; the
// SQLite store has its own tests against a real database.
type memStore struct {
	mu   sync.Mutex
	recs map[string]Record
}

func (m *memStore) LoadAll(context.Context) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Record, 0, len(m.recs))
	for _, r := range m.recs {
		out = append(out, r)
	}
	return out, nil
}

func (m *memStore) Insert(_ context.Context, r Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.recs[r.Device.ID]; ok {
		return ErrExists
	}
	m.recs[r.Device.ID] = r
	return nil
}

func (m *memStore) Update(_ context.Context, r Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, ok := m.recs[r.Device.ID]
	if !ok {
		return ErrNotFound
	}
	if r.SecretHash == "" {
		r.SecretHash = cur.SecretHash
	}
	m.recs[r.Device.ID] = r
	return nil
}

func (m *memStore) SecretHash(_ context.Context, id string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[id]
	if !ok {
		return "", ErrNotFound
	}
	return r.SecretHash, nil
}

func (m *memStore) Delete(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.recs[id]; !ok {
		return ErrNotFound
	}
	delete(m.recs, id)
	return nil
}

// verify is VerifySecret for tests, failing t on a store error.
func verify(t testing.TB, reg *Registry, id, secret string) bool {
	t.Helper()
	ok, err := reg.VerifySecret(context.Background(), id, secret)
	require.NoError(t, err)
	return ok
}

func newMemRegistry(t testing.TB) *Registry {
	t.Helper()
	reg, err := NewRegistry(context.Background(), &memStore{recs: map[string]Record{}})
	require.NoError(t, err)
	return reg
}
