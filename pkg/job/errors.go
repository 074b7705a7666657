package job

import (
	"fmt"
	"strings"
)

// FieldError is one invalid field, named as the job file spells it.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func (e FieldError) Error() string { return e.Field + ": " + e.Message }

// Errors collects every invalid field of a spec.
type Errors []FieldError

// Add records a problem with field.
func (v *Errors) Add(field, format string, args ...any) {
	*v = append(*v, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
}

// Err returns nil when there is no problem, and the list otherwise.
func (v Errors) Err() error {
	if len(v) == 0 {
		return nil
	}
	return v
}

func (v Errors) Error() string {
	var b strings.Builder
	b.WriteString("invalid job: ")
	for i, e := range v {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(e.Error())
	}
	return b.String()
}
