package edged

import (
	"context"
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// accept answers every enrollment request with the token's labels and the
// test planner key, as the planner does for a valid token.
func accept(labels map[string]string) func(string, protocol.EnrollRequest) (protocol.EnrollResult, bool) {
	return func(_ string, req protocol.EnrollRequest) (protocol.EnrollResult, bool) {
		return protocol.EnrollResult{Device: req.Device, OK: true, Labels: labels,
			PlannerKeys: []string{protocol.EncodeKey(pub(testPlannerKey))}}, true
	}
}

// TestEnrollThenRunThenNeverAgain: a device with only an enrollment token
// enrolls (a secret of its own, sent under the token's identity), stores
// its credentials, labels and the planner key, connects as itself and
// applies a document signed with the key it learned; the token's labels
// show in its facts, where configured labels win. Started again with the
// token still configured, it connects with its stored credentials and
// does not enroll again.
func TestEnrollThenRunThenNeverAgain(t *testing.T) {
	t.Parallel()
	r := newFleetRig(t)
	tok := r.addToken("0123456789ab")
	r.answer = accept(map[string]string{"site": "berlin", "tier": "edge"})
	const dev = "n1"
	dir := t.TempDir()
	cfg, _ := r.deviceConfig(dev, dir)
	cfg.EnrollToken = tok.String()
	cfg.Labels = map[string]string{"tier": "lab"}
	ra := startAgent(t, cfg)

	eventually(t, "the device to log in as itself", func() bool { return r.auth.loginsOf(dev) == 1 })
	reqs := r.enrollRequests()
	if len(reqs) != 1 || reqs[0].Device != dev {
		t.Fatalf("enrollment requests %+v, want one for %s", reqs, dev)
	}
	if b, err := base64.RawURLEncoding.DecodeString(reqs[0].Secret); err != nil || len(b) != protocol.MinSecretBytes {
		t.Fatalf("secret %q: %d bytes (%v), want %d random bytes", reqs[0].Secret, len(b), err, protocol.MinSecretBytes)
	}
	if n := r.auth.loginsOf(protocol.TokenUsername(tok.ID)); n != 1 {
		t.Errorf("%d logins with the token, want 1", n)
	}
	id, err := ra.a.state.identity()
	if err != nil || id == nil || id.Username != dev || id.Password != reqs[0].Secret || id.EnrolledBy != tok.ID {
		t.Fatalf("stored identity %+v (%v)", id, err)
	}
	eventually(t, "facts with the token's labels", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		l := r.facts[dev].Labels
		return l["site"] == "berlin" && l["tier"] == "lab"
	})
	r.publish(dev, sign(t, oneAlloc(dev, 1, "web"), testPlannerKey))
	r.waitApplied(dev, 1)
	ra.stop()

	cfg, _ = r.deviceConfig(dev, dir)
	cfg.EnrollToken = tok.String()
	ra = startAgent(t, cfg)
	eventually(t, "the device to log in again with its stored secret", func() bool { return r.auth.loginsOf(dev) == 2 })
	if n := len(r.enrollRequests()); n != 1 {
		t.Fatalf("%d enrollment requests after the restart, want still 1", n)
	}
	if n := r.auth.loginsOf(protocol.TokenUsername(tok.ID)); n != 1 {
		t.Fatalf("%d logins with the token after the restart, want still 1", n)
	}
	r.publish(dev, sign(t, oneAlloc(dev, 2, "web2"), testPlannerKey))
	r.waitApplied(dev, 2)
}

// TestEnrollRefused: the planner's refusal ends edged with the planner's
// reason, after one request, and nothing is stored as the identity.
func TestEnrollRefused(t *testing.T) {
	t.Parallel()
	r := newFleetRig(t)
	tok := r.addToken("00000000beef")
	r.answer = func(_ string, req protocol.EnrollRequest) (protocol.EnrollResult, bool) {
		return protocol.EnrollResult{Device: req.Device, OK: false, Error: "token expired"}, true
	}
	dir := t.TempDir()
	cfg, _ := r.deviceConfig("n2", dir)
	cfg.EnrollToken = tok.String()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "token expired") || ctx.Err() != nil {
		t.Fatalf("Run = %v, want the planner's refusal before the deadline", err)
	}
	if n := len(r.enrollRequests()); n != 1 {
		t.Errorf("%d enrollment requests, want 1 (a refusal is final)", n)
	}
	st, err := openState(filepath.Join(dir, "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if id, err := st.identity(); err != nil || id != nil {
		t.Fatalf("identity stored after a refusal: %+v (%v)", id, err)
	}
}

// TestEnrollTokenRefusedByBroker: a token the broker does not admit (the
// server refuses expired, used-up and revoked tokens, and device ids
// already enrolled, at CONNECT) ends edged at once, without retrying.
func TestEnrollTokenRefusedByBroker(t *testing.T) {
	t.Parallel()
	r := newFleetRig(t)
	cfg, _ := r.deviceConfig("n4", t.TempDir())
	cfg.EnrollToken = "0000000000bb.c2VjcmV0" // never added to the broker
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = a.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "the broker refused enroll token 0000000000bb") || ctx.Err() != nil {
		t.Fatalf("Run = %v, want the broker's refusal before the deadline", err)
	}
	if n := len(r.enrollRequests()); n != 0 {
		t.Errorf("%d enrollment requests got through", n)
	}
}

// TestEnrollAsksAgain: while the planner does not answer, edged asks again,
// with the same secret each time (an answer lost on the way must not leave
// the planner with a secret the device forgot); configured planner keys
// win over the ones the answer names.
func TestEnrollAsksAgain(t *testing.T) {
	t.Parallel()
	r := newFleetRig(t)
	tok := r.addToken("0000000000aa")
	asked := 0
	r.answer = func(_ string, req protocol.EnrollRequest) (protocol.EnrollResult, bool) {
		asked++ // the rig calls answer with its lock released, one at a time
		if asked < 3 {
			return protocol.EnrollResult{}, false
		}
		return protocol.EnrollResult{Device: req.Device, OK: true, PlannerKeys: []string{protocol.EncodeKey(pub(otherKey))}}, true
	}
	const dev = "n3"
	cfg, _ := r.deviceConfig(dev, t.TempDir())
	cfg.EnrollToken = tok.String()
	cfg.PlannerKeys = testPlannerKeys()
	ra := startAgentWith(t, cfg, func(a *Agent) { a.enrollWait = 100 * time.Millisecond })
	eventually(t, "the device to log in as itself", func() bool { return r.auth.loginsOf(dev) == 1 })
	reqs := r.enrollRequests()
	if len(reqs) != 3 {
		t.Fatalf("%d enrollment requests, want 3", len(reqs))
	}
	for _, q := range reqs[1:] {
		if q.Secret != reqs[0].Secret {
			t.Fatal("the secret changed between attempts")
		}
	}
	if keys, _ := ra.a.state.plannerKeys(); len(keys) != 0 {
		t.Errorf("stored the answer's keys %v although keys are configured", keyIDs(keys))
	}
	r.publish(dev, sign(t, oneAlloc(dev, 1, "web"), otherKey))
	eventually(t, "a document signed with the answer's key refused", func() bool { return len(r.refusals(dev)) == 1 })
	r.publish(dev, sign(t, oneAlloc(dev, 2, "web"), testPlannerKey))
	r.waitApplied(dev, 2)
}
