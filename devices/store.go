package devices

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
)

// Record is one device as persisted: the device without its secret, plus the
// encoded salted hash of the secret (see hashSecret). In an Update, an empty
// SecretHash keeps the stored one.
type Record struct {
	Device     Device
	SecretHash string
}

// Store persists the registry. The Registry serialises its writes, reads
// everything once at start-up with LoadAll and serves reads from memory, so a
// Store needs no cache; only secret hashes are read again, by SecretHash on
// each device login (a fleet's hashes would be 48 bytes a device in memory,
// for a check made once per connection). Insert returns ErrExists for a
// taken id; Update, Delete and SecretHash return ErrNotFound for a missing
// one.
type Store interface {
	LoadAll(ctx context.Context) ([]Record, error)
	SecretHash(ctx context.Context, id string) (string, error)
	Insert(ctx context.Context, r Record) error
	Update(ctx context.Context, r Record) error
	Delete(ctx context.Context, id string) error
}

// SQLiteStore is the Store on the SQLite database from OpenDB. The device is
// kept as a JSON document so that adding a field needs no migration. Each
// write is one statement in its own transaction (one WAL commit, no fsync
// with OpenDB's synchronous=NORMAL).
type SQLiteStore struct {
	db *sql.DB
	// Prepared once: parsing the SQL again was about a third of an insert's
	// CPU time.
	insert, update, del, secret *sql.Stmt
	// logins bounds the concurrent SecretHash queries: database/sql opens a
	// connection per concurrent query, and a fleet reconnecting at once
	// (a broker restart) would otherwise open hundreds, each with its own
	// page cache.
	logins chan struct{}
}

// maxLoginQueries is how many SecretHash queries run at once: database/sql
// keeps two idle connections, so a burst of logins reuses them instead of
// opening and closing connections (a query takes ~10 µs: two at a time is
// ~200,000 logins/s).
const maxLoginQueries = 2

// NewSQLiteStore creates the devices table when missing and prepares the
// store's statements. Close releases them (closing db does too).
func NewSQLiteStore(ctx context.Context, db *sql.DB) (*SQLiteStore, error) {
	const schema = `CREATE TABLE IF NOT EXISTS devices (
		id          TEXT PRIMARY KEY,
		doc         TEXT NOT NULL,
		secret_hash TEXT NOT NULL
	)`
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return nil, fmt.Errorf("create devices table: %w", err)
	}
	s := &SQLiteStore{db: db, logins: make(chan struct{}, maxLoginQueries)}
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{
		{&s.insert, `INSERT INTO devices (id, doc, secret_hash) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING`},
		{&s.update, `UPDATE devices SET doc = ?, secret_hash = COALESCE(NULLIF(?, ''), secret_hash) WHERE id = ?`},
		{&s.del, `DELETE FROM devices WHERE id = ?`},
		{&s.secret, `SELECT secret_hash FROM devices WHERE id = ?`},
	} {
		var err error
		if *p.stmt, err = db.PrepareContext(ctx, p.sql); err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("prepare device statement: %w", err)
		}
	}
	return s, nil
}

// Close releases the prepared statements; the database stays open.
func (s *SQLiteStore) Close() error {
	var errs []error
	for _, st := range []*sql.Stmt{s.insert, s.update, s.del, s.secret} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	return errors.Join(errs...)
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

// SecretHash returns the stored hash of a device's secret; ErrNotFound when
// the device is missing.
func (s *SQLiteStore) SecretHash(ctx context.Context, id string) (string, error) {
	select {
	case s.logins <- struct{}{}:
		defer func() { <-s.logins }()
	case <-ctx.Done():
		return "", fmt.Errorf("read secret hash of device %q: %w", id, ctx.Err())
	}
	var h string
	switch err := s.secret.QueryRowContext(ctx, id).Scan(&h); {
	case errors.Is(err, sql.ErrNoRows):
		return "", fmt.Errorf("read secret hash of device %q: %w", id, ErrNotFound)
	case err != nil:
		return "", fmt.Errorf("read secret hash of device %q: %w", id, err)
	}
	return h, nil
}

// Insert stores a new device; ErrExists when its id is taken.
func (s *SQLiteStore) Insert(ctx context.Context, r Record) error {
	doc, err := encodeDoc(r.Device)
	if err != nil {
		return err
	}
	res, err := s.insert.ExecContext(ctx, r.Device.ID, doc, r.SecretHash)
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

// Update replaces a stored device, and its secret hash unless r's is empty;
// ErrNotFound when it is missing.
func (s *SQLiteStore) Update(ctx context.Context, r Record) error {
	doc, err := encodeDoc(r.Device)
	if err != nil {
		return err
	}
	res, err := s.update.ExecContext(ctx, doc, r.SecretHash, r.Device.ID)
	if err != nil {
		return fmt.Errorf("update device %q: %w", r.Device.ID, err)
	}
	return affectedOne(res, "update", r.Device.ID)
}

// Delete removes a stored device; ErrNotFound when it is missing.
func (s *SQLiteStore) Delete(ctx context.Context, id string) error {
	res, err := s.del.ExecContext(ctx, id)
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
