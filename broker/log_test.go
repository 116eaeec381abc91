package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

func TestMochiLogger(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := newMochiLogger(zerolog.New(&buf).Level(zerolog.InfoLevel), new(gate))

	log.Info("added hook", "hook", "bolt-db") // demoted to debug: dropped
	log.With("listener", "tcp").WithGroup("g").Warn("error processing packet",
		"error", errors.New("boom"),
		"pk", packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID:    9, TopicName: "t/1", Payload: []byte("secret-desired-state"),
		})
	// A listener's end-of-connection lines: routine, then not.
	log.Warn("", "error", fmt.Errorf("read connection: %w", io.EOF))
	log.Warn("", "error", fmt.Errorf("resend inflight: %w", packets.ErrProtocolViolationNoPacketID))

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines, want 3:\n%s", len(lines), buf.String())
	}
	if strings.Contains(buf.String(), "secret-desired-state") {
		t.Error("a packet payload reached the log")
	}
	var first, second, third map[string]any
	for i, m := range []*map[string]any{&first, &second, &third} {
		if err := json.Unmarshal([]byte(lines[i]), m); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]any{
		"level": "warn", "message": "error processing packet", "component": "mochi",
		"listener": "tcp", "g.error": "boom", "g.pk": `Publish id=9 qos=1 topic="t/1" bytes=20`,
	}
	for k, v := range want {
		if first[k] != v {
			t.Errorf("first line %s = %v, want %v", k, first[k], v)
		}
	}
	if second["level"] != "info" || second["message"] != "client connection ended" {
		t.Errorf("routine end of connection = %v", second)
	}
	if third["level"] != "warn" || third["message"] != "client connection failed" {
		t.Errorf("failed connection = %v", third)
	}
}
