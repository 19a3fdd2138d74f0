package dashboardapi

import (
	"embed"
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"sort"

	"github.com/gin-gonic/gin"
)

// openAPIDoc is the hand-written OpenAPI 3.0 description of every route;
// TestOpenAPICoversRoutes keeps it and the router in step.
//
// Features that add routes describe them in their own fragment under
// openapi/ ({"paths": {...}, "components": {"schemas": {...}}}), merged into
// the base document at start-up, so parallel work never edits one file.
//
//go:embed openapi.json openapi
var openAPIFiles embed.FS

var openAPIDoc = mustBuildOpenAPI()

func mustBuildOpenAPI() []byte {
	doc, err := buildOpenAPI(openAPIFiles)
	if err != nil {
		panic(err) // the embedded files are fixed at build time; TestOpenAPI* catch this first
	}
	return doc
}

func buildOpenAPI(files embed.FS) ([]byte, error) {
	raw, err := files.ReadFile("openapi.json")
	if err != nil {
		return nil, fmt.Errorf("read openapi.json: %w", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("parse openapi.json: %w", err)
	}
	frags, err := files.ReadDir("openapi")
	if err != nil {
		return nil, fmt.Errorf("list openapi fragments: %w", err)
	}
	names := make([]string, 0, len(frags))
	for _, f := range frags {
		if path.Ext(f.Name()) == ".json" {
			names = append(names, f.Name())
		}
	}
	sort.Strings(names)
	for _, name := range names {
		b, err := files.ReadFile("openapi/" + name)
		if err != nil {
			return nil, fmt.Errorf("read openapi/%s: %w", name, err)
		}
		var frag map[string]any
		if err := json.Unmarshal(b, &frag); err != nil {
			return nil, fmt.Errorf("parse openapi/%s: %w", name, err)
		}
		if err := mergeInto(doc, frag, name); err != nil {
			return nil, err
		}
	}
	return json.MarshalIndent(doc, "", "  ")
}

// mergeInto adds a fragment's objects to the document; a key defined twice
// (a path or schema) is an error rather than a silent override.
func mergeInto(dst, src map[string]any, where string) error {
	for k, v := range src {
		sub, isMap := v.(map[string]any)
		cur, exists := dst[k]
		if !exists {
			dst[k] = v
			continue
		}
		curMap, curIsMap := cur.(map[string]any)
		if !isMap || !curIsMap {
			return fmt.Errorf("openapi/%s: %q is defined twice", where, k)
		}
		if err := mergeInto(curMap, sub, where); err != nil {
			return err
		}
	}
	return nil
}

// OpenAPI returns the embedded OpenAPI 3.0 document (a copy).
func OpenAPI() []byte { return append([]byte(nil), openAPIDoc...) }

func serveOpenAPI(c *gin.Context) {
	c.Data(http.StatusOK, "application/json; charset=utf-8", openAPIDoc)
}
