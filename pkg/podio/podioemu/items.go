package podioemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

func (s *Server) canReach(c *call, appID int64) bool {
	return c.tok.appID == 0 || c.tok.appID == appID
}

func (s *Server) appOf(c *call) (*app, int, any) {
	id, err := strconv.ParseInt(c.r.PathValue("app_id"), 10, 64)
	if err != nil {
		st, b := fail(http.StatusNotFound, "not_found", "Object not found")
		return nil, st, b
	}
	a := s.apps[id]
	if a == nil {
		st, b := fail(http.StatusNotFound, "not_found", "Object not found")
		return nil, st, b
	}
	if !s.canReach(c, id) {
		st, b := fail(http.StatusForbidden, "forbidden", fmt.Sprintf("The app token does not give access to app %d", id))
		return nil, st, b
	}
	return a, 0, nil
}

func (s *Server) handleApp(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	return http.StatusOK, renderApp(a)
}

func (s *Server) handleCount(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	return http.StatusOK, map[string]any{"count": len(a.items)}
}

func (s *Server) itemOf(c *call) (*item, *app, int, any) {
	id, err := strconv.ParseInt(c.r.PathValue("item_id"), 10, 64)
	it := s.items[id]
	if err != nil || it == nil {
		st, b := fail(http.StatusNotFound, "not_found", "Object not found")
		return nil, nil, st, b
	}
	if !s.canReach(c, it.appID) {
		st, b := fail(http.StatusForbidden, "forbidden", fmt.Sprintf("The app token does not give access to item %d", id))
		return nil, nil, st, b
	}
	return it, s.apps[it.appID], 0, nil
}

func (s *Server) handleGet(c *call) (int, any) {
	it, a, st, b := s.itemOf(c)
	if it == nil {
		return st, b
	}
	return http.StatusOK, s.render(a, it)
}

func (s *Server) handleByExternal(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	list := s.byExt[extKey(a.AppID, c.r.PathValue("external_id"))]
	if len(list) == 0 {
		return fail(http.StatusNotFound, "not_found", "Object not found")
	}
	return http.StatusOK, s.render(a, list[0])
}

type writeBody struct {
	ExternalID *string                    `json:"external_id"`
	Fields     map[string]json.RawMessage `json:"fields"`
	Tags       []string                   `json:"tags"`
	Revision   *int                       `json:"revision"`
	FileIDs    []int64                    `json:"file_ids"`
}

func (s *Server) decodeWrite(c *call) (writeBody, bool) {
	var wb writeBody
	if len(c.body) == 0 || json.Unmarshal(c.body, &wb) != nil {
		return wb, false
	}
	return wb, true
}

func (s *Server) noteWrite(c *call) {
	q := c.r.URL.Query()
	if q.Get("hook") != "false" && q.Get("hook") != "0" {
		s.stats.HooksFired++
	}
	if q.Get("silent") != "true" && q.Get("silent") != "1" {
		s.stats.NotSilent++
	}
}

func (s *Server) handleCreate(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	wb, ok := s.decodeWrite(c)
	if !ok {
		return fail(http.StatusBadRequest, "bad_request", "The request body is not a JSON object")
	}
	now := s.now().UTC().Truncate(time.Second)
	ni := &item{appID: a.AppID, values: map[int64][]map[string]any{}, tags: wb.Tags,
		createdOn: now, lastEventOn: now, lastEditOn: now}
	if wb.ExternalID != nil {
		ni.externalID = *wb.ExternalID
	}
	for _, f := range a.Fields {
		if f.Required {
			if _, ok := wb.Fields[f.ExternalID]; !ok {
				if _, ok := wb.Fields[strconv.FormatInt(f.FieldID, 10)]; !ok {
					s.stats.Validation400++
					return fail(http.StatusBadRequest, "invalid_value", fmt.Sprintf("field %s is required", f.ExternalID))
				}
			}
		}
	}
	if _, err := s.setValues(a, ni, wb.Fields, false); err != nil {
		s.stats.Validation400++
		return fail(http.StatusBadRequest, "invalid_value", err.Error())
	}
	s.nextItem++
	ni.id = s.nextItem
	if err := s.attachLocked(ni, wb.FileIDs); err != nil {
		s.nextItem--
		s.stats.Validation400++
		return fail(http.StatusBadRequest, "invalid_value", err.Error())
	}
	s.insert(a, ni)
	s.stats.Creates++
	s.noteWrite(c)
	return http.StatusOK, map[string]any{"item_id": ni.id, "app_item_id": ni.appItemID, "title": ni.title, "revision": 0}
}

func (s *Server) handleUpdate(c *call) (int, any) {
	it, a, st, b := s.itemOf(c)
	if it == nil {
		return st, b
	}
	wb, ok := s.decodeWrite(c)
	if !ok {
		return fail(http.StatusBadRequest, "bad_request", "The request body is not a JSON object")
	}
	if wb.Revision != nil && *wb.Revision != it.revision {
		return fail(http.StatusConflict, "conflict", fmt.Sprintf("The item has changed since revision %d", *wb.Revision))
	}
	changed, err := s.setValues(a, it, wb.Fields, false)
	if err != nil {
		s.stats.Validation400++
		return fail(http.StatusBadRequest, "invalid_value", err.Error())
	}
	if wb.ExternalID != nil && *wb.ExternalID != it.externalID {
		old := extKey(a.AppID, it.externalID)
		list := s.byExt[old]
		for i, x := range list {
			if x == it {
				s.byExt[old] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		it.externalID = *wb.ExternalID
		k := extKey(a.AppID, it.externalID)
		s.byExt[k] = append(s.byExt[k], it)
		changed = true
	}
	if wb.Tags != nil {
		it.tags, changed = wb.Tags, true
	}
	if len(wb.FileIDs) > 0 {
		before := len(it.files)
		if err := s.attachLocked(it, wb.FileIDs); err != nil {
			s.stats.Validation400++
			return fail(http.StatusBadRequest, "invalid_value", err.Error())
		}
		changed = changed || len(it.files) != before
	}
	s.noteWrite(c)
	if !changed {
		return http.StatusNoContent, nil
	}
	now := s.now().UTC().Truncate(time.Second)
	it.revision++
	it.lastEditOn, it.lastEventOn = now, now
	s.stats.Updates++
	return http.StatusOK, map[string]any{"revision": it.revision, "title": it.title}
}

type filterBody struct {
	SortBy   string                     `json:"sort_by"`
	SortDesc *bool                      `json:"sort_desc"`
	Limit    *int                       `json:"limit"`
	Offset   int                        `json:"offset"`
	Filters  map[string]json.RawMessage `json:"filters"`
}

type rangeFilter struct {
	From any `json:"from"`
	To   any `json:"to"`
}

func (s *Server) handleFilter(c *call) (int, any) {
	a, st, b := s.appOf(c)
	if a == nil {
		return st, b
	}
	var fb filterBody
	if len(c.body) > 0 {
		if err := json.Unmarshal(c.body, &fb); err != nil {
			return fail(http.StatusBadRequest, "bad_request", "The request body is not valid: "+err.Error())
		}
	}
	limit := 30
	if fb.Limit != nil {
		limit = *fb.Limit
	}
	if limit < 1 || limit > 500 {
		return fail(http.StatusBadRequest, "invalid_value", "limit must be between 1 and 500")
	}
	if fb.Offset < 0 {
		return fail(http.StatusBadRequest, "invalid_value", "offset must not be negative")
	}
	desc := true // Podio's default
	if fb.SortDesc != nil {
		desc = *fb.SortDesc
	}
	switch fb.SortBy {
	case "", "created_on", "item_id", "last_edit_on":
	default:
		return fail(http.StatusBadRequest, "invalid_value", fmt.Sprintf("sort_by %q is not supported", fb.SortBy))
	}
	if fb.SortBy == "" {
		fb.SortBy = "created_on"
	}
	preds, err := s.filterPreds(a, fb.Filters)
	if err != nil {
		return fail(http.StatusBadRequest, "invalid_value", err.Error())
	}
	var matched []*item
	for _, it := range a.items {
		ok := true
		for _, p := range preds {
			if !p(it) {
				ok = false
				break
			}
		}
		if ok {
			matched = append(matched, it)
		}
	}
	if !(fb.SortBy == "item_id" && !desc) {
		matched = sortItems(matched, fb.SortBy, desc)
	}
	page := []map[string]any{}
	for i := fb.Offset; i < len(matched) && len(page) < limit; i++ {
		page = append(page, s.render(a, matched[i]))
	}
	return http.StatusOK, map[string]any{"total": len(a.items), "filtered": len(matched), "items": page}
}

func (s *Server) filterPreds(a *app, filters map[string]json.RawMessage) ([]func(*item) bool, error) {
	var preds []func(*item) bool
	for k, raw := range filters {
		switch k {
		case "created_on", "last_event_on", "last_edit_on":
			var r rangeFilter
			if err := json.Unmarshal(raw, &r); err != nil {
				return nil, fmt.Errorf("filter %s: want {\"from\",\"to\"}", k)
			}
			from, to, err := dateRange(r)
			if err != nil {
				return nil, fmt.Errorf("filter %s: %w", k, err)
			}
			key := k
			preds = append(preds, func(it *item) bool {
				t := it.createdOn
				switch key {
				case "last_event_on":
					t = it.lastEventOn
				case "last_edit_on":
					t = it.lastEditOn
				}
				return (from.IsZero() || !t.Before(from)) && (to.IsZero() || !t.After(to))
			})
		case "tags":
			var tags []string
			if err := json.Unmarshal(raw, &tags); err != nil {
				return nil, errors.New("filter tags: want a list of tags")
			}
			preds = append(preds, func(it *item) bool {
				for _, t := range it.tags {
					for _, w := range tags {
						if t == w {
							return true
						}
					}
				}
				return false
			})
		default:
			f := a.byKey[k]
			if f == nil {
				return nil, fmt.Errorf("filter %s: no such field or key", k)
			}
			p, err := fieldPred(f, raw)
			if err != nil {
				return nil, err
			}
			preds = append(preds, p)
		}
	}
	return preds, nil
}

func dateRange(r rangeFilter) (from, to time.Time, err error) {
	parse := func(v any, end bool) (time.Time, error) {
		str, _ := v.(string)
		if v == nil || str == "" {
			return time.Time{}, nil
		}
		if t, err := time.Parse("2006-01-02", str); err == nil {
			if end {
				t = t.Add(24*time.Hour - time.Second)
			}
			return t, nil
		}
		if t, err := time.Parse(podioTime, str); err == nil {
			return t, nil
		}
		return time.Time{}, fmt.Errorf("%q is not YYYY-MM-DD or YYYY-MM-DD HH:MM:SS", str)
	}
	if from, err = parse(r.From, false); err != nil {
		return
	}
	to, err = parse(r.To, true)
	return
}

func fieldPred(f *Field, raw json.RawMessage) (func(*item) bool, error) {
	id := f.FieldID
	switch f.Type {
	case TypeCategory, TypeQuestion, TypeApp, TypeContact:
		var want []int64
		if err := json.Unmarshal(raw, &want); err != nil {
			return nil, fmt.Errorf("filter %s: want a list of ids", f.ExternalID)
		}
		sub := map[string]string{TypeCategory: "id", TypeQuestion: "id", TypeApp: "item_id", TypeContact: "profile_id"}[f.Type]
		return func(it *item) bool {
			for _, v := range it.values[id] {
				m, _ := v["value"].(map[string]any)
				if n, ok := m[sub].(int64); ok && contains(want, n) {
					return true
				}
			}
			return false
		}, nil
	case TypeNumber, TypeMoney, TypeProgress, TypeDuration, TypeCalculation:
		var r rangeFilter
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("filter %s: want {\"from\",\"to\"}", f.ExternalID)
		}
		from, okF := toFloat(r.From)
		to, okT := toFloat(r.To)
		return func(it *item) bool {
			for _, v := range it.values[id] {
				x, ok := toFloat(fmt.Sprint(v["value"]))
				if ok && (!okF || x >= from) && (!okT || x <= to) {
					return true
				}
			}
			return false
		}, nil
	}
	return nil, fmt.Errorf("filter %s: fields of type %s cannot be filtered", f.ExternalID, f.Type)
}
