// Package cli holds what the tether and edged commands share: logging
// setup and the exit-code error.
package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// NewLogger returns a logger writing to w: human-readable when format is
// "console" (the default on a terminal), JSON lines when "json".
func NewLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("log level %q: want trace, debug, info, warn or error", level)
	}
	var out io.Writer = w
	switch format {
	case "console", "":
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !isTerminal(w)}
	case "json":
	default:
		return zerolog.Logger{}, fmt.Errorf("log format %q: want console or json", format)
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger(), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// ExitError carries an exit code; the message was already printed.
type ExitError struct{ Code int }

func (e ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }
