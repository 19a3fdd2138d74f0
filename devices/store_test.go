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
