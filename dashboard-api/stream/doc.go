// Package stream owns the live event stream behind GET /api/v1/stream: the
// Hub, which numbers every reading, status change and alert transition with
// a hub-wide sequence number, keeps a bounded replay buffer for resumes and
// fans events out to websocket clients; and the per-connection client, with
// one reader and one writer goroutine, a bounded queue that coalesces
// readings of a device when the client falls behind, and the disconnect of a
// client that stays behind (close code 4000).
//
// The wire protocol is described in notes/STREAM.md. The package knows
// nothing of HTTP routing or authentication: dashboard-api upgrades the
// request, checks the token and origin, and hands the connection to
// Hub.Serve with the function that builds snapshots.
package stream
