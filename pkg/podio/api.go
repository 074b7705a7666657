package podio

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/memvisor/memvisor/pkg/connector"
)

// Option is a category or question option.
type Option struct {
	ID     int64  `json:"id"`
	Text   string `json:"text"`
	Status string `json:"status"`
}

// FieldDef is one field of an app.
type FieldDef struct {
	FieldID        int64
	ExternalID     string
	Type           string
	Label          string
	Status         string
	Options        []Option
	Multiple       bool
	ReferencedApps []int64
}

// AppDef is an app's definition.
type AppDef struct {
	AppID  int64
	Name   string
	Fields []FieldDef
}

type apiApp struct {
	AppID  int64 `json:"app_id"`
	Config struct {
		Name string `json:"name"`
	} `json:"config"`
	Fields []struct {
		FieldID    int64  `json:"field_id"`
		ExternalID string `json:"external_id"`
		Type       string `json:"type"`
		Label      string `json:"label"`
		Status     string `json:"status"`
		Config     struct {
			Label    string `json:"label"`
			Settings struct {
				Options        []Option `json:"options"`
				Multiple       bool     `json:"multiple"`
				ReferencedApps []struct {
					AppID int64 `json:"app_id"`
				} `json:"referenced_apps"`
			} `json:"settings"`
		} `json:"config"`
	} `json:"fields"`
}

// GetApp reads an app's fields: GET /app/{app_id}.
func (c *Client) GetApp(ctx context.Context, appID int64) (*AppDef, error) {
	var a apiApp
	if _, err := c.do(ctx, request{method: http.MethodGet, path: fmt.Sprintf("/app/%d", appID)}, &a); err != nil {
		return nil, fmt.Errorf("read podio app %d: %w", appID, err)
	}
	def := &AppDef{AppID: a.AppID, Name: a.Config.Name}
	for _, f := range a.Fields {
		if f.Status != "" && f.Status != "active" {
			continue
		}
		fd := FieldDef{FieldID: f.FieldID, ExternalID: f.ExternalID, Type: f.Type, Label: f.Label,
			Status: f.Status, Options: f.Config.Settings.Options, Multiple: f.Config.Settings.Multiple}
		if fd.Label == "" {
			fd.Label = f.Config.Label
		}
		for _, r := range f.Config.Settings.ReferencedApps {
			fd.ReferencedApps = append(fd.ReferencedApps, r.AppID)
		}
		def.Fields = append(def.Fields, fd)
	}
	return def, nil
}

// APIItem is an item as the API returns it.
type APIItem struct {
	ItemID      int64      `json:"item_id"`
	ExternalID  *string    `json:"external_id"`
	Title       string     `json:"title"`
	CreatedOn   string     `json:"created_on"`
	LastEventOn string     `json:"last_event_on"`
	Tags        []string   `json:"tags"`
	Fields      []APIField `json:"fields"`
	// Files are the item's attachments; CommentCount its comments.
	Files        []FileRef `json:"files"`
	CommentCount int       `json:"comment_count"`
	App          struct {
		AppID int64 `json:"app_id"`
	} `json:"app"`
}

// APIField is one field of an item, with its values in Podio's form.
type APIField struct {
	FieldID    int64             `json:"field_id"`
	ExternalID string            `json:"external_id"`
	Type       string            `json:"type"`
	Label      string            `json:"label"`
	Values     []json.RawMessage `json:"values"`
}

// FilterRequest is the body of POST /item/app/{app_id}/filter/.
type FilterRequest struct {
	SortBy   string         `json:"sort_by"`
	SortDesc bool           `json:"sort_desc"`
	Limit    int            `json:"limit"`
	Offset   int64          `json:"offset"`
	Filters  map[string]any `json:"filters,omitempty"`
}

// FilterAnswer is its answer.
type FilterAnswer struct {
	Total    int64     `json:"total"`
	Filtered int64     `json:"filtered"`
	Items    []APIItem `json:"items"`
}

// Filter lists items: POST /item/app/{app_id}/filter/.
func (c *Client) Filter(ctx context.Context, appID int64, fr FilterRequest) (*FilterAnswer, error) {
	var ans FilterAnswer
	path := fmt.Sprintf("/item/app/%d/filter/", appID)
	if _, err := c.do(ctx, request{method: http.MethodPost, path: path, body: fr, limited: true}, &ans); err != nil {
		return nil, fmt.Errorf("filter items of podio app %d at offset %d: %w", appID, fr.Offset, err)
	}
	return &ans, nil
}

// Count returns the number of items in an app: GET /item/app/{app_id}/count.
func (c *Client) Count(ctx context.Context, appID int64) (int64, error) {
	var ans struct {
		Count int64 `json:"count"`
	}
	if _, err := c.do(ctx, request{method: http.MethodGet, path: fmt.Sprintf("/item/app/%d/count", appID)}, &ans); err != nil {
		return 0, fmt.Errorf("count items of podio app %d: %w", appID, err)
	}
	return ans.Count, nil
}

// GetItem reads an item: GET /item/{item_id}. A missing item is
// connector.ErrNotFound.
func (c *Client) GetItem(ctx context.Context, id int64) (*APIItem, error) {
	var it APIItem
	if _, err := c.do(ctx, request{method: http.MethodGet, path: fmt.Sprintf("/item/%d", id)}, &it); err != nil {
		if isNotFound(err) {
			return nil, fmt.Errorf("read podio item %d: %w", id, connector.ErrNotFound)
		}
		return nil, fmt.Errorf("read podio item %d: %w", id, err)
	}
	return &it, nil
}

// ItemByExternalID finds an item by its external id: GET
// /item/app/{app_id}/external_id/{external_id}. found is false for a 404.
func (c *Client) ItemByExternalID(ctx context.Context, appID int64, ext string) (*APIItem, bool, error) {
	var it APIItem
	path := fmt.Sprintf("/item/app/%d/external_id/%s", appID, url.PathEscape(ext))
	if _, err := c.do(ctx, request{method: http.MethodGet, path: path}, &it); err != nil {
		if isNotFound(err) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("look up podio item with external_id %q in app %d: %w", ext, appID, err)
	}
	return &it, true, nil
}

// WriteOptions are the query of a write.
type WriteOptions struct {
	Silent bool
	Hook   bool
}

func (w WriteOptions) query() url.Values {
	return url.Values{"silent": {strconv.FormatBool(w.Silent)}, "hook": {strconv.FormatBool(w.Hook)}}
}

// ItemWrite is the body of a create or an update.
type ItemWrite struct {
	ExternalID string         `json:"external_id,omitempty"`
	Fields     map[string]any `json:"fields,omitempty"`
	// FileIDs are uploaded files to attach, with the write itself.
	FileIDs []int64 `json:"file_ids,omitempty"`
}

// createOnce posts a new item once: POST /item/app/{app_id}/. A failure
// whose outcome is unknown is an *uncertainError.
func (c *Client) createOnce(ctx context.Context, appID int64, w ItemWrite, o WriteOptions) (int64, error) {
	var ans struct {
		ItemID int64 `json:"item_id"`
	}
	r := request{method: http.MethodPost, path: fmt.Sprintf("/item/app/%d/", appID), query: o.query(), body: w, once: true}
	if _, err := c.do(ctx, r, &ans); err != nil {
		return 0, err
	}
	if ans.ItemID <= 0 {
		return 0, &uncertainError{err: networkError(fmt.Errorf("create item in podio app %d: the answer has no item_id", appID))}
	}
	return ans.ItemID, nil
}

// UpdateItem changes an item's fields: PUT /item/{item_id}. An update is
// idempotent, so a lost answer is simply retried; 200 and 204 are both
// success.
func (c *Client) UpdateItem(ctx context.Context, id int64, w ItemWrite, o WriteOptions) error {
	r := request{method: http.MethodPut, path: fmt.Sprintf("/item/%d", id), query: o.query(), body: w}
	if _, err := c.do(ctx, r, nil); err != nil {
		return fmt.Errorf("update podio item %d: %w", id, err)
	}
	return nil
}
