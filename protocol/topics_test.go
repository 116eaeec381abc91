package protocol

import (
	"strings"
	"testing"
)

func TestTopicsRoundTrip(t *testing.T) {
	for _, root := range []string{"", "tether", "acme/prod"} {
		tp, err := NewTopics(root)
		if err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			topic string
			kind  Kind
			id    string
		}{
			{tp.Job("hello"), KindJob, "hello"},
			{tp.JobStatus("hello"), KindJobStatus, "hello"},
			{tp.Desired("pi-07"), KindDesired, "pi-07"},
			{tp.Reported("pi-07"), KindReported, "pi-07"},
			{tp.Presence("pi-07"), KindPresence, "pi-07"},
			{tp.Facts("pi-07"), KindFacts, "pi-07"},
			{tp.Events("pi-07"), KindEvents, "pi-07"},
			{tp.DeviceIndex(0), KindDeviceIndex, "0"},
			{tp.DeviceIndex(36), KindDeviceIndex, "36"},
		}
		for _, c := range cases {
			kind, id, err := tp.Parse(c.topic)
			if err != nil || kind != c.kind || id != c.id {
				t.Errorf("Parse(%q) = %v, %q, %v; want %v, %q", c.topic, kind, id, err, c.kind, c.id)
			}
		}
	}
}

func TestTopicLayout(t *testing.T) {
	var tp Topics
	want := map[string]string{
		tp.Job("j"):                    "tether/v1/jobs/j",
		tp.JobStatus("j"):              "tether/v1/jobs/j/status",
		tp.Desired("d"):                "tether/v1/devices/d/desired",
		tp.JobsFilter():                "tether/v1/jobs/+",
		tp.JobStatusFilter():           "tether/v1/jobs/+/status",
		tp.DevicesFilter(KindPresence): "tether/v1/devices/+/presence",
		tp.Base():                      "tether/v1",
		tp.DeviceIndex(0):              "tether/v1/fleet/devices/0",
		tp.DeviceIndex(12):             "tether/v1/fleet/devices/12",
		tp.DeviceIndexFilter():         "tether/v1/fleet/devices/+",
	}
	for got, w := range want {
		if got != w {
			t.Errorf("got %q, want %q", got, w)
		}
	}
}

func TestParseRejects(t *testing.T) {
	var tp Topics
	for _, topic := range []string{
		"other/v1/jobs/x",
		"tether/v2/jobs/x",
		"tether/v1/jobs/x/y",
		"tether/v1/jobs/",
		"tether/v1/devices/d/unknown",
		"tether/v1/devices/+/desired",
		"tether/v1/devices/#/desired",
		"tether/v1/jobs/.hidden",
		"tether/v1/jobs/" + strings.Repeat("a", 64),
		"tether/v1/fleet/devices/+",
		"tether/v1/fleet/devices/",
		"tether/v1/fleet/devices/01",
		"tether/v1/fleet/devices/-1",
		"tether/v1/fleet/devices/+1",
		"tether/v1/fleet/devices/1x",
		"tether/v1/fleet/devices/99999999999999999999",
		"tether/v1/fleet/devices/1/x",
		"tether/v1/fleet/other/1",
		"tether/v1/fleet/summary",
	} {
		if _, _, err := tp.Parse(topic); err == nil {
			t.Errorf("Parse(%q) accepted", topic)
		}
	}
}

func TestValidateID(t *testing.T) {
	good := []string{"a", "hello", "pi-07", "web_1", "A.b-c", strings.Repeat("x", 63)}
	bad := []string{"", "a/b", "a+b", "a#", "-a", ".a", "a b", "ä", "a\x00", strings.Repeat("x", 64), "$SYS"}
	for _, s := range good {
		if err := ValidateID(s); err != nil {
			t.Errorf("ValidateID(%q) = %v", s, err)
		}
	}
	for _, s := range bad {
		if err := ValidateID(s); err == nil {
			t.Errorf("ValidateID(%q) accepted", s)
		}
	}
}

func TestNewTopicsRejectsWildcards(t *testing.T) {
	for _, root := range []string{"a/+", "#", "/a", "a/", "a//b", "$SYS"} {
		if _, err := NewTopics(root); err == nil {
			t.Errorf("NewTopics(%q) accepted", root)
		}
	}
}
