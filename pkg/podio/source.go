package podio

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/memvisor/memvisor/pkg/connector"
	"github.com/memvisor/memvisor/pkg/job"
)

// SourceOptions configure a Source.
type SourceOptions struct {
	Client *Client
	AppID  int64
	// PageSize is the number of items per filter call, at most 500; 0
	// means 500.
	PageSize int
	Filters  *job.PodioFilters
	// Files and Comments hand the target what it needs to copy them: the
	// files in CarryField and image fields, and the comment count.
	Files    bool
	Comments bool
	// FieldIDs are names of the job's field_mapping and match field that
	// are Podio field ids; those fields are keyed by id.
	FieldIDs []string
	Logger   zerolog.Logger
}

// Source reads a Podio app's items in item_id order, so that an offset
// names the same item for as long as no item before it is deleted.
type Source struct {
	c       *Client
	appID   int64
	page    int
	filters map[string]any
	files   bool
	comment bool
	flat    flatOptions
	log     zerolog.Logger
}

var (
	_ connector.Source      = (*Source)(nil)
	_ connector.ItemGetter  = (*Source)(nil)
	_ connector.RateLimited = (*Source)(nil)
)

// NewSource returns a source; it makes no call.
func NewSource(o SourceOptions) *Source {
	page := o.PageSize
	if page <= 0 || page > job.PodioMaxPageSize {
		page = job.PodioMaxPageSize
	}
	s := &Source{c: o.Client, appID: o.AppID, page: page, filters: FilterMap(o.Filters), log: o.Logger,
		files: o.Files, comment: o.Comments, flat: flatOptions{images: o.Files}}
	for _, name := range o.FieldIDs {
		if n, err := strconv.ParseInt(name, 10, 64); err == nil && n > 0 {
			if s.flat.byID == nil {
				s.flat.byID = map[int64]bool{}
			}
			s.flat.byID[n] = true
		}
	}
	return s
}

// item turns an API item into the connector's, with CarryField when
// files or comments are copied.
func (s *Source) item(it *APIItem) connector.Item {
	f := flatten(it.Fields, s.flat)
	if s.files || s.comment {
		c := carried{ItemID: it.ItemID}
		if s.files {
			c.Files = it.Files
		}
		if s.comment {
			c.Comments = it.CommentCount
		}
		if b, err := json.Marshal(c); err == nil {
			f[CarryField] = b
		}
	}
	return connector.Item{ID: it.ItemID, Fields: f}
}

// FilterMap is the filters part of a filter request for the job's
// source filters; nil for none.
func FilterMap(f *job.PodioFilters) map[string]any {
	if f == nil {
		return nil
	}
	m := map[string]any{}
	rng := func(r *job.PodioDateRange) map[string]string {
		out := map[string]string{}
		if r.From != "" {
			out["from"] = r.From
		}
		if r.To != "" {
			out["to"] = r.To
		}
		return out
	}
	if f.CreatedOn != nil {
		m["created_on"] = rng(f.CreatedOn)
	}
	if f.LastEventOn != nil {
		m["last_event_on"] = rng(f.LastEventOn)
	}
	if len(f.Tags) > 0 {
		m["tags"] = f.Tags
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

// Read returns up to limit items from cur.Index, a page of at most 500 at
// a time.
func (s *Source) Read(ctx context.Context, cur connector.Cursor, limit int) ([]connector.Record, connector.Cursor, error) {
	var recs []connector.Record
	next := cur
	for len(recs) < limit {
		n := min(limit-len(recs), s.page)
		ans, err := s.c.Filter(ctx, s.appID, FilterRequest{
			SortBy: "item_id", SortDesc: false, Limit: n, Offset: next.Index, Filters: s.filters,
		})
		if err != nil {
			return recs, next, err
		}
		for i := range ans.Items {
			recs = append(recs, connector.Record{Pos: next, Item: s.item(&ans.Items[i])})
			next.Index++
		}
		if len(ans.Items) < n {
			break
		}
	}
	if len(recs) == 0 {
		return nil, cur, io.EOF
	}
	return recs, next, nil
}

// Total counts the items: GET /item/app/{app_id}/count, or, with
// filters, the filtered count of a one-item filter call.
func (s *Source) Total(ctx context.Context) (int64, bool, error) {
	if s.filters == nil {
		n, err := s.c.Count(ctx, s.appID)
		return n, err == nil, err
	}
	ans, err := s.c.Filter(ctx, s.appID, FilterRequest{SortBy: "item_id", Limit: 1, Filters: s.filters})
	if err != nil {
		return 0, false, err
	}
	return ans.Filtered, true, nil
}

// GetItem reads one item again, for --retry-failed.
func (s *Source) GetItem(ctx context.Context, id int64) (connector.Item, error) {
	it, err := s.c.GetItem(ctx, id)
	if err != nil {
		return connector.Item{}, err
	}
	if it.App.AppID != 0 && it.App.AppID != s.appID {
		return connector.Item{}, fmt.Errorf("read podio item %d: it is in app %d, not the source app %d", id, it.App.AppID, s.appID)
	}
	return s.item(it), nil
}

// Labels maps the source app's field external ids to their labels, for
// a Podio target's match by label.
func (s *Source) Labels(ctx context.Context) (map[string]string, error) {
	def, err := s.c.GetApp(ctx, s.appID)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(def.Fields))
	for _, f := range def.Fields {
		out[f.ExternalID] = f.Label
	}
	return out, nil
}

// RateLimitedUntil reports when the source's rate limit lifts.
func (s *Source) RateLimitedUntil() time.Time { return s.c.gate.Until() }

// Close releases the client's connections.
func (s *Source) Close() error {
	s.c.Close()
	return nil
}
