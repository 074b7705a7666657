package podio

import (
	"context"
	"encoding/json"
)

// Unflatten converts one flat value for a target field, with references
// resolved by resolve, for the table tests.
func Unflatten(f *FieldDef, raw json.RawMessage, resolve func(int64) (int64, bool)) (any, []string, error) {
	conv := &conversion{fields: map[string]any{}}
	v, err := unflatten(context.Background(), f, raw, func(_ context.Context, id int64) (int64, bool, error) {
		t, ok := resolve(id)
		return t, ok, nil
	}, conv)
	return v, conv.dropped, err
}

// ParseAPIError reads an error answer, for the table tests.
func ParseAPIError(status int, body []byte) *APIError { return parseAPIError(status, body) }
