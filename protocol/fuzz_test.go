package protocol

import (
	"bytes"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"
)

// Every decoder that reads from the network must never panic, and whatever
// it accepts must survive an encode/decode round trip.

func seedAll(f *testing.F) {
	for _, m := range goldenMessages() {
		raw, _ := Encode(m)
		f.Add(raw)
	}
	f.Add([]byte(helloYAML))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
}

func FuzzParseJob(f *testing.F) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := ParseJob(data)
		if err != nil {
			if len(FieldErrors(err)) == 0 {
				t.Fatal("error without field errors")
			}
			return
		}
		raw, err := Encode(j)
		if err != nil {
			t.Fatal(err)
		}
		j2, err := ParseJob(raw)
		if err != nil {
			t.Fatalf("accepted job does not parse again: %v\n%s", err, raw)
		}
		if !j.Equal(j2) {
			t.Fatalf("round trip changed the job:\n%s", raw)
		}
	})
}

func fuzzDecoder[T any](f *testing.F, dec func([]byte) (T, error)) {
	seedAll(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := dec(data)
		if err != nil {
			return
		}
		raw, err := Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dec(raw); err != nil {
			t.Fatalf("accepted message does not decode again: %v\n%s", err, raw)
		}
	})
}

func FuzzDecodeDesired(f *testing.F)         { fuzzDecoder(f, DecodeDesired) }
func FuzzDecodeReported(f *testing.F)        { fuzzDecoder(f, DecodeReported) }
func FuzzDecodePresence(f *testing.F)        { fuzzDecoder(f, DecodePresence) }
func FuzzDecodeFacts(f *testing.F)           { fuzzDecoder(f, DecodeFacts) }
func FuzzDecodeEvent(f *testing.F)           { fuzzDecoder(f, DecodeEvent) }
func FuzzDecodeJobStatus(f *testing.F)       { fuzzDecoder(f, DecodeJobStatus) }
func FuzzDecodeFleetSummary(f *testing.F)    { fuzzDecoder(f, DecodeFleetSummary) }
func FuzzDecodeDeviceIndexPage(f *testing.F) { fuzzDecoder(f, DecodeDeviceIndexPage) }

func FuzzDecodePromote(f *testing.F)    { fuzzDecoder(f, DecodePromote) }
func FuzzDecodeScheduling(f *testing.F) { fuzzDecoder(f, DecodeScheduling) }
func FuzzDecodeJobHistory(f *testing.F) { fuzzDecoder(f, DecodeJobHistory) }
func FuzzDecodePlanResult(f *testing.F) { fuzzDecoder(f, DecodePlanResult) }

func FuzzParseTopic(f *testing.F) {
	var tp Topics
	for _, s := range []string{tp.Job("a"), tp.JobStatus("a"), tp.Desired("d"), tp.Events("d"), tp.DeviceIndex(12), "tether/v1/fleet/devices/007",
		tp.Promote("a"), tp.History("a"), tp.Plan("n"), tp.PlanResult("n"), "tether/v1/devices/+/x", "#", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		kind, id, err := tp.Parse(topic)
		if err != nil {
			return
		}
		if ValidateID(id) != nil {
			t.Fatalf("Parse(%q) returned invalid id %q", topic, id)
		}
		var rebuilt string
		switch kind {
		case KindJob:
			rebuilt = tp.Job(id)
		case KindJobStatus:
			rebuilt = tp.JobStatus(id)
		case KindPromote:
			rebuilt = tp.Promote(id)
		case KindHistory:
			rebuilt = tp.History(id)
		case KindPlan:
			rebuilt = tp.Plan(id)
		case KindPlanResult:
			rebuilt = tp.PlanResult(id)
		case KindDeviceIndex:
			n, err := ParsePage(id)
			if err != nil {
				t.Fatalf("Parse(%q) returned page %q: %v", topic, id, err)
			}
			rebuilt = tp.DeviceIndex(n)
		default:
			rebuilt = tp.Device(id, kind)
		}
		if rebuilt != topic {
			t.Fatalf("Parse(%q) = %s %q, which builds %q", topic, kind, id, rebuilt)
		}
	})
}

func FuzzDecodeAdminRequest(f *testing.F)  { fuzzDecoder(f, DecodeAdminRequest) }
func FuzzDecodeAdminResult(f *testing.F)   { fuzzDecoder(f, DecodeAdminResult) }
func FuzzDecodeEnrollRequest(f *testing.F) { fuzzDecoder(f, DecodeEnrollRequest) }
func FuzzDecodeEnrollResult(f *testing.F)  { fuzzDecoder(f, DecodeEnrollResult) }

// FuzzVerifyDesired: whatever a hostile broker delivers, verification never
// panics, and nothing but the untouched signed document verifies.
func FuzzVerifyDesired(f *testing.F) {
	seedAll(f)
	trusted := []ed25519.PublicKey{goldenKey().Public().(ed25519.PublicKey)}
	good, _ := Encode(goldenSignedDesired(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := DecodeDesired(data)
		if err != nil {
			return
		}
		if _, err := VerifyDesired(d, trusted); err != nil {
			return
		}
		want, _ := DecodeDesired(good)
		a, _ := SignedBytes(d)
		b, _ := SignedBytes(want)
		if !bytes.Equal(a, b) {
			t.Fatalf("a document other than the signed one verified:\n%s", data)
		}
	})
}

// FuzzAllowed: the ACL never panics on hostile topics and client ids, and
// never lets a device write outside its own topics.
func FuzzAllowed(f *testing.F) {
	var tp Topics
	for _, s := range []string{tp.Desired("a"), tp.Reported("b"), "tether/v1/#", "#", "tether/v1/sync/a/x", "tether/v1/devices/a/+", "tether/v1/devices/+/presence", tp.DeviceIndex(0)} {
		f.Add(s, "a", true)
	}
	f.Fuzz(func(t *testing.T, topic, clientID string, write bool) {
		dev := Principal{Role: RoleDevice, Name: "a"}
		if !tp.Allowed(dev, clientID, topic, write) || !write {
			return
		}
		own := strings.HasPrefix(topic, "tether/v1/devices/a/") || strings.HasPrefix(topic, "tether/v1/sync/"+clientID+"/")
		if !own {
			t.Fatalf("device a may write %q as client %q", topic, clientID)
		}
	})
}
