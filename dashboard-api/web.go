package dashboardapi

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"sort"
	"strings"

	"github.com/gin-gonic/gin"
)

// webFiles is the operations page: plain HTML, CSS and JS, no build step and
// nothing loaded from elsewhere, so the page works on an isolated network.
//
//go:embed web
var webFiles embed.FS

// webContentSecurityPolicy allows the page only its own assets and API: no
// inline script, no third-party origin. 'self' in connect-src covers the
// same-origin websocket (ws/wss) in current browsers.
const webContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// webAsset is one embedded file ready to serve.
type webAsset struct {
	body        []byte
	contentType string
	etag        string
}

// webAssets are the files of the page, keyed by their name under web/.
var webAssets = mustLoadWebAssets()

func mustLoadWebAssets() map[string]webAsset {
	assets, err := loadWebAssets(webFiles)
	if err != nil {
		panic(err) // the embedded files are fixed at build time; TestWeb* catch this first
	}
	return assets
}

func loadWebAssets(files fs.FS) (map[string]webAsset, error) {
	entries, err := fs.ReadDir(files, "web")
	if err != nil {
		return nil, fmt.Errorf("list web assets: %w", err)
	}
	out := make(map[string]webAsset, len(entries))
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := fs.ReadFile(files, "web/"+e.Name())
		if err != nil {
			return nil, fmt.Errorf("read web/%s: %w", e.Name(), err)
		}
		ct := mime.TypeByExtension(path.Ext(e.Name()))
		if ct == "" {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(b)
		out[e.Name()] = webAsset{body: b, contentType: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
	}
	if _, ok := out["index.html"]; !ok {
		return nil, fmt.Errorf("web/index.html is missing")
	}
	return out, nil
}

// registerWeb serves the operations page at GET / and its files at
// GET /assets/<name>. Each file has its own fixed route (not a wildcard) so
// the route list, the OpenAPI document and the auth matrix name every one.
// The page is public: it holds no data and asks the operator for a token.
func registerWeb(e *gin.Engine) {
	e.GET("/", serveWebAsset("index.html"))
	names := make([]string, 0, len(webAssets))
	for name := range webAssets {
		if name != "index.html" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		e.GET("/assets/"+name, serveWebAsset(name))
	}
}

func serveWebAsset(name string) gin.HandlerFunc {
	a := webAssets[name]
	return func(c *gin.Context) {
		h := c.Writer.Header()
		// no-cache: revalidate every load (cheap with the ETag), so an
		// upgraded binary never runs with a stale script.
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		h.Set("X-Content-Type-Options", "nosniff")
		if strings.HasPrefix(a.contentType, "text/html") {
			h.Set("Content-Security-Policy", webContentSecurityPolicy)
			h.Set("X-Frame-Options", "DENY")
			h.Set("Referrer-Policy", "no-referrer")
		}
		if etagMatches(c.GetHeader("If-None-Match"), a.etag) {
			c.Status(http.StatusNotModified)
			return
		}
		c.Data(http.StatusOK, a.contentType, a.body)
	}
}

// etagMatches implements If-None-Match for strong and weak tags and "*".
func etagMatches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}
