package auth

import (
	"context"
	"database/sql"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const adminSecret = "config-admin-token-0123456789"

func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_busy_timeout=5000&_journal_mode=WAL")
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func TestRoles(t *testing.T) {
	tests := []struct {
		role         Role
		name         string
		viewer, oper bool
		admin        bool
	}{
		{RoleViewer, "viewer", true, false, false},
		{RoleOperator, "operator", true, true, false},
		{RoleAdmin, "admin", true, true, true},
		{Role(0), "", false, false, false},
		{Role(9), "", false, false, false},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.name, tt.role.String())
		assert.Equal(t, tt.viewer, tt.role.Allows(RoleViewer), "%v allows viewer", tt.role)
		assert.Equal(t, tt.oper, tt.role.Allows(RoleOperator), "%v allows operator", tt.role)
		assert.Equal(t, tt.admin, tt.role.Allows(RoleAdmin), "%v allows admin", tt.role)
		if tt.name != "" {
			r, err := ParseRole(tt.name)
			require.NoError(t, err)
			assert.Equal(t, tt.role, r)
		}
	}
	assert.False(t, RoleAdmin.Allows(Role(0)), "the zero role is never a valid requirement")
	for _, bad := range []string{"", "Admin", "root", " viewer"} {
		_, err := ParseRole(bad)
		assert.ErrorIs(t, err, ErrInvalid, bad)
	}
	var v struct{ Role Role }
	require.NoError(t, json.Unmarshal([]byte(`{"Role":"operator"}`), &v))
	assert.Equal(t, RoleOperator, v.Role)
	assert.Error(t, json.Unmarshal([]byte(`{"Role":"god"}`), &v))
	b, err := json.Marshal(v)
	require.NoError(t, err)
	assert.JSONEq(t, `{"Role":"operator"}`, string(b))
}

func TestTokens(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "infrawatch.db")
	db := openDB(t, path)
	toks, err := NewTokens(ctx, db, adminSecret)
	require.NoError(t, err)

	// Bootstrap admin.
	tok, role, ok := toks.Verify(adminSecret)
	require.True(t, ok)
	assert.Equal(t, RoleAdmin, role)
	assert.Equal(t, Token{ID: AdminTokenID, Name: "admin (config)", Role: "admin"}, tok)
	assert.Empty(t, toks.List(), "the config admin is not listed")
	assert.ErrorIs(t, toks.Delete(ctx, AdminTokenID), ErrNotFound)

	viewer, vSecret, err := toks.Create(ctx, "dashboard wall", RoleViewer)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(vSecret, "iw_"))
	assert.Len(t, vSecret, 3+43)
	assert.Equal(t, "viewer", viewer.Role)
	assert.Equal(t, "dashboard wall", viewer.Name)
	assert.NotEmpty(t, viewer.ID)
	op, oSecret, err := toks.Create(ctx, "  crew north  ", RoleOperator)
	require.NoError(t, err)
	assert.Equal(t, "crew north", op.Name)
	assert.NotEqual(t, viewer.ID, op.ID)
	assert.NotEqual(t, vSecret, oSecret)

	got, role, ok := toks.Verify(vSecret)
	require.True(t, ok)
	assert.Equal(t, RoleViewer, role)
	assert.Equal(t, viewer, got)
	_, role, ok = toks.Verify(oSecret)
	require.True(t, ok)
	assert.Equal(t, RoleOperator, role)

	// Wrong secrets are refused.
	for _, bad := range []string{"", vSecret + "x", vSecret[:len(vSecret)-1], strings.ToUpper(vSecret), adminSecret + " ", "iw_"} {
		_, role, ok := toks.Verify(bad)
		assert.False(t, ok, "%q", bad)
		assert.Equal(t, Role(0), role)
	}

	// Invalid input.
	_, _, err = toks.Create(ctx, "", RoleViewer)
	assert.ErrorIs(t, err, ErrInvalid)
	_, _, err = toks.Create(ctx, "a\nb", RoleViewer)
	assert.ErrorIs(t, err, ErrInvalid)
	_, _, err = toks.Create(ctx, strings.Repeat("n", MaxNameLen+1), RoleViewer)
	assert.ErrorIs(t, err, ErrInvalid)
	_, _, err = toks.Create(ctx, "x", Role(0))
	assert.ErrorIs(t, err, ErrInvalid)

	list := toks.List()
	require.Len(t, list, 2)
	assert.Equal(t, viewer.ID, list[0].ID, "oldest first")

	// Nothing but the hash reaches the database.
	var hash string
	require.NoError(t, db.QueryRow(`SELECT hash FROM api_tokens WHERE id = ?`, viewer.ID).Scan(&hash))
	assert.NotContains(t, hash, vSecret)
	assert.Len(t, hash, 64)

	// Delete revokes at once.
	require.NoError(t, toks.Delete(ctx, viewer.ID))
	assert.ErrorIs(t, toks.Delete(ctx, viewer.ID), ErrNotFound)
	_, _, ok = toks.Verify(vSecret)
	assert.False(t, ok)

	// Restart: a new Tokens on a reopened database sees what was stored.
	require.NoError(t, db.Close())
	db2 := openDB(t, path)
	toks2, err := NewTokens(ctx, db2, "")
	require.NoError(t, err)
	got, role, ok = toks2.Verify(oSecret)
	require.True(t, ok)
	assert.Equal(t, RoleOperator, role)
	assert.Equal(t, op.ID, got.ID)
	assert.Equal(t, op.CreatedAt, got.CreatedAt)
	_, _, ok = toks2.Verify(vSecret)
	assert.False(t, ok, "deleted stays deleted")
	_, _, ok = toks2.Verify(adminSecret)
	assert.False(t, ok, "no admin token configured now")
	assert.Len(t, toks2.List(), 1)
}

func TestNewTokensRejectsWeakAdminToken(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "x.db"))
	_, err := NewTokens(context.Background(), db, "short")
	assert.ErrorIs(t, err, ErrInvalid)
}

func TestTokensConcurrent(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "x.db"))
	toks, err := NewTokens(ctx, db, adminSecret)
	require.NoError(t, err)
	_, secret, err := toks.Create(ctx, "reader", RoleViewer)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				if _, _, ok := toks.Verify(secret); !ok {
					t.Error("refused")
					return
				}
				_ = toks.List()
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			tok, _, err := toks.Create(ctx, "tmp", RoleOperator)
			if err != nil {
				t.Error(err)
				return
			}
			if err := toks.Delete(ctx, tok.ID); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()
}

func BenchmarkVerify(b *testing.B) {
	db, err := sql.Open("sqlite", filepath.Join(b.TempDir(), "x.db"))
	require.NoError(b, err)
	defer db.Close()
	toks, err := NewTokens(context.Background(), db, adminSecret)
	require.NoError(b, err)
	_, secret, err := toks.Create(context.Background(), "bench", RoleViewer)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := toks.Verify(secret); !ok {
			b.Fatal("refused")
		}
	}
}
