package dashboardapi

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"
	"github.com/infrawatch/infrawatch/auth"
	"github.com/stretchr/testify/require"
)

type oaParam struct {
	Name     string `json:"name"`
	In       string `json:"in"`
	Required bool   `json:"required"`
}

type oaOperation struct {
	Summary     string                     `json:"summary"`
	OperationID string                     `json:"operationId"`
	Parameters  []oaParam                  `json:"parameters"`
	RequestBody json.RawMessage            `json:"requestBody"`
	Responses   map[string]json.RawMessage `json:"responses"`
	Security    *[]map[string][]string     `json:"security"`
}

type oaDoc struct {
	OpenAPI string                            `json:"openapi"`
	Paths   map[string]map[string]oaOperation `json:"paths"`
}

var ginParam = regexp.MustCompile(`[:*]([A-Za-z0-9_]+)`)

func loadDoc(t *testing.T) oaDoc {
	t.Helper()
	var d oaDoc
	require.NoError(t, json.Unmarshal(OpenAPI(), &d))
	require.True(t, strings.HasPrefix(d.OpenAPI, "3.0."), "OpenAPI 3.0")
	return d
}

// routeDiff compares the router with the document: routes missing from the
// document, and documented routes that are not registered.
func routeDiff(routes gin.RoutesInfo, doc oaDoc) (missing, extra []string) {
	registered := map[string]bool{}
	for _, r := range routes {
		registered[r.Method+" "+ginParam.ReplaceAllString(r.Path, "{$1}")] = true
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	for k := range registered {
		if !documented[k] {
			missing = append(missing, k)
		}
	}
	for k := range documented {
		if !registered[k] {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	return missing, extra
}

// TestOpenAPICoversRoutes fails when a registered route is missing from the
// document, or the document describes a route that does not exist.
func TestOpenAPICoversRoutes(t *testing.T) {
	e := newEnv(t)
	doc := loadDoc(t)
	missing, extra := routeDiff(e.api.Engine().Routes(), doc)
	require.Empty(t, missing, "routes missing from openapi.json")
	require.Empty(t, extra, "openapi.json describes routes that are not registered")

	// The check itself notices both directions.
	e.api.API().POST("/probe/:id/ack", func(*gin.Context) {})
	delete(doc.Paths, "/api/v1/state")
	missing, extra = routeDiff(e.api.Engine().Routes(), doc)
	require.Equal(t, []string{"GET /api/v1/state", "POST /api/v1/probe/{id}/ack"}, missing)
	require.Empty(t, extra)
	doc.Paths["/api/v1/ghost"] = map[string]oaOperation{"get": {}}
	_, extra = routeDiff(e.api.Engine().Routes(), doc)
	require.Equal(t, []string{"GET /api/v1/ghost"}, extra)
}

// TestOpenAPIOperations checks each operation is complete and that its
// declared security matches what the server enforces.
func TestOpenAPIOperations(t *testing.T) {
	// One unauthenticated request per secured operation: more than the
	// default failed-authentication burst of one client.
	e := newEnv(t, func(o *Options) {
		o.AuthFailures = auth.NewFailureLimiter(auth.FailureLimiterOptions{Burst: 1000})
	})
	doc := loadDoc(t)
	pathParam := regexp.MustCompile(`\{([^}]+)\}`)
	ids := map[string]bool{}
	for path, ops := range doc.Paths {
		for method, op := range ops {
			name := strings.ToUpper(method) + " " + path
			require.NotEmpty(t, op.Summary, name)
			require.NotEmpty(t, op.OperationID, name)
			require.False(t, ids[op.OperationID], "duplicate operationId %s", op.OperationID)
			ids[op.OperationID] = true
			require.NotEmpty(t, op.Responses, name)
			hasSuccess := false
			for code := range op.Responses {
				if strings.HasPrefix(code, "2") || code == "101" { // 101: a websocket upgrade
					hasSuccess = true
				}
			}
			require.True(t, hasSuccess, "%s documents a success response", name)

			declared := map[string]bool{}
			for _, p := range op.Parameters {
				if p.In == "path" {
					require.True(t, p.Required, "%s: path parameter %s is required", name, p.Name)
					declared[p.Name] = true
				}
			}
			for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
				require.True(t, declared[m[1]], "%s declares path parameter %s", name, m[1])
			}
			if method == "post" || method == "put" {
				require.NotEmpty(t, op.RequestBody, "%s documents its body", name)
			}

			// Security as documented is security as enforced.
			require.NotNil(t, op.Security, "%s states its security explicitly", name)
			secured := len(*op.Security) > 0
			urlPath := pathParam.ReplaceAllString(path, "x")
			req, err := http.NewRequest(strings.ToUpper(method), e.srv.URL+urlPath, nil)
			require.NoError(t, err)
			resp, err := e.srv.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			if secured {
				require.Equal(t, 401, resp.StatusCode, "%s without a token", name)
				require.Contains(t, op.Responses, "401", name)
				require.Contains(t, op.Responses, "403", name)
			} else {
				require.NotEqual(t, 401, resp.StatusCode, "%s is documented as public", name)
			}
		}
	}
}

// TestOpenAPIRefsResolve catches a $ref to a component that is not there.
func TestOpenAPIRefsResolve(t *testing.T) {
	var root map[string]any
	require.NoError(t, json.Unmarshal(OpenAPI(), &root))
	var walk func(v any)
	n := 0
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				n++
				require.True(t, strings.HasPrefix(ref, "#/"), ref)
				var cur any = root
				for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
					m, ok := cur.(map[string]any)
					require.True(t, ok, "ref %s", ref)
					cur, ok = m[part]
					require.True(t, ok, "ref %s does not resolve", ref)
				}
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	walk(root)
	require.Positive(t, n)
}

func TestOpenAPIServed(t *testing.T) {
	e := newEnv(t)
	r := e.do("GET", "/api/v1/openapi.json", "", nil)
	require.Equal(t, 200, r.status)
	require.Contains(t, r.header.Get("Content-Type"), "application/json")
	require.JSONEq(t, string(OpenAPI()), string(r.body))
}
