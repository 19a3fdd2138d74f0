package configs

import "errors"

// ErrUnknownKey is matched (errors.Is) by the error about a section, key or
// INFRAWATCH_* environment variable that does not exist.
var ErrUnknownKey = errors.New("unknown key")

// FieldError is one configuration problem. Load returns every FieldError it
// finds joined with errors.Join; use errors.As on the joined error's
// Unwrap() []error to inspect them one by one.
type FieldError struct {
	// Source says where the offending value came from: "FILE:LINE",
	// "env INFRAWATCH_...", or "default". Empty from Validate, which only
	// sees the merged values.
	Source string
	// Key is the dotted key, e.g. "influx.flush_interval"; empty for errors
	// about the file as a whole.
	Key string
	// Msg is the human message, starting with the key.
	Msg string
	// Err is the underlying cause, if any (ErrUnknownKey, an fs error).
	Err error
}

// Error renders "SOURCE: KEY: problem".
func (e *FieldError) Error() string {
	if e.Source == "" {
		return e.Msg
	}
	return e.Source + ": " + e.Msg
}

// Unwrap returns the underlying cause.
func (e *FieldError) Unwrap() error { return e.Err }

// joinFieldErrors joins errs for errors.Join, or returns nil when empty.
func joinFieldErrors(errs []*FieldError) error {
	if len(errs) == 0 {
		return nil
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}

// joinKey appends name to a dotted key prefix.
func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}
