package podio

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/memvisor/memvisor/pkg/connector"
)

// Podio's field types.
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
	TypeTel         = "tel" // the older phone field: one string
	TypeLocation    = "location"
	TypeDuration    = "duration"
	TypeProgress    = "progress"
	TypeCalculation = "calculation"
)

// writable lists the types the target converts; every other type
// (calculation, image, file, embed, ...) is read-only here.
var writable = map[string]bool{
	TypeText: true, TypeNumber: true, TypeMoney: true, TypeDate: true, TypeCategory: true,
	TypeQuestion: true, TypeApp: true, TypeContact: true, TypeEmail: true, TypePhone: true,
	TypeTel: true, TypeLocation: true, TypeDuration: true, TypeProgress: true,
}

// Flatten turns an item's fields into the flat form the connectors use,
// keyed by field external_id. The forms are app-independent:
//
//	text                  "string"
//	number                12.5
//	calculation           12.5, a date as above, or a string
//	money                 {"value":"12.50","currency":"EUR"}
//	date                  {"start":"2024-01-02 10:00:00","end":"2024-01-03"} (end only if set; times in UTC, from
//	                      the *_utc keys; a date without time has no zone)
//	category, question    ["Option text", ...] (by text, never by id)
//	app                   [{"item_id":<source item id>}, ...]
//	contact               [{"profile_id":N}, ...]
//	email, phone          [{"type":"work","value":"..."}, ...]
//	location              [{"value":"address","lat":55.6,"lng":12.5}, ...]
//	duration              seconds
//	progress              0 to 100
//
//	image                 [{"file_id":N,"name":"a.png","size":1234}, ...] (only for a source that copies files)
//
// A field without values is left out, and so is a type the connector
// does not carry (embed, ...) and a calculation without a result.
func Flatten(fields []APIField) connector.Fields { return flatten(fields, flatOptions{}) }

// flatOptions are what a Podio source adds to Flatten.
type flatOptions struct {
	// images flattens image fields to their files, [{"file_id","name",
	// "size"}], for a target that copies them.
	images bool
	// byID keys these fields by their decimal field id instead of their
	// external_id, for a field_mapping or match field that names Podio
	// field ids, as the original tool's mappings do.
	byID map[int64]bool
}

func flatten(fields []APIField, o flatOptions) connector.Fields {
	out := make(connector.Fields, len(fields))
	for _, f := range fields {
		var v json.RawMessage
		var ok bool
		if f.Type == TypeImage {
			v, ok = flattenImage(f, o.images)
		} else {
			v, ok = flattenField(f)
		}
		if !ok {
			continue
		}
		if o.byID[f.FieldID] {
			out[strconv.FormatInt(f.FieldID, 10)] = v
		} else {
			out[f.ExternalID] = v
		}
	}
	return out
}

func flattenImage(f APIField, on bool) (json.RawMessage, bool) {
	if !on {
		return nil, false
	}
	refs := []FileRef{}
	for _, raw := range f.Values {
		var v struct {
			Value FileRef `json:"value"`
		}
		if json.Unmarshal(raw, &v) == nil && v.Value.FileID > 0 {
			refs = append(refs, v.Value)
		}
	}
	if len(refs) == 0 {
		return nil, false
	}
	b, err := json.Marshal(refs)
	return b, err == nil
}

type rawValue struct {
	Value     json.RawMessage `json:"value"`
	Currency  string          `json:"currency"`
	Type      string          `json:"type"`
	StartDate string          `json:"start_date"`
	StartTime *string         `json:"start_time"`
	EndDate   string          `json:"end_date"`
	EndTime   *string         `json:"end_time"`
	Start     string          `json:"start"`
	End       string          `json:"end"`
	// The same in UTC, where Podio gives them: a time in the local forms
	// above is in the user's zone.
	StartDateUTC string   `json:"start_date_utc"`
	StartTimeUTC *string  `json:"start_time_utc"`
	StartUTC     string   `json:"start_utc"`
	EndDateUTC   string   `json:"end_date_utc"`
	EndTimeUTC   *string  `json:"end_time_utc"`
	EndUTC       string   `json:"end_utc"`
	Lat          *float64 `json:"lat"`
	Lng          *float64 `json:"lng"`
}

func flattenField(f APIField) (json.RawMessage, bool) {
	vals := make([]rawValue, 0, len(f.Values))
	for _, raw := range f.Values {
		var v rawValue
		if json.Unmarshal(raw, &v) == nil {
			vals = append(vals, v)
		}
	}
	if len(vals) == 0 {
		return nil, false
	}
	var out any
	switch f.Type {
	case TypeText:
		var s string
		if json.Unmarshal(vals[0].Value, &s) != nil {
			return nil, false
		}
		out = s
	case TypeNumber:
		n, ok := decimal(vals[0].Value)
		if !ok {
			return nil, false
		}
		out = json.RawMessage(n)
	case TypeCalculation:
		// A calculation is read, never written (it is read-only in every
		// app). A calculation without a result is left out, so that it
		// cannot clear the field it is mapped to.
		v := vals[0]
		if n, ok := decimal(v.Value); ok {
			out = json.RawMessage(n)
			break
		}
		if d, ok := flatDate(v); ok {
			out = d
			break
		}
		var s string
		if json.Unmarshal(v.Value, &s) != nil || s == "" {
			return nil, false
		}
		out = s
	case TypeMoney:
		n, ok := decimal(vals[0].Value)
		if !ok {
			return nil, false
		}
		out = map[string]string{"value": moneyString(n), "currency": vals[0].Currency}
	case TypeDate:
		d, ok := flatDate(vals[0])
		if !ok {
			return nil, false
		}
		out = d
	case TypeCategory, TypeQuestion:
		texts := []string{}
		for _, v := range vals {
			var o Option
			if json.Unmarshal(v.Value, &o) == nil && o.Text != "" {
				texts = append(texts, o.Text)
			}
		}
		out = texts
	case TypeApp:
		refs := []map[string]int64{}
		for _, v := range vals {
			var r struct {
				ItemID int64 `json:"item_id"`
			}
			if json.Unmarshal(v.Value, &r) == nil && r.ItemID > 0 {
				refs = append(refs, map[string]int64{"item_id": r.ItemID})
			}
		}
		out = refs
	case TypeContact:
		refs := []map[string]int64{}
		for _, v := range vals {
			var r struct {
				ProfileID int64 `json:"profile_id"`
			}
			if json.Unmarshal(v.Value, &r) == nil && r.ProfileID > 0 {
				refs = append(refs, map[string]int64{"profile_id": r.ProfileID})
			}
		}
		out = refs
	case TypeEmail, TypePhone, TypeTel:
		list := []map[string]string{}
		for _, v := range vals {
			var s string
			if json.Unmarshal(v.Value, &s) == nil && s != "" {
				typ := v.Type
				if typ == "" {
					typ = "other"
				}
				list = append(list, map[string]string{"type": typ, "value": s})
			}
		}
		out = list
	case TypeLocation:
		list := []map[string]any{}
		for _, v := range vals {
			var s string
			if json.Unmarshal(v.Value, &s) != nil || s == "" {
				continue
			}
			m := map[string]any{"value": s}
			if v.Lat != nil && v.Lng != nil {
				m["lat"], m["lng"] = *v.Lat, *v.Lng
			}
			list = append(list, m)
		}
		out = list
	case TypeDuration, TypeProgress:
		n, ok := decimal(vals[0].Value)
		if !ok {
			return nil, false
		}
		out = json.RawMessage(n)
	default:
		return nil, false
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, false
	}
	return b, true
}

// decimal reads a number or a numeric string as a canonical JSON number:
// "12.5000" is 12.5.
func decimal(raw json.RawMessage) (string, bool) {
	var x any
	if json.Unmarshal(raw, &x) != nil {
		return "", false
	}
	var f float64
	switch v := x.(type) {
	case float64:
		f = v
	case string:
		var err error
		if f, err = strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil {
			return "", false
		}
	default:
		return "", false
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", false
	}
	return strconv.FormatFloat(f, 'f', -1, 64), true
}

// moneyString writes an amount with at least two decimals: "12.50".
func moneyString(n string) string {
	whole, frac, _ := strings.Cut(n, ".")
	for len(frac) < 2 {
		frac += "0"
	}
	return whole + "." + frac
}

// flatDate is a date value's flat form: a date without a time as
// "YYYY-MM-DD" (it has no zone), a time in UTC from the *_utc keys when
// Podio gives them, else the local form as it is.
func flatDate(v rawValue) (map[string]string, bool) {
	start := pickDate(v.StartDate, v.StartTime, v.Start, v.StartDateUTC, v.StartTimeUTC, v.StartUTC)
	if start == "" {
		return nil, false
	}
	d := map[string]string{"start": start}
	if e := pickDate(v.EndDate, v.EndTime, v.End, v.EndDateUTC, v.EndTimeUTC, v.EndUTC); e != "" && e != start {
		d["end"] = e
	}
	return d, true
}

func pickDate(date string, tm *string, whole, dateUTC string, tmUTC *string, wholeUTC string) string {
	hasTime := tm != nil && *tm != "" || tmUTC != nil && *tmUTC != ""
	switch {
	case !hasTime && date != "":
		return date
	case wholeUTC != "":
		return wholeUTC
	case dateUTC != "":
		return joinDate(dateUTC, tmUTC, "")
	}
	return joinDate(date, tm, whole)
}

func joinDate(date string, tm *string, whole string) string {
	if date == "" {
		return whole
	}
	if tm != nil && *tm != "" {
		return date + " " + *tm
	}
	return date
}

// refResolver finds the target id of a migrated source item.
type refResolver func(ctx context.Context, sourceID int64) (targetID int64, found bool, err error)

// conversion is the result of converting one item's flat fields for a
// target app.
type conversion struct {
	fields map[string]any
	// dropped lists references to items that were not migrated.
	dropped []string
}

// unflatten converts flat values to the create/update form of the target
// field f. A reference whose item was not migrated is dropped and noted.
func unflatten(ctx context.Context, f *FieldDef, raw json.RawMessage, resolve refResolver, conv *conversion) (any, error) {
	v, err := decodeLoose(raw)
	if err != nil {
		return nil, validationError("field %s: value is not JSON", f.ExternalID)
	}
	if v == nil {
		return []any{}, nil // clears the field
	}
	switch f.Type {
	case TypeText:
		switch x := v.(type) {
		case string:
			return x, nil
		case json.Number:
			return x.String(), nil
		case bool:
			return strconv.FormatBool(x), nil
		}
		return nil, validationError("field %s: a text field takes a string (got %s)", f.ExternalID, short(raw))
	case TypeNumber, TypeDuration, TypeProgress:
		n, ok := number(v)
		if !ok {
			return nil, validationError("field %s: a %s field takes a number (got %s)", f.ExternalID, f.Type, short(raw))
		}
		if f.Type != TypeNumber {
			if n != math.Trunc(n) {
				return nil, validationError("field %s: a %s field takes a whole number (got %s)", f.ExternalID, f.Type, short(raw))
			}
			if f.Type == TypeProgress && (n < 0 || n > 100) {
				return nil, validationError("field %s: progress must be 0 to 100 (got %s)", f.ExternalID, short(raw))
			}
			return int64(n), nil
		}
		return json.Number(strconv.FormatFloat(n, 'f', -1, 64)), nil
	case TypeMoney:
		m, ok := v.(map[string]any)
		if !ok {
			return nil, validationError("field %s: a money field takes {\"value\",\"currency\"} (got %s)", f.ExternalID, short(raw))
		}
		n, ok := number(m["value"])
		cur, _ := m["currency"].(string)
		if !ok || cur == "" {
			return nil, validationError("field %s: a money field needs a value and a currency (got %s)", f.ExternalID, short(raw))
		}
		return map[string]any{"value": moneyString(strconv.FormatFloat(n, 'f', -1, 64)), "currency": cur}, nil
	case TypeDate:
		// Flat dates are UTC, and written as such (start_utc), so that
		// the user's zone cannot shift them; a date without a time has
		// no zone and is written as a date.
		put := func(out map[string]any, k, s string) {
			if len(strings.TrimSpace(s)) <= len("2006-01-02") {
				out[k+"_date"] = strings.TrimSpace(s)
			} else {
				out[k+"_utc"] = s
			}
		}
		switch x := v.(type) {
		case string:
			out := map[string]any{}
			put(out, "start", x)
			return out, nil
		case map[string]any:
			out := map[string]any{}
			for _, k := range []string{"start", "end"} {
				if s, ok := x[k].(string); ok && s != "" {
					put(out, k, s)
				}
			}
			if out["start_date"] == nil && out["start_utc"] == nil {
				return nil, validationError("field %s: a date needs a start (got %s)", f.ExternalID, short(raw))
			}
			return out, nil
		}
		return nil, validationError("field %s: a date field takes {\"start\",\"end\"} (got %s)", f.ExternalID, short(raw))
	case TypeCategory, TypeQuestion:
		ids := []int64{}
		for _, e := range list(v) {
			txt := ""
			switch x := e.(type) {
			case string:
				txt = x
			case map[string]any:
				txt, _ = x["text"].(string)
			}
			if txt == "" {
				return nil, validationError("field %s: options are given by their text (got %s)", f.ExternalID, short(raw))
			}
			id, ok := optionByText(f, txt)
			if !ok {
				return nil, validationError("field %s: the target app has no option %q", f.ExternalID, txt)
			}
			ids = append(ids, id)
		}
		if len(ids) > 1 && !f.Multiple {
			return nil, validationError("field %s: the target field takes one option (got %d)", f.ExternalID, len(ids))
		}
		return ids, nil
	case TypeApp:
		ids := []int64{}
		for _, e := range list(v) {
			src, ok := refID(e, "item_id")
			if !ok {
				return nil, validationError("field %s: a reference is {\"item_id\":N} (got %s)", f.ExternalID, short(raw))
			}
			id, found, err := resolve(ctx, src)
			if err != nil {
				return nil, err
			}
			if !found {
				conv.dropped = append(conv.dropped, fmt.Sprintf("%s -> source item %d", f.ExternalID, src))
				continue
			}
			ids = append(ids, id)
		}
		return ids, nil
	case TypeContact:
		ids := []int64{}
		for _, e := range list(v) {
			id, ok := refID(e, "profile_id")
			if !ok {
				return nil, validationError("field %s: a contact is {\"profile_id\":N} (got %s)", f.ExternalID, short(raw))
			}
			ids = append(ids, id)
		}
		return ids, nil
	case TypeEmail, TypePhone:
		out := []map[string]string{}
		for _, e := range list(v) {
			switch x := e.(type) {
			case string:
				out = append(out, map[string]string{"type": "other", "value": x})
			case map[string]any:
				val, _ := x["value"].(string)
				typ, _ := x["type"].(string)
				if typ == "" {
					typ = "other"
				}
				if val == "" {
					return nil, validationError("field %s: needs {\"type\",\"value\"} (got %s)", f.ExternalID, short(raw))
				}
				out = append(out, map[string]string{"type": typ, "value": val})
			default:
				return nil, validationError("field %s: needs {\"type\",\"value\"} (got %s)", f.ExternalID, short(raw))
			}
		}
		return out, nil
	case TypeTel:
		for _, e := range list(v) {
			switch x := e.(type) {
			case string:
				return x, nil
			case map[string]any:
				if s, ok := x["value"].(string); ok {
					return s, nil
				}
			}
		}
		return nil, validationError("field %s: a phone number is a string (got %s)", f.ExternalID, short(raw))
	case TypeLocation:
		out := []map[string]any{}
		for _, e := range list(v) {
			switch x := e.(type) {
			case string:
				out = append(out, map[string]any{"value": x})
			case map[string]any:
				m := map[string]any{}
				for _, k := range []string{"value", "lat", "lng"} {
					if x[k] != nil {
						m[k] = x[k]
					}
				}
				if s, _ := m["value"].(string); s == "" {
					return nil, validationError("field %s: a location needs a value (got %s)", f.ExternalID, short(raw))
				}
				out = append(out, m)
			}
		}
		return out, nil
	}
	return nil, validationError("field %s: fields of type %s cannot be written", f.ExternalID, f.Type)
}

func decodeLoose(raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

func list(v any) []any {
	if l, ok := v.([]any); ok {
		return l
	}
	return []any{v}
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case string:
		f, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		return f, err == nil
	}
	return 0, false
}

func refID(v any, key string) (int64, bool) {
	if m, ok := v.(map[string]any); ok {
		v = m[key]
	}
	n, ok := number(v)
	if !ok || n <= 0 || n != math.Trunc(n) {
		return 0, false
	}
	return int64(n), true
}

// optionByText finds an option by its text: exactly, or else ignoring
// case and surrounding space.
func optionByText(f *FieldDef, txt string) (int64, bool) {
	for _, o := range f.Options {
		if o.Text == txt && o.Status != "deleted" {
			return o.ID, true
		}
	}
	norm := strings.ToLower(strings.TrimSpace(txt))
	for _, o := range f.Options {
		if strings.ToLower(strings.TrimSpace(o.Text)) == norm && o.Status != "deleted" {
			return o.ID, true
		}
	}
	return 0, false
}

func short(raw json.RawMessage) string {
	if len(raw) > 80 {
		return string(raw[:77]) + "..."
	}
	return string(raw)
}

// slug makes a label comparable with an external id: "Due date" is
// "due-date".
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(strings.TrimSpace(s)) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimRight(b.String(), "-")
}

// fieldIndex resolves field names to the fields of an app.
type fieldIndex struct {
	app     *AppDef
	byExt   map[string]*FieldDef
	byLabel map[string]*FieldDef // lowercased label
	bySlug  map[string]*FieldDef
	// sourceLabels maps source external ids to their labels, when the
	// source is a Podio app, for the match by label.
	sourceLabels map[string]string
}

func newFieldIndex(app *AppDef, sourceLabels map[string]string) *fieldIndex {
	ix := &fieldIndex{app: app, byExt: map[string]*FieldDef{}, byLabel: map[string]*FieldDef{},
		bySlug: map[string]*FieldDef{}, sourceLabels: sourceLabels}
	for i := range app.Fields {
		f := &app.Fields[i]
		ix.byExt[f.ExternalID] = f
		if l := strings.ToLower(strings.TrimSpace(f.Label)); l != "" {
			if _, dup := ix.byLabel[l]; !dup {
				ix.byLabel[l] = f
			}
		}
		if s := slug(f.Label); s != "" {
			if _, dup := ix.bySlug[s]; !dup {
				ix.bySlug[s] = f
			}
		}
	}
	return ix
}

// resolve finds the target field for a name: by external_id, then by
// label (the source field's label when known, else the name itself as a
// label or a label's slug).
func (ix *fieldIndex) resolve(name string) *FieldDef {
	if f := ix.byExt[name]; f != nil {
		return f
	}
	if digits(name) {
		// A Podio field id, as the original tool's mappings give them.
		for i := range ix.app.Fields {
			if strconv.FormatInt(ix.app.Fields[i].FieldID, 10) == name {
				return &ix.app.Fields[i]
			}
		}
	}
	if l, ok := ix.sourceLabels[name]; ok {
		if f := ix.byLabel[strings.ToLower(strings.TrimSpace(l))]; f != nil {
			return f
		}
	}
	if f := ix.byLabel[strings.ToLower(strings.TrimSpace(name))]; f != nil {
		return f
	}
	return ix.bySlug[slug(name)]
}

// writableNames lists the fields a write can set, for error messages.
func (ix *fieldIndex) writableNames() []string {
	var out []string
	for _, f := range ix.app.Fields {
		if writable[f.Type] {
			out = append(out, f.ExternalID)
		}
	}
	slices.Sort(out)
	return out
}
