package postgres

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/memvisor/memvisor/pkg/job"
	"github.com/memvisor/memvisor/pkg/service/registry"
)

// QuotaKey returns the quota key of one set of Podio credentials: a
// SHA-256 of the API base URL, the client id and the principal the quota
// belongs to (the user name of the password flow, or the app id of the
// app flow), as Podio counts its limits per user per API key. The key
// identifies the credentials without holding them; never pass a secret
// (a password, a token) as the principal.
func QuotaKey(apiURL, clientID, principal string) string {
	h := sha256.New()
	for _, part := range []string{"memvisor-podio-quota-v1", strings.TrimRight(apiURL, "/"), clientID, principal} {
		fmt.Fprintf(h, "%d:%s;", len(part), part)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// PrincipalFunc tells, for a Podio endpoint of a job, the client id and
// the principal its calls count against. The service resolves them from
// the credentials it holds for the endpoint (the user name behind
// username_env, the app id of the app flow); they are hashed, never
// stored.
type PrincipalFunc func(p job.Podio) (clientID, principal string, err error)

// EndpointQuotaKey returns the quota key of a job's endpoint, or "" when
// it is not a Podio endpoint.
func EndpointQuotaKey(e job.Endpoint, resolve PrincipalFunc) (string, error) {
	if e.Type != job.TypePodio || e.Podio == nil {
		return "", nil
	}
	api := e.APIURL
	if api == "" {
		api = job.DefaultPodioAPIURL
	}
	clientID, principal, err := resolve(*e.Podio)
	if err != nil {
		return "", fmt.Errorf("podio credentials: %w", err)
	}
	return QuotaKey(api, clientID, principal), nil
}

// PodioQuotaKeys returns an Options.QuotaKeys that reads a job's spec and
// gives a quota key for each of its Podio endpoints, source and target.
func PodioQuotaKeys(resolve PrincipalFunc) func(registry.Record) ([]string, error) {
	return func(rec registry.Record) ([]string, error) {
		var spec job.Spec
		if err := json.Unmarshal(rec.Spec, &spec); err != nil {
			return nil, fmt.Errorf("read the spec of job %s: %w", rec.ID, err)
		}
		var keys []string
		for _, side := range []struct {
			name string
			e    job.Endpoint
		}{{"source", spec.Source}, {"target", spec.Target}} {
			key, err := EndpointQuotaKey(side.e, resolve)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", side.name, err)
			}
			if key != "" {
				keys = append(keys, key)
			}
		}
		return keys, nil
	}
}
