package dashboardapi

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/stretchr/testify/require"
)

func init() {
	extraAuthCases = append(extraAuthCases, func() []authCase {
		// The page and its files are public: the page asks for a token.
		return []authCase{
			{"GET", "/", nil, 0, 200},
			{"GET", "/assets/app.js", nil, 0, 200},
			{"GET", "/assets/app.css", nil, 0, 200},
		}
	})
}

func TestWebPageServed(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/", "", nil)
	require.Equal(t, 200, r.status)
	require.Contains(t, r.header.Get("Content-Type"), "text/html")
	csp := r.header.Get("Content-Security-Policy")
	require.Contains(t, csp, "default-src 'none'")
	require.Contains(t, csp, "script-src 'self'")
	require.Equal(t, "DENY", r.header.Get("X-Frame-Options"))
	require.Equal(t, "nosniff", r.header.Get("X-Content-Type-Options"))
	require.Equal(t, "no-cache", r.header.Get("Cache-Control"))
	body := string(r.body)
	// The elements the browser test and operators' tooling rely on.
	for _, id := range []string{"conn-status", "alert-list", "device-panel", "totals", "map", "token-dialog"} {
		require.Contains(t, body, `id="`+id+`"`)
	}

	for path, ct := range map[string]string{"/assets/app.js": "javascript", "/assets/app.css": "text/css"} {
		r := e.do("GET", path, "", nil)
		require.Equal(t, 200, r.status, path)
		require.Contains(t, r.header.Get("Content-Type"), ct, path)
		require.NotEmpty(t, r.body, path)
	}

	// Unknown assets are a JSON 404 like any unknown route.
	r = e.do("GET", "/assets/nope.js", "", nil)
	require.Equal(t, 404, r.status)
	code, _, _ := r.errorOf(t)
	require.Equal(t, CodeNotFound, code)
}

// TestWebPageSelfContained: nothing is loaded from another origin, and every
// asset the page names is served.
func TestWebPageSelfContained(t *testing.T) {
	e := newEnv(t)
	page := string(e.do("GET", "/", "", nil).body)
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(page, -1)
	require.NotEmpty(t, refs)
	for _, m := range refs {
		require.True(t, strings.HasPrefix(m[1], "/"), "%s is local", m[1])
		require.False(t, strings.HasPrefix(m[1], "//"), "%s is local", m[1])
		require.Equal(t, 200, e.do("GET", m[1], "", nil).status, m[1])
	}
	for name, a := range webAssets {
		s := string(a.body)
		require.NotContains(t, s, "http://", name)
		require.NotContains(t, s, "https://", name)
	}
	// No inline script or style: the CSP forbids them.
	require.NotRegexp(t, `<script>|<script [^>]*>[^<]`, page)
	require.NotContains(t, page, "<style")
	require.NotContains(t, page, " style=")
}

func TestWebETag(t *testing.T) {
	e := newEnv(t)
	etag := e.do("GET", "/assets/app.js", "", nil).header.Get("ETag")
	require.NotEmpty(t, etag)
	for _, inm := range []string{etag, "W/" + etag, `"other", ` + etag, "*"} {
		require.Equal(t, 304, getWithHeader(t, e, "/assets/app.js", "If-None-Match", inm), inm)
	}
	require.Equal(t, 200, getWithHeader(t, e, "/assets/app.js", "If-None-Match", `"other"`))
}

func getWithHeader(t *testing.T, e *env, path, k, v string) int {
	t.Helper()
	req, err := http.NewRequest("GET", e.srv.URL+path, nil)
	require.NoError(t, err)
	req.Header.Set(k, v)
	resp, err := e.srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func TestLoadWebAssetsNeedsIndex(t *testing.T) {
	_, err := loadWebAssets(fstest.MapFS{"web/app.js": {Data: []byte("x")}})
	require.ErrorContains(t, err, "index.html")
	a, err := loadWebAssets(fstest.MapFS{
		"web/index.html": {Data: []byte("<!doctype html>")},
		"web/x.css":      {Data: []byte("a{}")},
	})
	require.NoError(t, err)
	require.Contains(t, a["index.html"].contentType, "text/html")
	require.Contains(t, a["x.css"].contentType, "text/css")
	require.NotEqual(t, a["index.html"].etag, a["x.css"].etag)
}
