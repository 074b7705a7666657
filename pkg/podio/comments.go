package podio

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Comment is a comment on an item.
type Comment struct {
	CommentID  int64   `json:"comment_id"`
	Value      string  `json:"value"`
	ExternalID *string `json:"external_id"`
	CreatedOn  string  `json:"created_on"`
	CreatedBy  struct {
		Name string `json:"name"`
	} `json:"created_by"`
}

// commentPage is the page size of GET /comment/item/{id}/.
const commentPage = 100

// Comments calls fn for each comment on an item, oldest first: GET
// /comment/item/{item_id}/, a page at a time.
func (c *Client) Comments(ctx context.Context, itemID int64, fn func(Comment) error) error {
	for off := 0; ; off += commentPage {
		var page []Comment
		q := url.Values{"limit": {strconv.Itoa(commentPage)}, "offset": {strconv.Itoa(off)}}
		r := request{method: http.MethodGet, path: fmt.Sprintf("/comment/item/%d/", itemID), query: q}
		if _, err := c.do(ctx, r, &page); err != nil {
			return fmt.Errorf("read comments of podio item %d: %w", itemID, err)
		}
		for _, cm := range page {
			if err := fn(cm); err != nil {
				return err
			}
		}
		if len(page) < commentPage {
			return nil
		}
	}
}

// AddComment posts a comment on an item: POST /comment/item/{item_id}/
// with the write's silent and hook settings. externalID marks it, so
// that it is recognized later.
func (c *Client) AddComment(ctx context.Context, itemID int64, value, externalID string, o WriteOptions) (int64, error) {
	var ans struct {
		CommentID int64 `json:"comment_id"`
	}
	q := o.query()
	q.Set("alert_invite", "false")
	r := request{method: http.MethodPost, path: fmt.Sprintf("/comment/item/%d/", itemID), query: q,
		body: map[string]any{"value": value, "external_id": externalID}, once: true}
	if _, err := c.do(ctx, r, &ans); err != nil {
		return 0, fmt.Errorf("comment on podio item %d: %w", itemID, err)
	}
	return ans.CommentID, nil
}

// commentMark is the external_id of a copied comment: the source comment
// id, so that a copy already made is recognized and not made again.
func commentMark(sourceCommentID int64) string {
	return "memvisor-comment-" + strconv.FormatInt(sourceCommentID, 10)
}

// copyComments copies the comments of source item src onto target item
// dst, each once: the target's comments are read first, and a source
// comment whose mark is there is not posted again. A post whose answer
// is lost is checked the same way before it is sent again.
func (t *Target) copyComments(ctx context.Context, src, dst int64) error {
	have := map[string]bool{}
	if err := t.c.Comments(ctx, dst, func(cm Comment) error {
		if cm.ExternalID != nil && strings.HasPrefix(*cm.ExternalID, "memvisor-comment-") {
			have[*cm.ExternalID] = true
		}
		return nil
	}); err != nil {
		return err
	}
	var todo []Comment
	if err := t.srcClient.Comments(ctx, src, func(cm Comment) error {
		if !have[commentMark(cm.CommentID)] && strings.TrimSpace(cm.Value) != "" {
			todo = append(todo, cm)
		}
		return nil
	}); err != nil {
		return err
	}
	bo := t.c.newBackoff()
	for _, cm := range todo {
		mark := commentMark(cm.CommentID)
		for attempt := 1; ; attempt++ {
			_, err := t.c.AddComment(ctx, dst, cm.Value, mark, t.write)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ue *uncertainError
			if !errors.As(err, &ue) || attempt >= t.c.maxAttempts {
				return fmt.Errorf("copy comment %d of source item %d: %w", cm.CommentID, src, err)
			}
			made := false
			if err := t.c.Comments(ctx, dst, func(c Comment) error {
				made = made || c.ExternalID != nil && *c.ExternalID == mark
				return nil
			}); err != nil {
				return fmt.Errorf("copy comment %d of source item %d: %w: %v; then %w", cm.CommentID, src, ErrOutcomeUnknown, ue.err, err)
			}
			if made {
				break
			}
			if err := sleep(ctx, bo.NextBackOff()); err != nil {
				return err
			}
		}
	}
	return nil
}
