package protocol

import (
	"errors"
	"fmt"
)

// FieldError is one problem in a document, with the path of the field that
// caused it, e.g. "groups[0].tasks[1].driver".
type FieldError struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Message
	}
	return e.Path + ": " + e.Message
}

func fieldErr(path, format string, args ...any) error {
	return FieldError{Path: path, Message: fmt.Sprintf(format, args...)}
}

// FieldErrors flattens an error returned by a decoder or validator of this
// package into its field errors, in the order they were found. Errors that are not field
// errors become a FieldError with an empty path.
func FieldErrors(err error) []FieldError {
	if err == nil {
		return nil
	}
	var out []FieldError
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		var fe FieldError
		if errors.As(e, &fe) {
			out = append(out, fe)
			return
		}
		out = append(out, FieldError{Message: e.Error()})
	}
	walk(err)
	return out
}
