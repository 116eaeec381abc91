package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// TestSecuritySignedDesired plays a compromised broker: a server that lets
// anyone publish anything (--insecure-allow-anonymous --insecure-plaintext),
// and an attacker who writes the retained desired state of a real edged
// that pins the planner's key. Whatever the attacker writes, edged must
// keep running what the planner last signed for it, say that it refused
// (in its retained report or with a desired_refused event), and still
// follow the planner's next document.
func TestSecuritySignedDesired(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	if r := run(t, nil, "edged", "run", "--help"); !strings.Contains(r.stdout+r.stderr, "--planner-key-file") {
		t.Skip("edged run has no --planner-key-file yet: nothing to pin the planner's key with")
	}
	s := &secServer{dataDir: t.TempDir()}
	s.proc = start(t, "tether", nil, "server", "--data-dir", s.dataDir, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "",
		"--insecure-allow-anonymous", "--insecure-plaintext")
	s.url = strings.TrimSpace(strings.TrimPrefix(s.proc.waitLine("MQTT broker:"), "MQTT broker:"))
	s.addr = strings.TrimPrefix(s.url, "mqtt://")
	keyFile := filepath.Join(s.dataDir, "planner-key.pub")
	s.proc.waitLine("Planner key:")
	env := []string{"TETHER_BROKER=" + s.url, "TETHER_CA_FILE=", "TETHER_TOKEN=", "TETHER_TOKEN_FILE="}

	obs, err := s.dialURL(t, "tcp://"+s.addr, "", "", "sd-observer")
	if err != nil {
		t.Fatal(err)
	}
	base := s.topics.Base()
	obs.mustSubscribe(t, base+"/devices/+/desired")
	obs.mustSubscribe(t, base+"/devices/+/reported")
	obs.mustSubscribe(t, base+"/devices/+/events")
	for _, id := range []string{"sd-1", "sd-2"} {
		start(t, "edged", nil, "run", "--device-id", id, "--broker", s.url, "--data-dir", t.TempDir(),
			"--fake-runtime", "--planner-key-file", keyFile)
	}

	jobFile := filepath.Join(t.TempDir(), "job.yaml")
	runVersion := func(v string) {
		t.Helper()
		doc := "id: sd-job\ntype: system\ngroups:\n  - name: g\n    tasks:\n      - name: t\n        driver: exec\n        config: {command: [sleep, infinity]}\n        env: {VERSION: \"" + v + "\"}\n"
		if err := os.WriteFile(jobFile, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if r := run(t, env, "tether", "job", "run", "--timeout", "60s", jobFile); r.code != 0 {
			t.Fatalf("job run version %s: exit %d", v, r.code)
		}
	}
	// Messages are decoded on demand from what the observer recorded, in
	// order; from counts those to skip.
	desired := func(dev string) (protocol.Desired, bool) {
		var last protocol.Desired
		ok := false
		for _, m := range obs.received(s.topics.Desired(dev)) {
			if d, err := protocol.DecodeDesired(m.Payload); err == nil && d.Signature != nil {
				last, ok = d, true
			}
		}
		return last, ok
	}
	reported := func(dev string, from int) []protocol.Reported {
		var out []protocol.Reported
		for _, m := range obs.received(s.topics.Reported(dev))[min(from, len(obs.received(s.topics.Reported(dev)))):] {
			if r, err := protocol.DecodeReported(m.Payload); err == nil {
				out = append(out, r)
			}
		}
		return out
	}
	refusals := func(dev string, from int) []string {
		var out []string
		msgs := obs.received(s.topics.Events(dev))
		for _, m := range msgs[min(from, len(msgs)):] {
			if e, err := protocol.DecodeEvent(m.Payload); err == nil && e.Type == protocol.EventDesiredRefused {
				out = append(out, e.Message)
			}
		}
		return out
	}
	running := func(dev string, jobVersion, generation uint64) bool {
		rs := reported(dev, 0)
		if len(rs) == 0 {
			return false
		}
		r := rs[len(rs)-1]
		if r.ObservedGeneration != generation {
			return false
		}
		for _, a := range r.Allocations {
			if a.Job == "sd-job" && a.JobVersion == jobVersion && a.State == protocol.AllocRunning {
				return true
			}
		}
		return false
	}

	runVersion("1")
	eventually(t, secWait, "sd-1 to run version 1", func() bool {
		d, ok := desired("sd-1")
		return ok && running("sd-1", 1, d.Generation)
	})
	old, _ := desired("sd-1")
	runVersion("2")
	var cur protocol.Desired
	eventually(t, secWait, "sd-1 to run version 2", func() bool {
		var ok bool
		cur, ok = desired("sd-1")
		return ok && cur.Generation > old.Generation && running("sd-1", 2, cur.Generation)
	})
	other, ok := desired("sd-2")
	if !ok {
		t.Fatal("no signed desired document for sd-2")
	}

	forged := cur
	forged.Generation += 10
	forged.Allocations = append([]protocol.Allocation(nil), cur.Allocations...)
	forged.Allocations[0].ID, forged.Allocations[0].JobVersion = "forged-alloc", 99
	forged.Signature = nil
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	signedByOther, err := protocol.SignDesired(forged, otherKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	// An endorsement of the attacker's key that names the planner's key as
	// its signer but was signed by the attacker.
	attackerPub := otherKey.Public().(ed25519.PublicKey)
	claim := protocol.Endorse(otherKey, attackerPub)
	claim.By = cur.Signature.Key
	endorsedByClaim, err := protocol.SignDesired(forged, otherKey, []protocol.Endorsement{claim})
	if err != nil {
		t.Fatal(err)
	}
	tampered := cur
	tampered.Generation += 20
	attacker, err := s.dialURL(t, "tcp://"+s.addr, "", "", "sd-attacker")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct {
		name string
		doc  protocol.Desired
		why  string
	}{
		{"unsigned, newer generation", forged, protocol.ErrUnsigned.Error()},
		{"signed by another key", signedByOther, "does not trust"},
		{"signed by another key it claims the planner endorsed", endorsedByClaim, "does not trust"},
		{"signed by the planner, then altered", tampered, protocol.ErrBadSignature.Error()},
		{"replayed from generation " + strconv.FormatUint(old.Generation, 10), old, "older than the applied generation"},
		{"signed for sd-2", other, `addressed to device "sd-2"`},
	} {
		payload, err := json.Marshal(a.doc)
		if err != nil {
			t.Fatal(err)
		}
		fromReports, fromEvents := len(obs.received(s.topics.Reported("sd-1"))), len(obs.received(s.topics.Events("sd-1")))
		// A report counts only with a refusal other than the last one:
		// edged may re-send its report, earlier refusal included.
		prevError := ""
		if rs := reported("sd-1", 0); len(rs) > 0 {
			prevError = rs[len(rs)-1].Error
		}
		begin := time.Now()
		attacker.mustPublish(t, s.topics.Desired("sd-1"), true, payload)
		why := ""
		eventually(t, secWait, "sd-1 to report that it refused the document "+a.name, func() bool {
			if r := refusals("sd-1", fromEvents); len(r) > 0 {
				why = "event: " + r[0]
				return true
			}
			for _, r := range reported("sd-1", fromReports) {
				if r.Error != "" && r.Error != prevError {
					why = "report: " + r.Error
					return true
				}
			}
			return false
		})
		t.Logf("document %s: refusal reported after %s (%s)", a.name, time.Since(begin).Round(time.Millisecond), why)
		if !strings.Contains(why, a.why) {
			t.Errorf("document %s refused with %q, want the reason to mention %q", a.name, why, a.why)
		}
		obs.barrier(t)
		if !running("sd-1", 2, cur.Generation) {
			rs := reported("sd-1", 0)
			t.Fatalf("after the document %s sd-1 no longer runs version 2 at generation %d: %+v", a.name, cur.Generation, rs[len(rs)-1])
		}
	}

	// The planner still drives it: the forged generation left no trace.
	runVersion("3")
	eventually(t, secWait, "sd-1 to run version 3", func() bool {
		d, ok := desired("sd-1")
		return ok && d.Generation > cur.Generation && running("sd-1", 3, d.Generation)
	})
}
