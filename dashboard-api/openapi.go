package dashboardapi

import (
	_ "embed"
	"net/http"

	"github.com/gin-gonic/gin"
)

// openAPIDoc is the hand-written OpenAPI 3.0 description of every route;
// TestOpenAPICoversRoutes keeps it and the router in step.
//
//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the embedded OpenAPI 3.0 document (a copy).
func OpenAPI() []byte { return append([]byte(nil), openAPIDoc...) }

func serveOpenAPI(c *gin.Context) {
	c.Data(http.StatusOK, "application/json; charset=utf-8", openAPIDoc)
}
