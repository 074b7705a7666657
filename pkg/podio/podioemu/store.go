package podioemu

import (
	"encoding/json"
	"fmt"
	"math"
	"net/mail"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The field types the emulator knows, as Podio names them.
const (
	TypeText        = "text"
	TypeNumber      = "number"
	TypeMoney       = "money"
	TypeDate        = "date"
	TypeCategory    = "category"
	TypeQuestion    = "question"
	TypeApp         = "app"
	TypeContact     = "contact"
	TypeEmail       = "email"
	TypePhone       = "phone"
	TypeLocation    = "location"
	TypeDuration    = "duration"
	TypeProgress    = "progress"
	TypeCalculation = "calculation"
	TypeImage       = "image"
)

// Option is a category or question option.
type Option struct {
	ID     int64  `json:"id"`
	Text   string `json:"text"`
	Status string `json:"status,omitempty"`
	Color  string `json:"color,omitempty"`
}

// Field is an app field definition. FieldID and option ids are assigned
// by AddApp when zero.
type Field struct {
	FieldID        int64    `json:"field_id,omitempty"`
	ExternalID     string   `json:"external_id"`
	Type           string   `json:"type"`
	Label          string   `json:"label"`
	Required       bool     `json:"required,omitempty"`
	Options        []Option `json:"options,omitempty"`
	Multiple       bool     `json:"multiple,omitempty"`
	ReferencedApps []int64  `json:"referenced_apps,omitempty"`
}

// App is an app definition. AppToken is the secret of the app flow.
type App struct {
	AppID    int64   `json:"app_id"`
	Name     string  `json:"name,omitempty"`
	AppToken string  `json:"app_token,omitempty"`
	Fields   []Field `json:"fields"`
}

// Item is an item to seed. Fields holds values in the form Podio's
// create operation takes, by field external_id or field id; category and
// question options may also be given by text.
type Item struct {
	AppID       int64                      `json:"app_id"`
	ItemID      int64                      `json:"item_id,omitempty"`
	ExternalID  string                     `json:"external_id,omitempty"`
	CreatedOn   string                     `json:"created_on,omitempty"`
	LastEventOn string                     `json:"last_event_on,omitempty"`
	Tags        []string                   `json:"tags,omitempty"`
	Fields      map[string]json.RawMessage `json:"fields"`
	// FileIDs are files (see AddFile) attached to the item.
	FileIDs  []int64   `json:"file_ids,omitempty"`
	Comments []Comment `json:"comments,omitempty"`
}

type app struct {
	App
	byKey     map[string]*Field // by external_id and by decimal field id
	items     []*item           // in item_id order
	nextAppID int64             // next app_item_id
}

type item struct {
	id          int64
	appID       int64
	appItemID   int64
	externalID  string
	createdOn   time.Time
	lastEventOn time.Time
	lastEditOn  time.Time
	tags        []string
	revision    int
	title       string
	values      map[int64][]map[string]any // by field id, Podio's read form
	files       []int64                    // attached, in attach order
	comments    []*comment
}

// valueError is a 400 invalid_value.
type valueError struct{ msg string }

func (e *valueError) Error() string { return e.msg }

func invalid(format string, args ...any) error {
	return &valueError{msg: fmt.Sprintf(format, args...)}
}

// decodeAny decodes raw with numbers kept as json.Number.
func decodeAny(raw json.RawMessage) (any, error) {
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// asList turns a single value into a one-element list; null into none.
func asList(v any) []any {
	switch x := v.(type) {
	case nil:
		return nil
	case []any:
		return x
	}
	return []any{v}
}

// unwrapValue takes {"value": x} to x.
func unwrapValue(v any) any {
	if m, ok := v.(map[string]any); ok {
		if x, ok := m["value"]; ok && len(m) == 1 {
			return x
		}
	}
	return v
}

func toFloat(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		return f, err == nil
	case float64:
		return x, true
	}
	return 0, false
}

func toInt(v any) (int64, bool) {
	f, ok := toFloat(v)
	if !ok || f != math.Trunc(f) {
		return 0, false
	}
	return int64(f), true
}

// parseDateTime reads Podio's "YYYY-MM-DD" or "YYYY-MM-DD HH:MM:SS".
func parseDateTime(s string) (date string, tm *string, ok bool) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t.Format("2006-01-02"), nil, true
	}
	if t, err := time.Parse("2006-01-02 15:04:05", s); err == nil {
		h := t.Format("15:04:05")
		return t.Format("2006-01-02"), &h, true
	}
	return "", nil, false
}

// convert validates a written value for f and returns Podio's read form.
// byText allows option texts for category and question (seeding only).
func (s *Server) convert(f *Field, raw json.RawMessage, byText bool) ([]map[string]any, error) {
	v, err := decodeAny(raw)
	if err != nil {
		return nil, invalid("field %s: invalid JSON", f.ExternalID)
	}
	var out []map[string]any
	switch f.Type {
	case TypeText:
		for _, e := range asList(v) {
			str, ok := unwrapValue(e).(string)
			if !ok {
				return nil, invalid("field %s: text must be a string", f.ExternalID)
			}
			if str != "" {
				out = append(out, map[string]any{"value": str})
			}
		}
		if len(out) > 1 {
			return nil, invalid("field %s: only one text value is allowed", f.ExternalID)
		}
	case TypeNumber:
		for _, e := range asList(v) {
			n, ok := toFloat(unwrapValue(e))
			if !ok {
				return nil, invalid("field %s: not a number", f.ExternalID)
			}
			out = append(out, map[string]any{"value": strconv.FormatFloat(n, 'f', 4, 64)})
		}
	case TypeMoney:
		for _, e := range asList(v) {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, invalid("field %s: money must be {\"value\",\"currency\"}", f.ExternalID)
			}
			n, ok := toFloat(m["value"])
			cur, _ := m["currency"].(string)
			if !ok || len(cur) != 3 || strings.ToUpper(cur) != cur {
				return nil, invalid("field %s: money needs a decimal value and a 3-letter ISO 4217 currency", f.ExternalID)
			}
			out = append(out, map[string]any{"value": strconv.FormatFloat(n, 'f', 4, 64), "currency": cur})
		}
	case TypeDate:
		for _, e := range asList(v) {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, invalid("field %s: date must be {\"start\",\"end\"}", f.ExternalID)
			}
			dv, err := dateValue(f, m, s.zone)
			if err != nil {
				return nil, err
			}
			out = append(out, dv)
		}
	case TypeCategory, TypeQuestion:
		for _, e := range asList(v) {
			e = unwrapValue(e)
			var opt *Option
			if id, ok := toInt(e); ok {
				opt = findOption(f, func(o *Option) bool { return o.ID == id })
			} else if txt, ok := e.(string); ok && byText {
				opt = findOption(f, func(o *Option) bool { return o.Text == txt })
			} else if m, ok := e.(map[string]any); ok {
				if id, ok := toInt(m["id"]); ok {
					opt = findOption(f, func(o *Option) bool { return o.ID == id })
				}
			}
			if opt == nil {
				return nil, invalid("field %s: %v is not an option of this field", f.ExternalID, e)
			}
			out = append(out, map[string]any{"value": map[string]any{
				"id": opt.ID, "text": opt.Text, "status": "active", "color": opt.Color}})
		}
		if len(out) > 1 && !f.Multiple {
			return nil, invalid("field %s: only one option may be chosen", f.ExternalID)
		}
	case TypeApp:
		for _, e := range asList(v) {
			e = unwrapValue(e)
			if m, ok := e.(map[string]any); ok {
				e = m["item_id"]
			}
			id, ok := toInt(e)
			if !ok {
				return nil, invalid("field %s: an app reference is an item id", f.ExternalID)
			}
			ref := s.items[id]
			if ref == nil {
				return nil, invalid("field %s: item %d does not exist", f.ExternalID, id)
			}
			if len(f.ReferencedApps) > 0 && !contains(f.ReferencedApps, ref.appID) {
				return nil, invalid("field %s: item %d is in app %d, which this field does not reference", f.ExternalID, id, ref.appID)
			}
			out = append(out, map[string]any{"value": map[string]any{
				"item_id": ref.id, "app_item_id": ref.appItemID, "title": ref.title,
				"app": map[string]any{"app_id": ref.appID}}})
		}
	case TypeContact:
		for _, e := range asList(v) {
			e = unwrapValue(e)
			if m, ok := e.(map[string]any); ok {
				e = m["profile_id"]
			}
			id, ok := toInt(e)
			if !ok || id <= 0 {
				return nil, invalid("field %s: a contact is a profile id", f.ExternalID)
			}
			out = append(out, map[string]any{"value": map[string]any{
				"profile_id": id, "type": "user", "name": fmt.Sprintf("Profile %d", id)}})
		}
	case TypeEmail, TypePhone:
		for _, e := range asList(v) {
			typ, val := "other", ""
			switch x := e.(type) {
			case string:
				val = x
			case map[string]any:
				val, _ = x["value"].(string)
				if t, ok := x["type"].(string); ok && t != "" {
					typ = t
				}
			}
			if val == "" {
				return nil, invalid("field %s: needs {\"type\",\"value\"}", f.ExternalID)
			}
			if f.Type == TypeEmail {
				if _, err := mail.ParseAddress(val); err != nil {
					return nil, invalid("field %s: %q is not an email address", f.ExternalID, val)
				}
			}
			out = append(out, map[string]any{"type": typ, "value": val})
		}
	case TypeLocation:
		for _, e := range asList(v) {
			lv := map[string]any{}
			switch x := e.(type) {
			case string:
				lv["value"] = x
			case map[string]any:
				val, _ := x["value"].(string)
				lv["value"] = val
				for _, k := range []string{"lat", "lng"} {
					if n, ok := toFloat(x[k]); ok {
						lv[k] = n
					}
				}
			}
			if lv["value"] == "" || lv["value"] == nil {
				return nil, invalid("field %s: a location needs a value", f.ExternalID)
			}
			lv["formatted"] = lv["value"]
			out = append(out, lv)
		}
	case TypeDuration:
		for _, e := range asList(v) {
			n, ok := toInt(unwrapValue(e))
			if !ok || n < 0 {
				return nil, invalid("field %s: a duration is whole seconds", f.ExternalID)
			}
			out = append(out, map[string]any{"value": n})
		}
	case TypeProgress:
		for _, e := range asList(v) {
			n, ok := toInt(unwrapValue(e))
			if !ok || n < 0 || n > 100 {
				return nil, invalid("field %s: progress is an integer from 0 to 100", f.ExternalID)
			}
			out = append(out, map[string]any{"value": n})
		}
	case TypeImage:
		// Written as file ids (or {"file_id":N} / {"value":N}); read as
		// {"value": <the file>}.
		for _, e := range asList(v) {
			if m, ok := e.(map[string]any); ok && m["file_id"] != nil {
				e = m["file_id"]
			}
			id, ok := toInt(unwrapValue(e))
			fl := s.files[id]
			if !ok || fl == nil {
				return nil, invalid("field %s: file %v does not exist", f.ExternalID, e)
			}
			out = append(out, map[string]any{"value": s.renderFile(fl)})
		}
	case TypeCalculation:
		if !byText {
			return nil, invalid("field %s: a calculation field cannot be written", f.ExternalID)
		}
		for _, e := range asList(v) {
			n, ok := toFloat(unwrapValue(e))
			if !ok {
				return nil, invalid("field %s: not a number", f.ExternalID)
			}
			out = append(out, map[string]any{"value": strconv.FormatFloat(n, 'f', 4, 64)})
		}
	default:
		return nil, invalid("field %s: type %s is not supported by the emulator", f.ExternalID, f.Type)
	}
	return out, nil
}

// dateValue reads a written date: start and end in the user's zone
// (start, or start_date and start_time), or in UTC (start_utc, or
// start_date_utc and start_time_utc), which wins. A date without a time
// has no zone. The answer carries both forms, as Podio's does.
func dateValue(f *Field, m map[string]any, loc *time.Location) (map[string]any, error) {
	get := func(k string) string { s, _ := m[k].(string); return strings.TrimSpace(s) }
	out := map[string]any{}
	var startAt time.Time
	for _, end := range []string{"start", "end"} {
		var when time.Time
		var hasTime bool
		utc, local := get(end+"_utc"), get(end)
		if utc == "" && get(end+"_date_utc") != "" {
			utc = strings.TrimSpace(get(end+"_date_utc") + " " + get(end+"_time_utc"))
		}
		if local == "" && get(end+"_date") != "" {
			local = strings.TrimSpace(get(end+"_date") + " " + get(end+"_time"))
		}
		switch {
		case utc != "":
			d, tm, ok := parseDateTime(utc)
			if !ok {
				return nil, invalid("field %s: %s_utc %q is not YYYY-MM-DD or YYYY-MM-DD HH:MM:SS", f.ExternalID, end, utc)
			}
			hasTime = tm != nil
			when, _ = time.ParseInLocation(podioTime, d+" "+orMidnight(tm), time.UTC)
		case local != "":
			d, tm, ok := parseDateTime(local)
			if !ok {
				return nil, invalid("field %s: %s %q is not YYYY-MM-DD or YYYY-MM-DD HH:MM:SS", f.ExternalID, end, local)
			}
			hasTime = tm != nil
			zone := time.UTC
			if hasTime {
				zone = loc
			}
			when, _ = time.ParseInLocation(podioTime, d+" "+orMidnight(tm), zone)
		default:
			if end == "start" {
				return nil, invalid("field %s: a date needs a start", f.ExternalID)
			}
			continue
		}
		if end == "start" {
			startAt = when
		} else if when.Before(startAt) {
			return nil, invalid("field %s: end is before start", f.ExternalID)
		}
		if !hasTime {
			day := when.Format("2006-01-02")
			out[end+"_date"], out[end+"_time"], out[end] = day, nil, day+" 00:00:00"
			out[end+"_date_utc"], out[end+"_time_utc"], out[end+"_utc"] = day, nil, day
			continue
		}
		lt, ut := when.In(loc), when.UTC()
		out[end+"_date"], out[end+"_time"], out[end] = lt.Format("2006-01-02"), lt.Format("15:04:05"), lt.Format(podioTime)
		out[end+"_date_utc"], out[end+"_time_utc"], out[end+"_utc"] = ut.Format("2006-01-02"), ut.Format("15:04:05"), ut.Format(podioTime)
	}
	return out, nil
}

func orMidnight(tm *string) string {
	if tm == nil {
		return "00:00:00"
	}
	return *tm
}

func findOption(f *Field, pred func(*Option) bool) *Option {
	for i := range f.Options {
		if pred(&f.Options[i]) {
			return &f.Options[i]
		}
	}
	return nil
}

func contains(xs []int64, x int64) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// setValues writes fields (by external_id or field id) into it. It is
// all or nothing: on error, it is unchanged.
func (s *Server) setValues(a *app, it *item, fields map[string]json.RawMessage, seeding bool) (changed bool, err error) {
	next := map[int64][]map[string]any{}
	for k, raw := range fields {
		f := a.byKey[k]
		if f == nil {
			return false, invalid("field %q does not exist in app %d", k, a.AppID)
		}
		vals, err := s.convert(f, raw, seeding)
		if err != nil {
			return false, err
		}
		next[f.FieldID] = vals
	}
	for id, vals := range next {
		old, _ := json.Marshal(it.values[id])
		nw, _ := json.Marshal(vals)
		if string(old) == string(nw) {
			continue
		}
		changed = true
		if len(vals) == 0 {
			delete(it.values, id)
		} else {
			it.values[id] = vals
		}
	}
	it.title = ""
	for _, f := range a.Fields {
		if f.Type == TypeText {
			if v := it.values[f.FieldID]; len(v) > 0 {
				it.title, _ = v[0]["value"].(string)
			}
			break
		}
	}
	return changed, nil
}

const podioTime = "2006-01-02 15:04:05"

// render is the item as GET /item/{id} answers it.
func (s *Server) render(a *app, it *item) map[string]any {
	fields := make([]map[string]any, 0, len(it.values))
	for _, f := range a.Fields {
		vals := it.values[f.FieldID]
		if len(vals) == 0 {
			continue
		}
		fields = append(fields, map[string]any{
			"field_id": f.FieldID, "external_id": f.ExternalID, "type": f.Type,
			"label": f.Label, "status": "active", "values": vals,
		})
	}
	files := make([]map[string]any, 0, len(it.files))
	for _, id := range it.files {
		if f := s.files[id]; f != nil {
			files = append(files, s.renderFile(f))
		}
	}
	tags := it.tags
	if tags == nil {
		tags = []string{}
	}
	var ext any
	if it.externalID != "" {
		ext = it.externalID
	}
	return map[string]any{
		"item_id": it.id, "app_item_id": it.appItemID, "external_id": ext,
		"title": it.title, "link": fmt.Sprintf("https://podio.com/emulator/apps/%d/items/%d", a.AppID, it.appItemID),
		"app":        map[string]any{"app_id": a.AppID, "name": a.Name, "status": "active"},
		"created_on": it.createdOn.UTC().Format(podioTime), "last_event_on": it.lastEventOn.UTC().Format(podioTime),
		"last_edit_on": it.lastEditOn.UTC().Format(podioTime),
		"revision":     it.revision, "tags": tags, "fields": fields,
		"files": files, "file_count": len(files), "comment_count": len(it.comments),
		"initial_revision": map[string]any{"revision": 0, "created_on": it.createdOn.UTC().Format(podioTime)},
	}
}

// renderApp is the app as GET /app/{id} answers it.
func renderApp(a *app) map[string]any {
	fields := make([]map[string]any, 0, len(a.Fields))
	for _, f := range a.Fields {
		settings := map[string]any{}
		switch f.Type {
		case TypeCategory, TypeQuestion:
			opts := make([]map[string]any, 0, len(f.Options))
			for _, o := range f.Options {
				opts = append(opts, map[string]any{"id": o.ID, "text": o.Text, "status": "active", "color": o.Color})
			}
			settings["options"], settings["multiple"] = opts, f.Multiple
		case TypeApp:
			refs := make([]map[string]any, 0, len(f.ReferencedApps))
			for _, r := range f.ReferencedApps {
				refs = append(refs, map[string]any{"app_id": r})
			}
			settings["referenced_apps"], settings["multiple"] = refs, true
		case TypeText:
			settings["size"], settings["format"] = "small", "plain"
		}
		fields = append(fields, map[string]any{
			"field_id": f.FieldID, "external_id": f.ExternalID, "type": f.Type, "label": f.Label,
			"status": "active",
			"config": map[string]any{"label": f.Label, "required": f.Required, "settings": settings},
		})
	}
	return map[string]any{
		"app_id": a.AppID, "status": "active",
		"config": map[string]any{"name": a.Name, "item_name": a.Name},
		"fields": fields,
	}
}

// sortItems orders a copy of items by key.
func sortItems(items []*item, by string, desc bool) []*item {
	out := append([]*item(nil), items...)
	key := func(it *item) int64 {
		switch by {
		case "created_on":
			return it.createdOn.UnixNano()
		case "last_edit_on":
			return it.lastEditOn.UnixNano()
		}
		return it.id
	}
	sort.SliceStable(out, func(i, j int) bool {
		ki, kj := key(out[i]), key(out[j])
		if ki == kj {
			ki, kj = out[i].id, out[j].id
		}
		if desc {
			return ki > kj
		}
		return ki < kj
	})
	return out
}
