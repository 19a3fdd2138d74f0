// Package stream owns the live event stream behind GET /api/v1/stream: the
// Hub, which numbers every reading, status change and alert transition with
// a hub-wide sequence number, keeps a bounded replay buffer for resumes and
// fans events out to websocket clients; and the per-connection client, with
// one reader and one writer goroutine.
//
// Ingest never waits for the stream: Consume appends to a bounded intake
// (dropping and counting when it is full). One fan-out goroutine, at most
// every FlushInterval, hands each subscription group (clients with the
// same filter) one shared chunk, coalesced once when the interval brought
// more than CoalesceAbove events. When that would hand out more than
// MaxSendRate allows, clients take turns (the stride): each flush serves a
// slice of them, and a client's turn carries one coalesced window of
// everything since its previous turn (the newest reading of each device),
// so writes are spread over time instead of one burst to every client.
// Each writer sends everything queued since its last write in one write,
// as frames the hub builds itself (one batch message per write for "batch"
// clients), built once per shared chunk from the events' encodings. An
// event is encoded once, by the first writer (or replay) that sends it:
// one that no client gets is never encoded. A client that stays behind is
// coalesced further and, after MaxLag or past QueueSize, closed with 4000.
//
// The wire protocol is described in notes/STREAM.md. The package knows
// nothing of HTTP routing or authentication: dashboard-api upgrades the
// request, checks the token and origin, and hands the connection to
// Hub.Serve with the function that builds snapshots.
package stream
