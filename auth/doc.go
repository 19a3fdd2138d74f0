// Package auth owns API tokens and roles: who may call the HTTP API, the
// websocket stream and (as MQTT user "token") subscribe to alerts.
//
// Tokens are random secrets shown once at creation and stored only as
// SHA-256 hashes; Verify answers from memory. The admin token from the
// configuration is a bootstrap identity that is never stored.
// FailureLimiter slows down guessing: a token bucket per client that only
// failed logins drain, used by the API and the embedded broker.
package auth
