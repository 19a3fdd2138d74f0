package devices

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSQLiteStore(t *testing.T) {
	ctx := context.Background()
	db, path := openTestDB(t)
	_, err := os.Stat(filepath.Dir(path))
	require.NoError(t, err, "OpenDB creates the parent directory")

	var mode string
	require.NoError(t, db.QueryRow(`PRAGMA journal_mode`).Scan(&mode))
	assert.Equal(t, "wal", mode)
	var fk int
	require.NoError(t, db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk))
	assert.Equal(t, 1, fk)
	var sync int
	require.NoError(t, db.QueryRow(`PRAGMA synchronous`).Scan(&sync))
	assert.Equal(t, 1, sync, "synchronous=NORMAL: a commit in WAL mode does not fsync")

	s, err := NewSQLiteStore(ctx, db)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, s.Close()) })
	s2, err := NewSQLiteStore(ctx, db) // idempotent
	require.NoError(t, err)
	require.NoError(t, s2.Close())

	d := validDevice("tc-1")
	d.Secret = "must-not-be-stored-0000"
	rec := Record{Device: d, SecretHash: "sha256$c2FsdA$" + b64.EncodeToString(make([]byte, 32))}
	require.NoError(t, s.Insert(ctx, rec))
	assert.ErrorIs(t, s.Insert(ctx, rec), ErrExists)
	assert.ErrorIs(t, s.Update(ctx, Record{Device: validDevice("ghost")}), ErrNotFound)
	assert.ErrorIs(t, s.Delete(ctx, "ghost"), ErrNotFound)

	all, err := s.LoadAll(ctx)
	require.NoError(t, err)
	require.Len(t, all, 1)
	assert.Empty(t, all[0].Device.Secret)
	assert.Equal(t, rec.SecretHash, all[0].SecretHash)
	assert.Equal(t, "Traffic counter tc-1", all[0].Device.Name)

	h, err := s.SecretHash(ctx, "tc-1")
	require.NoError(t, err)
	assert.Equal(t, rec.SecretHash, h)
	_, err = s.SecretHash(ctx, "ghost")
	assert.ErrorIs(t, err, ErrNotFound)
	// An update without a hash keeps the stored one; with one, replaces it.
	d.Name = "renamed"
	require.NoError(t, s.Update(ctx, Record{Device: d}))
	h, err = s.SecretHash(ctx, "tc-1")
	require.NoError(t, err)
	assert.Equal(t, rec.SecretHash, h, "an update without a secret keeps it")
	rotated := "sha256$cm90YXRlZA$" + b64.EncodeToString(make([]byte, 32))
	require.NoError(t, s.Update(ctx, Record{Device: d, SecretHash: rotated}))
	h, err = s.SecretHash(ctx, "tc-1")
	require.NoError(t, err)
	assert.Equal(t, rotated, h)

	require.NoError(t, s.Delete(ctx, "tc-1"))
	all, err = s.LoadAll(ctx)
	require.NoError(t, err)
	assert.Empty(t, all)
}

func TestOpenDBRejectsNonFilePaths(t *testing.T) {
	for _, p := range []string{"", ":memory:", "file:x.db", "a?b.db"} {
		_, err := OpenDB(p)
		assert.Error(t, err, p)
	}
}

func TestNewRegistryRejectsCorruptHash(t *testing.T) {
	ms := &memStore{recs: map[string]Record{"x": {Device: validDevice("x"), SecretHash: "plain"}}}
	_, err := NewRegistry(context.Background(), ms)
	assert.ErrorContains(t, err, "malformed secret hash")
}

// TestVerifySecretReadsStore: the registry keeps no secret hashes; logins
// read them from SQLite, so a secret set through one registry verifies in
// the next, a rename keeps it, and an unreadable database refuses the
// login with an error instead of letting it in.
func TestVerifySecretReadsStore(t *testing.T) {
	ctx := context.Background()
	db, _ := openTestDB(t)
	s, err := NewSQLiteStore(ctx, db)
	require.NoError(t, err)
	reg, err := NewRegistry(ctx, s)
	require.NoError(t, err)
	d := validDevice("tc-1")
	d.Secret = "installer-secret-0123"
	created, err := reg.Create(ctx, d)
	require.NoError(t, err)
	assert.True(t, verify(t, reg, "tc-1", "installer-secret-0123"))
	assert.False(t, verify(t, reg, "tc-1", "installer-secret-0124"))

	created.Name = "renamed"
	created.Secret = ""
	_, err = reg.Update(ctx, created)
	require.NoError(t, err)
	assert.True(t, verify(t, reg, "tc-1", "installer-secret-0123"), "an update without a secret keeps it")

	reg2, err := NewRegistry(ctx, s)
	require.NoError(t, err)
	assert.True(t, verify(t, reg2, "tc-1", "installer-secret-0123"))

	require.NoError(t, s.Close())
	ok, err := reg2.VerifySecret(ctx, "tc-1", "installer-secret-0123")
	assert.False(t, ok)
	assert.ErrorContains(t, err, "verify secret")
}
