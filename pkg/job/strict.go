package job

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
)

// DecodeStrict decodes the JSON object data into dst, a pointer to a
// struct, more strictly than encoding/json: every key must be spelled
// exactly as a field's json tag (encoding/json would also take "Source",
// or "ſtate_dir" by Unicode case folding, for "source" and "state_dir"),
// and no key may be given twice. It walks the document beside dst's type
// first, so that every problem, wherever it is, comes back as a FieldError
// with the path of the field ("source.count"), in one Errors value; only
// then does it decode. Fields that data leaves out keep the values dst
// has.
func DecodeStrict(data []byte, dst any) error {
	rv := reflect.ValueOf(dst)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return errors.New("decode: the destination must be a non-nil pointer")
	}
	var v Errors
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		v.Add("", "must be a JSON object")
		return v
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var root json.RawMessage
	if err := dec.Decode(&root); err != nil {
		v.Add("", "is not valid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
		return v
	}
	if _, err := dec.Token(); err == nil {
		v.Add("", "has data after the JSON object")
		return v
	}
	checkValue(&v, "", rv.Type().Elem(), root)
	if len(v) > 0 {
		return v
	}
	if err := json.Unmarshal(root, dst); err != nil {
		// The walk above accepts only what decodes; this is a bug, not
		// bad input, but it is still reported as one.
		v.Add("", "%s", strings.TrimPrefix(err.Error(), "json: "))
		return v
	}
	return nil
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// checkValue checks raw against type t and records every problem under
// path.
func checkValue(v *Errors, path string, t reflect.Type, raw json.RawMessage) {
	if bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return
	}
	pt := reflect.PointerTo(t)
	if t.Kind() != reflect.Pointer && (pt.Implements(jsonUnmarshaler) || pt.Implements(textUnmarshaler)) {
		if err := json.Unmarshal(raw, reflect.New(t).Interface()); err != nil {
			v.Add(path, "%s", decodeMessage(err))
		}
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		checkValue(v, path, t.Elem(), raw)
	case reflect.Struct:
		fields := fieldsOf(t)
		eachKey(v, path, raw, func(key string, val json.RawMessage) {
			f, ok := fields[key]
			if !ok {
				v.Add(join(path, key), "unknown field")
				return
			}
			checkValue(v, join(path, key), f, val)
		})
	case reflect.Map:
		if t.Key().Kind() != reflect.String {
			checkLeaf(v, path, t, raw)
			return
		}
		eachKey(v, path, raw, func(key string, val json.RawMessage) {
			checkValue(v, join(path, key), t.Elem(), val)
		})
	case reflect.Slice, reflect.Array:
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			v.Add(path, "must be a JSON array")
			return
		}
		for i, it := range items {
			checkValue(v, fmt.Sprintf("%s[%d]", path, i), t.Elem(), it)
		}
	default:
		checkLeaf(v, path, t, raw)
	}
}

func checkLeaf(v *Errors, path string, t reflect.Type, raw json.RawMessage) {
	if err := json.Unmarshal(raw, reflect.New(t).Interface()); err != nil {
		v.Add(path, "%s", decodeMessage(err))
	}
}

// decodeMessage says what was wrong with a value, without the Go type
// names encoding/json puts in its messages.
func decodeMessage(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		want := te.Type.Kind().String()
		switch te.Type.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			want = "an integer"
		case reflect.Float32, reflect.Float64:
			want = "a number"
		case reflect.String:
			want = "a string"
		case reflect.Bool:
			want = "true or false"
		case reflect.Struct, reflect.Map:
			want = "an object"
		case reflect.Slice, reflect.Array:
			want = "an array"
		}
		return fmt.Sprintf("must be %s (got a JSON %s)", want, te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// eachKey calls fn for every key of the object raw, in order, and records
// a key given twice, or raw not being an object.
func eachKey(v *Errors, path string, raw json.RawMessage, fn func(string, json.RawMessage)) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		v.Add(path, "must be a JSON object")
		return
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			v.Add(path, "is not valid JSON")
			return
		}
		key, _ := tok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			v.Add(join(path, key), "is not valid JSON")
			return
		}
		if seen[key] {
			v.Add(join(path, key), "is given more than once")
			continue
		}
		seen[key] = true
		fn(key, val)
	}
}

var fieldCache sync.Map // reflect.Type -> map[string]reflect.Type

// fieldsOf maps the exact JSON names of t's fields, those of embedded
// structs included, to their types.
func fieldsOf(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			et := f.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for k, v := range fieldsOf(et) {
					if _, ok := m[k]; !ok {
						m[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = f.Type
	}
	fieldCache.Store(t, m)
	return m
}
