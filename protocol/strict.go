package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

// decodeStrict decodes JSON into v after checking the generic shape of the
// document against v's type, so that unknown fields and wrongly typed values
// are reported with their full path instead of Go's first-error-only message.
func decodeStrict(data []byte, v any) error {
	fatal, shape := decodeShape(data, v)
	if fatal != nil {
		return fatal
	}
	return errors.Join(shape...)
}

// decodeShape decodes JSON into v as far as it can. fatal is set when the
// data is not one JSON document at all; shape lists every unknown field and
// wrongly typed value, with v still filled from everything else, so that a
// caller can validate the rest and report all problems at once.
func decodeShape(data []byte, v any) (fatal error, shape []error) {
	var generic any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&generic); err != nil {
		return FieldError{Message: "invalid JSON: " + err.Error()}, nil
	}
	if dec.More() {
		return FieldError{Message: "invalid JSON: trailing data after the document"}, nil
	}
	checkShape(generic, reflect.TypeOf(v).Elem(), "", &shape)
	if err := json.Unmarshal(data, v); err != nil && len(shape) == 0 {
		return FieldError{Message: err.Error()}, nil
	}
	return nil, shape
}

var unmarshalerType = reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number:
		return "number"
	case string:
		return "string"
	case []any:
		return "list"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

func checkShape(v any, t reflect.Type, path string, errs *[]error) {
	if v == nil {
		return // null leaves the zero value; validation decides if that is allowed
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		raw, _ := json.Marshal(v)
		if err := reflect.New(t).Interface().(json.Unmarshaler).UnmarshalJSON(raw); err != nil {
			*errs = append(*errs, FieldError{Path: path, Message: err.Error()})
		}
		return
	}
	bad := func(want string) {
		*errs = append(*errs, fieldErr(path, "want %s, got %s", want, describe(v)))
	}
	switch t.Kind() {
	case reflect.String:
		if _, ok := v.(string); !ok {
			bad("string")
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			bad("boolean")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := v.(json.Number)
		if !ok {
			bad("integer")
			return
		}
		if _, err := n.Int64(); err != nil {
			if _, uerr := strconv.ParseUint(n.String(), 10, 64); uerr != nil {
				*errs = append(*errs, fieldErr(path, "want integer, got %s", n))
				return
			}
		}
		if t.Kind() >= reflect.Uint && strings.HasPrefix(n.String(), "-") {
			*errs = append(*errs, fieldErr(path, "want non-negative integer, got %s", n))
		}
	case reflect.Float32, reflect.Float64:
		if _, ok := v.(json.Number); !ok {
			bad("number")
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			bad("list")
			return
		}
		for i, e := range list {
			checkShape(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			bad("object")
			return
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			checkShape(obj[k], t.Elem(), join(path, k), errs)
		}
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			bad("object")
			return
		}
		fields := map[string]reflect.Type{}
		names := []string{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			fields[name] = f.Type
			names = append(names, name)
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				*errs = append(*errs, fieldErr(join(path, k), "unknown field, want one of %s", strings.Join(names, ", ")))
				continue
			}
			checkShape(obj[k], ft, join(path, k), errs)
		}
	case reflect.Interface:
		// any value is accepted
	}
}
