package devices

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
)

// Record is one device as persisted: the device without its secret, plus the
// encoded salted hash of the secret (see hashSecret).
type Record struct {
	Device     Device
	SecretHash string
}

// Store persists the registry. The Registry serialises its writes, reads
// everything once at start-up with LoadAll and serves reads from memory, so a
// Store needs no cache. Insert returns ErrExists for a taken id; Update and
// Delete return ErrNotFound for a missing one.
type Store interface {
	LoadAll(ctx context.Context) ([]Record, error)
	Insert(ctx context.Context, r Record) error
	Update(ctx context.Context, r Record) error
	Delete(ctx context.Context, id string) error
}

// SQLiteStore is the Store on the SQLite database from OpenDB. The device is
// kept as a JSON document so that adding a field needs no migration.
type SQLiteStore struct {
	db *sql.DB
}

// NewSQLiteStore creates the devices table when missing.
func NewSQLiteStore(ctx context.Context, db *sql.DB) (*SQLiteStore, error) {
	const schema = `CREATE TABLE IF NOT EXISTS devices (
		id          TEXT PRIMARY KEY,
		doc         TEXT NOT NULL,
		secret_hash TEXT NOT NULL
	)`
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return nil, fmt.Errorf("create devices table: %w", err)
	}
	return &SQLiteStore{db: db}, nil
}

// LoadAll returns every stored device.
func (s *SQLiteStore) LoadAll(ctx context.Context) ([]Record, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, doc, secret_hash FROM devices ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var id, doc string
		var r Record
		if err := rows.Scan(&id, &doc, &r.SecretHash); err != nil {
			return nil, fmt.Errorf("load devices: %w", err)
		}
		if err := json.Unmarshal([]byte(doc), &r.Device); err != nil {
			return nil, fmt.Errorf("load device %q: decode: %w", id, err)
		}
		r.Device.ID = id
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load devices: %w", err)
	}
	return out, nil
}

// Insert stores a new device; ErrExists when its id is taken.
func (s *SQLiteStore) Insert(ctx context.Context, r Record) error {
	doc, err := encodeDoc(r.Device)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx,
		`INSERT INTO devices (id, doc, secret_hash) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		r.Device.ID, doc, r.SecretHash)
	if err != nil {
		return fmt.Errorf("insert device %q: %w", r.Device.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("insert device %q: %w", r.Device.ID, err)
	} else if n == 0 {
		return fmt.Errorf("insert device %q: %w", r.Device.ID, ErrExists)
	}
	return nil
}

// Update replaces a stored device; ErrNotFound when it is missing.
func (s *SQLiteStore) Update(ctx context.Context, r Record) error {
	doc, err := encodeDoc(r.Device)
	if err != nil {
		return err
	}
	res, err := s.db.ExecContext(ctx,
		`UPDATE devices SET doc = ?, secret_hash = ? WHERE id = ?`, doc, r.SecretHash, r.Device.ID)
	if err != nil {
		return fmt.Errorf("update device %q: %w", r.Device.ID, err)
	}
	return affectedOne(res, "update", r.Device.ID)
}

// Delete removes a stored device; ErrNotFound when it is missing.
func (s *SQLiteStore) Delete(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM devices WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete device %q: %w", id, err)
	}
	return affectedOne(res, "delete", id)
}

func affectedOne(res sql.Result, op, id string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s device %q: %w", op, id, err)
	}
	if n == 0 {
		return fmt.Errorf("%s device %q: %w", op, id, ErrNotFound)
	}
	return nil
}

func encodeDoc(d Device) (string, error) {
	d.Secret = "" // never persisted in clear
	b, err := json.Marshal(d)
	if err != nil {
		return "", fmt.Errorf("encode device %q: %w", d.ID, err)
	}
	return string(b), nil
}
