package podioemu

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

type comment struct {
	id         int64
	value      string
	externalID string
	createdOn  time.Time
	createdBy  string
	files      []int64
}

// Comment is a comment to seed on an item.
type Comment struct {
	Value      string `json:"value"`
	ExternalID string `json:"external_id,omitempty"`
}

// ItemComments returns an item's comments in the order they were made.
func (s *Server) ItemComments(itemID int64) []Comment {
	s.mu.Lock()
	defer s.mu.Unlock()
	it := s.items[itemID]
	if it == nil {
		return nil
	}
	out := make([]Comment, 0, len(it.comments))
	for _, c := range it.comments {
		out = append(out, Comment{Value: c.value, ExternalID: c.externalID})
	}
	return out
}

func (s *Server) addCommentLocked(it *item, c Comment, by string) *comment {
	s.nextComment++
	nc := &comment{id: s.nextComment, value: c.Value, externalID: c.ExternalID,
		createdOn: s.now().UTC().Truncate(time.Second), createdBy: by}
	it.comments = append(it.comments, nc)
	return nc
}

func (s *Server) renderComment(c *comment) map[string]any {
	var ext any
	if c.externalID != "" {
		ext = c.externalID
	}
	files := make([]map[string]any, 0, len(c.files))
	for _, id := range c.files {
		if f := s.files[id]; f != nil {
			files = append(files, s.renderFile(f))
		}
	}
	return map[string]any{
		"comment_id": c.id, "value": c.value, "rich_value": c.value, "external_id": ext,
		"created_on": c.createdOn.Format(podioTime),
		"created_by": map[string]any{"type": "user", "name": c.createdBy},
		"files":      files,
	}
}

// handleComments serves GET /comment/item/{item_id}/ with limit (default
// 100, at most 500) and offset, oldest first.
func (s *Server) handleComments(c *call) (int, any) {
	it, _, st, b := s.itemOf(c)
	if it == nil {
		return st, b
	}
	q := c.r.URL.Query()
	limit, offset := 100, 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 500 {
			return fail(http.StatusBadRequest, "invalid_value", "limit must be between 1 and 500")
		}
		limit = n
	}
	if v := q.Get("offset"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fail(http.StatusBadRequest, "invalid_value", "offset must not be negative")
		}
		offset = n
	}
	out := []map[string]any{}
	for i := offset; i < len(it.comments) && len(out) < limit; i++ {
		out = append(out, s.renderComment(it.comments[i]))
	}
	return http.StatusOK, out
}

// handleAddComment serves POST /comment/item/{item_id}/ with
// {"value","external_id","file_ids"} and the silent and hook query.
func (s *Server) handleAddComment(c *call) (int, any) {
	it, _, st, b := s.itemOf(c)
	if it == nil {
		return st, b
	}
	var body struct {
		Value      string  `json:"value"`
		ExternalID string  `json:"external_id"`
		FileIDs    []int64 `json:"file_ids"`
	}
	if json.Unmarshal(c.body, &body) != nil || body.Value == "" {
		return fail(http.StatusBadRequest, "invalid_value", `the body must be {"value": "..."} with a value`)
	}
	for _, id := range body.FileIDs {
		if s.files[id] == nil {
			return fail(http.StatusBadRequest, "invalid_value", fmt.Sprintf("file %d does not exist", id))
		}
	}
	nc := s.addCommentLocked(it, Comment{Value: body.Value, ExternalID: body.ExternalID}, c.tok.identity)
	nc.files = body.FileIDs
	s.stats.Comments++
	s.noteWrite(c)
	return http.StatusOK, map[string]any{"comment_id": nc.id, "value": nc.value, "external_id": body.ExternalID}
}
