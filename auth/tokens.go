package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Bounds.
const (
	// MaxTokens bounds the number of stored tokens.
	MaxTokens = 1000
	// MaxNameLen bounds a token's name, in bytes.
	MaxNameLen = 128
	// MinAdminTokenLen is the shortest admin token the configuration may set.
	MinAdminTokenLen = 16
	// SecretPrefix starts every generated token, so that a leaked one is
	// recognisable (secret scanners, logs).
	SecretPrefix = "iw_"
)

// AdminTokenID is the ID of the bootstrap admin identity from configuration.
const AdminTokenID = "config"

var (
	// ErrNotFound is returned for an unknown token id.
	ErrNotFound = errors.New("token not found")
	// ErrInvalid is returned for an invalid name or role.
	ErrInvalid = errors.New("invalid")
	// ErrLimit is returned when MaxTokens tokens exist.
	ErrLimit = errors.New("too many tokens")
)

// Token is an API token as listed: never its secret.
type Token struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"created_at"`
}

type stored struct {
	tok  Token
	role Role
	hash [sha256.Size]byte
}

// Tokens holds the API tokens: persisted in SQLite, verified from memory.
type Tokens struct {
	db        *sql.DB
	adminHash [sha256.Size]byte
	hasAdmin  bool

	mu     sync.RWMutex
	byID   map[string]*stored
	byHash map[[sha256.Size]byte]*stored
}

// NewTokens creates the tokens table when missing and loads every token.
// adminToken, when not empty, is the configured admin secret: it verifies as
// the token {ID: "config", Name: "admin (config)", Role: "admin"}, which is not
// stored, listed or deletable.
func NewTokens(ctx context.Context, db *sql.DB, adminToken string) (*Tokens, error) {
	if db == nil {
		return nil, errors.New("new tokens: db is nil")
	}
	if adminToken != "" && len(adminToken) < MinAdminTokenLen {
		return nil, fmt.Errorf("new tokens: admin token: must be at least %d characters: %w", MinAdminTokenLen, ErrInvalid)
	}
	const schema = `CREATE TABLE IF NOT EXISTS api_tokens (
		id         TEXT PRIMARY KEY,
		name       TEXT NOT NULL,
		role       TEXT NOT NULL,
		hash       TEXT NOT NULL UNIQUE,
		created_at TEXT NOT NULL
	)`
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return nil, fmt.Errorf("create api_tokens table: %w", err)
	}
	t := &Tokens{
		db:     db,
		byID:   map[string]*stored{},
		byHash: map[[sha256.Size]byte]*stored{},
	}
	if adminToken != "" {
		t.adminHash, t.hasAdmin = sha256.Sum256([]byte(adminToken)), true
	}
	if err := t.load(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tokens) load(ctx context.Context) error {
	rows, err := t.db.QueryContext(ctx, `SELECT id, name, role, hash, created_at FROM api_tokens`)
	if err != nil {
		return fmt.Errorf("load tokens: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s stored
		var hashHex, created string
		if err := rows.Scan(&s.tok.ID, &s.tok.Name, &s.tok.Role, &hashHex, &created); err != nil {
			return fmt.Errorf("load tokens: %w", err)
		}
		if s.role, err = ParseRole(s.tok.Role); err != nil {
			return fmt.Errorf("load token %q: %w", s.tok.ID, err)
		}
		h, err := hex.DecodeString(hashHex)
		if err != nil || len(h) != sha256.Size {
			return fmt.Errorf("load token %q: malformed hash", s.tok.ID)
		}
		copy(s.hash[:], h)
		if s.tok.CreatedAt, err = time.Parse(time.RFC3339Nano, created); err != nil {
			return fmt.Errorf("load token %q: created_at: %w", s.tok.ID, err)
		}
		t.byID[s.tok.ID] = &s
		t.byHash[s.hash] = &s
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load tokens: %w", err)
	}
	return nil
}

// Create stores a new token and returns it with its secret, which is shown
// this once: only its hash is kept. Errors: ErrInvalid (name, role), ErrLimit.
func (t *Tokens) Create(ctx context.Context, name string, role Role) (Token, string, error) {
	name = strings.TrimSpace(name)
	if err := checkName(name); err != nil {
		return Token{}, "", err
	}
	if !role.valid() {
		return Token{}, "", fmt.Errorf("create token: role %d: %w", int(role), ErrInvalid)
	}
	secretBytes := make([]byte, 32)
	idBytes := make([]byte, 9)
	if _, err := rand.Read(secretBytes); err != nil {
		return Token{}, "", fmt.Errorf("create token: generate secret: %w", err)
	}
	if _, err := rand.Read(idBytes); err != nil {
		return Token{}, "", fmt.Errorf("create token: generate id: %w", err)
	}
	secret := SecretPrefix + base64.RawURLEncoding.EncodeToString(secretBytes)
	s := &stored{
		tok: Token{
			ID:        "tok_" + base64.RawURLEncoding.EncodeToString(idBytes),
			Name:      name,
			Role:      role.String(),
			CreatedAt: time.Now().UTC(),
		},
		role: role,
		hash: sha256.Sum256([]byte(secret)),
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.byID) >= MaxTokens {
		return Token{}, "", fmt.Errorf("create token: %w (at most %d)", ErrLimit, MaxTokens)
	}
	_, err := t.db.ExecContext(ctx,
		`INSERT INTO api_tokens (id, name, role, hash, created_at) VALUES (?, ?, ?, ?, ?)`,
		s.tok.ID, s.tok.Name, s.tok.Role, hex.EncodeToString(s.hash[:]), s.tok.CreatedAt.Format(time.RFC3339Nano))
	if err != nil {
		return Token{}, "", fmt.Errorf("create token %q: %w", name, err)
	}
	t.byID[s.tok.ID] = s
	t.byHash[s.hash] = s
	return s.tok, secret, nil
}

// List returns the stored tokens, oldest first (the configured admin token
// is not listed).
func (t *Tokens) List() []Token {
	t.mu.RLock()
	out := make([]Token, 0, len(t.byID))
	for _, s := range t.byID {
		out = append(out, s.tok)
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Delete revokes a token at once. Errors: ErrNotFound (also for the
// configured admin token, which only the configuration can change).
func (t *Tokens) Delete(ctx context.Context, id string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.byID[id]
	if !ok {
		return fmt.Errorf("delete token %q: %w", id, ErrNotFound)
	}
	if _, err := t.db.ExecContext(ctx, `DELETE FROM api_tokens WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete token %q: %w", id, err)
	}
	delete(t.byID, id)
	delete(t.byHash, s.hash)
	return nil
}

// Verify returns the token a secret belongs to and its role. The secret is
// hashed, looked up by hash, and the full hash compared in constant time;
// the configured admin token is compared (by hash, so length does not leak)
// in constant time too.
func (t *Tokens) Verify(secret string) (Token, Role, bool) {
	if secret == "" {
		return Token{}, 0, false
	}
	h := sha256.Sum256([]byte(secret))
	if t.hasAdmin && subtle.ConstantTimeCompare(h[:], t.adminHash[:]) == 1 {
		return Token{ID: AdminTokenID, Name: "admin (config)", Role: RoleAdmin.String()}, RoleAdmin, true
	}
	t.mu.RLock()
	s, ok := t.byHash[h]
	t.mu.RUnlock()
	if !ok || subtle.ConstantTimeCompare(h[:], s.hash[:]) != 1 {
		return Token{}, 0, false
	}
	return s.tok, s.role, true
}

func checkName(name string) error {
	if name == "" || len(name) > MaxNameLen || !utf8.ValidString(name) {
		return fmt.Errorf("create token: name must be 1 to %d bytes of UTF-8: %w", MaxNameLen, ErrInvalid)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("create token: name must not contain control characters: %w", ErrInvalid)
		}
	}
	return nil
}
