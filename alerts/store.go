package alerts

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// Store persists rules, alerts (pending ones too, so `for` timers survive a
// restart) and silences. The engine writes alerts behind its hot path in
// batches, and rules and silences before it applies them.
type Store interface {
	LoadRules(ctx context.Context) ([]Rule, error)
	SaveRule(ctx context.Context, r Rule) error
	DeleteRule(ctx context.Context, id string) error

	// LoadOpenAlerts returns pending, firing and acknowledged alerts.
	LoadOpenAlerts(ctx context.Context) ([]Alert, error)
	// LoadResolvedAlerts returns the newest resolved alerts, newest first.
	LoadResolvedAlerts(ctx context.Context, limit int) ([]Alert, error)
	// SaveAlerts upserts alerts by id and deletes the ids in del (pending
	// alerts whose condition went away), in one transaction.
	SaveAlerts(ctx context.Context, save []Alert, del []string) error

	LoadSilences(ctx context.Context) ([]Silence, error)
	SaveSilence(ctx context.Context, s Silence) error
	DeleteSilence(ctx context.Context, id string) error

	// LoadDeliveries returns the notifications that destinations still
	// owe (the engine's outbox), oldest first.
	LoadDeliveries(ctx context.Context) ([]Delivery, error)
	// SaveDeliveries upserts save by key and deletes the keys in del, in
	// one transaction.
	SaveDeliveries(ctx context.Context, save []Delivery, del []string) error
}

// nopStore keeps nothing: an engine without a Store forgets at restart.
type nopStore struct{}

func (nopStore) LoadRules(context.Context) ([]Rule, error)                { return nil, nil }
func (nopStore) SaveRule(context.Context, Rule) error                     { return nil }
func (nopStore) DeleteRule(context.Context, string) error                 { return nil }
func (nopStore) LoadOpenAlerts(context.Context) ([]Alert, error)          { return nil, nil }
func (nopStore) LoadResolvedAlerts(context.Context, int) ([]Alert, error) { return nil, nil }
func (nopStore) SaveAlerts(context.Context, []Alert, []string) error      { return nil }
func (nopStore) LoadSilences(context.Context) ([]Silence, error)          { return nil, nil }
func (nopStore) SaveSilence(context.Context, Silence) error               { return nil }
func (nopStore) DeleteSilence(context.Context, string) error              { return nil }
func (nopStore) LoadDeliveries(context.Context) ([]Delivery, error)       { return nil, nil }
func (nopStore) SaveDeliveries(context.Context, []Delivery, []string) error {
	return nil
}

// SQLiteStore is the Store on a SQLite database (modernc.org/sqlite, driver
// name "sqlite"). Rows keep the object as JSON beside the columns that are
// queried, so adding a field needs no migration.
type SQLiteStore struct {
	db *sql.DB
}

const sqliteSchema = `
CREATE TABLE IF NOT EXISTS alert_rules (
	id         TEXT PRIMARY KEY,
	body       TEXT NOT NULL,
	updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
	id          TEXT PRIMARY KEY,
	rule_id     TEXT NOT NULL,
	device_id   TEXT NOT NULL,
	state       TEXT NOT NULL,
	starts_at   INTEGER NOT NULL,
	resolved_at INTEGER,
	body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_state ON alerts(state);
CREATE INDEX IF NOT EXISTS alerts_resolved_at ON alerts(resolved_at);
CREATE TABLE IF NOT EXISTS silences (
	id      TEXT PRIMARY KEY,
	ends_at INTEGER NOT NULL,
	body    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_deliveries (
	key  TEXT PRIMARY KEY,
	at   INTEGER NOT NULL,
	body TEXT NOT NULL
);`

// NewSQLiteStore creates the tables it needs in db if missing. The caller
// owns db; open it with a busy timeout (e.g.
// "file:x.db?_pragma=busy_timeout(5000)&_pragma=journal_mode(wal)") since
// other packages share it.
func NewSQLiteStore(ctx context.Context, db *sql.DB) (*SQLiteStore, error) {
	if db == nil {
		return nil, fmt.Errorf("alerts sqlite store: db is nil")
	}
	if _, err := db.ExecContext(ctx, sqliteSchema); err != nil {
		return nil, fmt.Errorf("create alerts tables: %w", err)
	}
	return &SQLiteStore{db: db}, nil
}

// LoadRules returns every stored rule.
func (s *SQLiteStore) LoadRules(ctx context.Context) ([]Rule, error) {
	return loadJSON[Rule](ctx, s.db, "load alert rules", `SELECT body FROM alert_rules ORDER BY id`)
}

// SaveRule upserts a rule.
func (s *SQLiteStore) SaveRule(ctx context.Context, r Rule) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode rule %s: %w", r.ID, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO alert_rules (id, body, updated_at) VALUES (?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at`,
		r.ID, string(b), time.Now().UnixMilli())
	if err != nil {
		return fmt.Errorf("save rule %s: %w", r.ID, err)
	}
	return nil
}

// DeleteRule removes a rule; a missing one is not an error.
func (s *SQLiteStore) DeleteRule(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM alert_rules WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete rule %s: %w", id, err)
	}
	return nil
}

// LoadOpenAlerts returns alerts that are not resolved.
func (s *SQLiteStore) LoadOpenAlerts(ctx context.Context) ([]Alert, error) {
	return loadJSON[Alert](ctx, s.db, "load open alerts",
		`SELECT body FROM alerts WHERE state != 'resolved' ORDER BY starts_at`)
}

// LoadResolvedAlerts returns up to limit resolved alerts, newest first.
func (s *SQLiteStore) LoadResolvedAlerts(ctx context.Context, limit int) ([]Alert, error) {
	return loadJSON[Alert](ctx, s.db, "load resolved alerts",
		`SELECT body FROM alerts WHERE state = 'resolved' ORDER BY resolved_at DESC LIMIT ?`, limit)
}

// SaveAlerts upserts save and deletes del in one transaction.
func (s *SQLiteStore) SaveAlerts(ctx context.Context, save []Alert, del []string) error {
	return s.inTx(ctx, "save alerts", func(tx *sql.Tx) error {
		up, err := tx.PrepareContext(ctx, `INSERT INTO alerts (id, rule_id, device_id, state, starts_at, resolved_at, body)
		VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET state = excluded.state, resolved_at = excluded.resolved_at, body = excluded.body`)
		if err != nil {
			return fmt.Errorf("save alerts: prepare: %w", err)
		}
		defer up.Close()
		for _, a := range save {
			b, err := json.Marshal(a)
			if err != nil {
				return fmt.Errorf("encode alert %s: %w", a.ID, err)
			}
			var resolved any
			if a.ResolvedAt != nil {
				resolved = a.ResolvedAt.UnixMilli()
			}
			if _, err := up.ExecContext(ctx, a.ID, a.RuleID, a.DeviceID, a.State.String(),
				a.StartsAt.UnixMilli(), resolved, string(b)); err != nil {
				return fmt.Errorf("save alert %s: %w", a.ID, err)
			}
		}
		for _, id := range del {
			if _, err := tx.ExecContext(ctx, `DELETE FROM alerts WHERE id = ?`, id); err != nil {
				return fmt.Errorf("delete alert %s: %w", id, err)
			}
		}
		return nil
	})
}

// LoadSilences returns every stored silence.
func (s *SQLiteStore) LoadSilences(ctx context.Context) ([]Silence, error) {
	return loadJSON[Silence](ctx, s.db, "load silences", `SELECT body FROM silences ORDER BY ends_at`)
}

// SaveSilence upserts a silence.
func (s *SQLiteStore) SaveSilence(ctx context.Context, sl Silence) error {
	b, err := json.Marshal(sl)
	if err != nil {
		return fmt.Errorf("encode silence %s: %w", sl.ID, err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO silences (id, ends_at, body) VALUES (?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET ends_at = excluded.ends_at, body = excluded.body`,
		sl.ID, sl.End.UnixMilli(), string(b))
	if err != nil {
		return fmt.Errorf("save silence %s: %w", sl.ID, err)
	}
	return nil
}

// DeleteSilence removes a silence; a missing one is not an error.
func (s *SQLiteStore) DeleteSilence(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM silences WHERE id = ?`, id); err != nil {
		return fmt.Errorf("delete silence %s: %w", id, err)
	}
	return nil
}

// LoadDeliveries returns the undelivered notifications, oldest first.
func (s *SQLiteStore) LoadDeliveries(ctx context.Context) ([]Delivery, error) {
	return loadJSON[Delivery](ctx, s.db, "load alert deliveries", `SELECT body FROM alert_deliveries ORDER BY at, key`)
}

// SaveDeliveries upserts save and deletes del in one transaction.
func (s *SQLiteStore) SaveDeliveries(ctx context.Context, save []Delivery, del []string) error {
	return s.inTx(ctx, "save alert deliveries", func(tx *sql.Tx) error {
		for _, d := range save {
			b, err := json.Marshal(d)
			if err != nil {
				return fmt.Errorf("encode alert delivery %s: %w", d.Key, err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO alert_deliveries (key, at, body) VALUES (?, ?, ?)
			ON CONFLICT(key) DO UPDATE SET body = excluded.body`, d.Key, d.At.UnixMilli(), string(b)); err != nil {
				return fmt.Errorf("save alert delivery %s: %w", d.Key, err)
			}
		}
		for _, k := range del {
			if _, err := tx.ExecContext(ctx, `DELETE FROM alert_deliveries WHERE key = ?`, k); err != nil {
				return fmt.Errorf("delete alert delivery %s: %w", k, err)
			}
		}
		return nil
	})
}

// inTx runs fn in one transaction: committed when fn returns nil, rolled
// back otherwise. what prefixes the begin and commit errors.
func (s *SQLiteStore) inTx(ctx context.Context, what string, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", what, err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit: %w", what, err)
	}
	return nil
}

func loadJSON[T any](ctx context.Context, db *sql.DB, what, q string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var body string
		if err := rows.Scan(&body); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		var v T
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			return nil, fmt.Errorf("%s: decode: %w", what, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return out, nil
}
