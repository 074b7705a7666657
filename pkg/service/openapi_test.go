package service_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/memvisor/memvisor/pkg/service"
)

// TestOpenAPIMatchesRoutes checks that every registered route is in the
// document, and every operation of the document is registered, with the
// same security.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	s := start(t, t.TempDir(), serverOpts{token: "route-test-token"})
	var doc struct {
		OpenAPI string `json:"openapi"`
		Paths   map[string]map[string]struct {
			Security []map[string][]string `json:"security"`
		} `json:"paths"`
	}
	r := s.doAuth("GET", "/v1/openapi.json", nil, "")
	if r.code != http.StatusOK {
		t.Fatalf("GET /v1/openapi.json: %d", r.code)
	}
	if !bytes.Equal(r.body, service.OpenAPI()) {
		t.Error("served document differs from the embedded one")
	}
	r.json(t, &doc)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi version %q", doc.OpenAPI)
	}
	var registered, documented []string
	for _, rt := range s.routes {
		path := strings.TrimSuffix(rt.Pattern, "{$}")
		if path == "" {
			path = "/"
		}
		key := rt.Method + " " + path
		registered = append(registered, key)
		op, ok := doc.Paths[path][strings.ToLower(rt.Method)]
		if !ok {
			t.Errorf("route %s is not in the OpenAPI document", key)
			continue
		}
		if got := len(op.Security) > 0; got != rt.Auth {
			t.Errorf("%s: document says auth=%v, route has auth=%v", key, got, rt.Auth)
		}
	}
	for path, ops := range doc.Paths {
		for method := range ops {
			key := strings.ToUpper(method) + " " + path
			documented = append(documented, key)
			if !slices.Contains(registered, key) {
				t.Errorf("document has %s, which is not registered", key)
			}
		}
	}
	if len(registered) < 17 || len(documented) != len(registered) {
		t.Errorf("registered %d routes, documented %d", len(registered), len(documented))
	}
	// The document is valid JSON with its schemas referenced correctly.
	var tree map[string]any
	if err := json.Unmarshal(service.OpenAPI(), &tree); err != nil {
		t.Fatal(err)
	}
	comps := tree["components"].(map[string]any)
	for _, ref := range refs(tree) {
		parts := strings.Split(strings.TrimPrefix(ref, "#/components/"), "/")
		group, ok := comps[parts[0]].(map[string]any)
		if !ok || group[parts[1]] == nil {
			t.Errorf("dangling $ref %s", ref)
		}
	}
}

func refs(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, vv := range x {
			if s, ok := vv.(string); ok && k == "$ref" {
				out = append(out, s)
			}
			out = append(out, refs(vv)...)
		}
	case []any:
		for _, vv := range x {
			out = append(out, refs(vv)...)
		}
	}
	return out
}
