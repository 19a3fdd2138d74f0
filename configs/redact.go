package configs

import (
	"net/url"
	"reflect"
)

// Redaction is the text that replaces a secret in Redacted.
const Redaction = "REDACTED"

// Redacted returns a copy of c safe to log: fields tagged secret:"true"
// (tokens, passwords) read "REDACTED" when set, and URLs tagged
// secret:"userinfo" have their password replaced. Empty secrets stay empty so
// the log still shows that none is set.
func (c *Config) Redacted() Config {
	r := *c
	deepCopySlices(reflect.ValueOf(&r).Elem())
	redact(reflect.ValueOf(&r).Elem())
	return r
}

func redact(v reflect.Value) {
	t := v.Type()
	for i := range t.NumField() {
		f, fv := t.Field(i), v.Field(i)
		switch {
		case fv.Kind() == reflect.Struct:
			redact(fv)
		case fv.Kind() != reflect.String || fv.String() == "":
		case f.Tag.Get("secret") == "true":
			fv.SetString(Redaction)
		case f.Tag.Get("secret") == "userinfo":
			fv.SetString(redactURL(fv.String()))
		}
	}
}

// redactURL replaces the password in a URL's userinfo; anything that does not
// parse is replaced whole, since it may hold a secret in an odd place.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return Redaction
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), Redaction)
	}
	return u.String()
}
