package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// newMochiLogger returns the *slog.Logger mochi insists on, writing to log
// until g closes.
func newMochiLogger(log zerolog.Logger, g *gate) *slog.Logger {
	return slog.New(&zerologHandler{log: log.With().Str("component", "mochi").Logger(), gate: g})
}

// zerologHandler is a slog.Handler that writes mochi's records to zerolog.
//
// Levels are mapped with deliberate changes:
//   - mochi's Info lines (hook added, listener attached, starting, stopped)
//     repeat what Broker logs itself with better fields: Debug.
//   - mochi's listeners log whatever error ended a connection as a Warn with
//     an empty message. Most are routine for devices on flaky links (EOF,
//     reset, keepalive timeout, takeover, refusals that authHook has already
//     logged): Info "client connection ended". The rest, e.g. a failure to
//     resend a stored message, stay Warn as "client connection failed".
//
// mochi goroutines outlive mochi's Close (its event loop, a listener's last
// log line), so writes pass through a gate that Broker.Close shuts: after
// Close returns nothing is written to the caller's logger.
type zerologHandler struct {
	log    zerolog.Logger
	gate   *gate
	prefix string // group prefix, "a.b." after WithGroup("a").WithGroup("b")
}

// Enabled reports whether a record at lvl could be written at the highest
// level classify may give it.
func (h *zerologHandler) Enabled(_ context.Context, lvl slog.Level) bool {
	var zl zerolog.Level
	switch {
	case lvl >= slog.LevelError:
		zl = zerolog.ErrorLevel
	case lvl >= slog.LevelWarn:
		zl = zerolog.WarnLevel
	default:
		zl = zerolog.DebugLevel
	}
	return zl >= h.log.GetLevel() && zl >= zerolog.GlobalLevel()
}

func (h *zerologHandler) Handle(_ context.Context, r slog.Record) error {
	lvl, msg := classify(r)
	ev := h.log.WithLevel(lvl)
	if ev == nil { // level disabled
		return nil
	}
	fields := make([]any, 0, 2*r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		fields = appendAttr(fields, h.prefix, a)
		return true
	})
	h.gate.do(func() { ev.Fields(fields).Msg(msg) })
	return nil
}

func classify(r slog.Record) (zerolog.Level, string) {
	err := recordError(r)
	switch {
	case r.Level >= slog.LevelError:
		return zerolog.ErrorLevel, r.Message
	case r.Level >= slog.LevelWarn && r.Message == "" && routineConnEnd(err):
		return zerolog.InfoLevel, "client connection ended"
	case r.Level >= slog.LevelWarn && r.Message == "":
		return zerolog.WarnLevel, "client connection failed"
	case r.Level >= slog.LevelWarn:
		return zerolog.WarnLevel, r.Message
	default:
		return zerolog.DebugLevel, r.Message
	}
}

// recordError returns the record's "error" attribute, if it is an error.
func recordError(r slog.Record) error {
	var err error
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			err, _ = a.Value.Resolve().Any().(error)
			return false
		}
		return true
	})
	return err
}

// routineConnEnd reports whether err ends a connection in a way that needs
// no attention.
func routineConnEnd(err error) bool {
	if err == nil {
		return false
	}
	for _, target := range []error{
		io.EOF, io.ErrUnexpectedEOF, net.ErrClosed, os.ErrDeadlineExceeded,
		syscall.ECONNRESET, syscall.EPIPE,
		packets.CodeDisconnect, packets.ErrSessionTakenOver, packets.ErrServerShuttingDown,
		packets.ErrKeepAliveTimeout,
		packets.ErrBadUsernameOrPassword, // authHook logged why
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	var closed *websocket.CloseError
	return errors.As(err, &closed)
}

func (h *zerologHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	fields := make([]any, 0, 2*len(attrs))
	for _, a := range attrs {
		fields = appendAttr(fields, h.prefix, a)
	}
	return &zerologHandler{log: h.log.With().Fields(fields).Logger(), gate: h.gate, prefix: h.prefix}
}

func (h *zerologHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &zerologHandler{log: h.log, gate: h.gate, prefix: h.prefix + name + "."}
}

// appendAttr flattens a into key/value pairs for zerolog's Fields.
func appendAttr(fields []any, prefix string, a slog.Attr) []any {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" { // an empty key inlines the group
			p += a.Key + "."
		}
		for _, ga := range v.Group() {
			fields = appendAttr(fields, p, ga)
		}
		return fields
	}
	if a.Key == "" && v.Any() == nil {
		return fields // slog says to ignore empty attributes
	}
	return append(fields, prefix+a.Key, logValue(v))
}

// logValue converts v for zerolog. mochi logs whole packets ("pk", pk) on
// errors; marshalling them would put payloads (desired state, possibly
// secrets) and every property into the log, so they are summarised.
func logValue(v slog.Value) any {
	switch v.Kind() {
	case slog.KindString:
		return v.String()
	case slog.KindInt64:
		return v.Int64()
	case slog.KindUint64:
		return v.Uint64()
	case slog.KindFloat64:
		return v.Float64()
	case slog.KindBool:
		return v.Bool()
	case slog.KindDuration:
		return v.Duration()
	case slog.KindTime:
		return v.Time()
	}
	switch x := v.Any().(type) {
	case packets.Packet:
		return packetSummary(&x)
	case *packets.Packet:
		if x == nil {
			return nil
		}
		return packetSummary(x)
	default:
		return x
	}
}

func packetSummary(pk *packets.Packet) string {
	return fmt.Sprintf("%s id=%d qos=%d topic=%q bytes=%d",
		packets.PacketNames[pk.FixedHeader.Type], pk.PacketID, pk.FixedHeader.Qos, pk.TopicName, len(pk.Payload))
}
