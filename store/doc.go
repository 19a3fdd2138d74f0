// Package store owns infrawatch's path to InfluxDB: the line protocol
// encoder used on the ingest hot path (AppendPoint, Line), and Store, which
// writes encoded batches and runs Flux queries over the v2 HTTP API of
// InfluxDB 2.x or of OSS 1.8 (where it also creates the database).
//
// Writes are single attempts that fail with a typed *WriteError; the caller
// (ingest) owns retries, using errors.Is(err, ErrRetryable) and Backoff.
package store
