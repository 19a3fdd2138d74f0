package configs

import (
	"testing"
)

// FuzzDecodeYAML: any file content yields values or FieldErrors, never a
// panic, and a decode without errors leaves a config Validate can judge.
func FuzzDecodeYAML(f *testing.F) {
	f.Add(reference)
	f.Add([]byte("http:\n  listen: [\n"))
	f.Add([]byte("influx: {url: ftp://x, flush_interval: 10 parsecs}\nx: &a [*a]\n"))
	f.Add([]byte("ingest:\n  workers: 99999999999999999999\n  workers: ~\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Default()
		var errs []*FieldError
		decodeYAML(data, "fuzz.yaml", c, map[string]string{}, &errs)
		for _, e := range errs {
			if e.Error() == "" {
				t.Fatal("empty error message")
			}
		}
		_ = c.Validate()
	})
}
