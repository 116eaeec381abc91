package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/internal/pki"
	"github.com/tether-edge/tether/protocol"
)

// TestSecurityFindings are attacks that succeeded against the server when
// these tests were first written, and were closed since: each subtest states
// what a secure server must do and fails, with "BUG" in its message, if the
// hole opens again. They run against their own server.
func TestSecurityFindings(t *testing.T) {
	s := secStartServer(t)
	base := s.topics.Base()

	// A client's last will is a publish like any other, but mochi sends it
	// without an ACL check (server.go sendLWT → publishToSubscribers), so
	// whatever topic a client names in its CONNECT must be checked by us:
	// otherwise a viewer or a fleet enrollment token submits jobs to every
	// device, and a device overwrites another's retained presence.
	t.Run("last_will_acl", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		v := s.newToken(t, "viewer")
		secA, secB := s.addDevice(t, op, "w-a"), s.addDevice(t, op, "w-b")
		enroll := s.enrollToken(t, op, "--uses", "5", "--ttl", "1h")

		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		watch.mustSubscribe(t, s.topics.Presence("w-b"))
		watch.mustSubscribe(t, s.topics.Job("w-evil-viewer"))
		watch.mustSubscribe(t, s.topics.Job("w-evil-enroll"))
		watch.mustSubscribe(t, s.topics.Job("w-evil-device"))
		b := s.mustDial(t, "w-b", secB, "w-b")
		b.mustPublish(t, s.topics.Presence("w-b"), true, presenceDoc(t, "w-b", protocol.Online, "legit-b"))
		watch.waitMsg(t, s.topics.Presence("w-b"), "legit-b")

		for _, a := range []struct {
			who, user, pass, clientID, topic string
			payload                          []byte
		}{
			{"device w-a", "w-a", secA, "w-a", s.topics.Presence("w-b"), presenceDoc(t, "w-b", protocol.Offline, "forged-will")},
			{"device w-a", "w-a", secA, "w-a", s.topics.Job("w-evil-device"), jobDoc(t, "w-evil-device")},
			{"a viewer", protocol.TokenUsername(v.ID), v.Secret, tokenClientID(v, "x"), s.topics.Job("w-evil-viewer"), jobDoc(t, "w-evil-viewer")},
			{"an enrollment token", protocol.TokenUsername(enroll.ID), enroll.Secret, "w-new", s.topics.Job("w-evil-enroll"), jobDoc(t, "w-evil-enroll")},
		} {
			cp := secConnect(a.user, a.pass, a.clientID)
			cp.WillFlag, cp.WillQos, cp.WillRetain, cp.WillTopic, cp.WillMessage = true, 1, true, a.topic, a.payload
			conn, code, err := s.rawConnect(cp, false)
			if err != nil {
				t.Logf("%s with a last will on %s: no CONNACK (%v)", a.who, a.topic, err)
				continue
			}
			t.Logf("%s with a last will on %s: CONNACK 0x%02x", a.who, a.topic, code)
			conn.Close() // no DISCONNECT: the broker sends the will
		}
		// The broker sends a will as soon as it reads EOF; give it time.
		deadline := time.Now().Add(secQuiet)
		for time.Now().Before(deadline) && len(watch.received(base+"/jobs/")) == 0 {
			time.Sleep(50 * time.Millisecond)
		}
		watch.barrier(t)
		for _, m := range watch.received("") {
			if strings.Contains(string(m.Payload), "forged-will") || strings.HasPrefix(m.Topic, base+"/jobs/") {
				t.Errorf("BUG: a last will on a topic its client may not publish to was delivered: %s: %.120s", m.Topic, m.Payload)
			}
		}
		for _, id := range []string{"w-evil-device", "w-evil-viewer", "w-evil-enroll"} {
			s.expectNoJob(t, op, id)
		}
		late := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "late"))
		late.mustSubscribe(t, s.topics.Presence("w-b"))
		late.barrier(t)
		if got := late.received(s.topics.Presence("w-b")); len(got) != 1 || !strings.Contains(string(got[0].Payload), "legit-b") {
			t.Errorf("BUG: device w-b's retained presence is no longer its own: %v", got)
		}
	})

	// Revocation disconnects a client, and mochi sends the will of every
	// client it disconnects: an operator token that expects to be revoked
	// leaves a job behind in its will, and revoking it submits the job.
	t.Run("will_on_revocation", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		leaked := s.newToken(t, "operator")
		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		watch.mustSubscribe(t, s.topics.Job("w-revoked"))
		cp := secConnect(protocol.TokenUsername(leaked.ID), leaked.Secret, tokenClientID(leaked, "x"))
		cp.WillFlag, cp.WillQos, cp.WillRetain, cp.WillTopic, cp.WillMessage = true, 1, true, s.topics.Job("w-revoked"), jobDoc(t, "w-revoked")
		conn, code, err := s.rawConnect(cp, false)
		if err != nil || code != 0 {
			t.Fatalf("operator with a will on a job topic: CONNACK 0x%02x, %v", code, err)
		}
		defer conn.Close()
		s.must(t, op, "acl", "token", "revoke", leaked.ID)
		deadline := time.Now().Add(secQuiet)
		for time.Now().Before(deadline) && len(watch.received(s.topics.Job("w-revoked"))) == 0 {
			time.Sleep(50 * time.Millisecond)
		}
		if got := watch.received(s.topics.Job("w-revoked")); len(got) > 0 {
			t.Errorf("BUG: revoking the operator token published its will: %v", got)
		}
		s.expectNoJob(t, op, "w-revoked")
	})

	// A device that logs in with a client certificate has no entry in the
	// registry, so the registry takes its id for free: whoever holds a
	// fleet enrollment token can connect as it (taking over its session),
	// enroll its id with a secret of their choosing, and then be it.
	t.Run("cert_device_enrollment", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		tlsDir := filepath.Join(s.dataDir, "tls")
		if r := run(t, nil, "tether", "tls", "device", "c-cert", "--dir", tlsDir); r.code != 0 {
			t.Fatalf("tls device: exit %d", r.code)
		}
		certTLS, err := pki.ClientConfig(s.caFile, filepath.Join(tlsDir, "clients", "c-cert", "c-cert.pem"), filepath.Join(tlsDir, "clients", "c-cert", "c-cert-key.pem"))
		if err != nil {
			t.Fatal(err)
		}
		dev, err := s.dialTLS(t, certTLS, "ssl://"+s.addr, "", "", "c-cert")
		if err != nil {
			t.Fatalf("the device with a certificate cannot connect: %v", err)
		}
		dev.mustSubscribe(t, s.topics.Desired("c-cert"))

		tok := s.enrollToken(t, op, "--uses", "1", "--ttl", "1h")
		user := protocol.TokenUsername(tok.ID)
		e, err := s.dial(t, user, tok.Secret, "c-cert")
		if err == nil {
			t.Errorf("BUG: an enrollment token connected with the client id of device c-cert, which logs in with a certificate")
			select {
			case l := <-dev.lost:
				t.Errorf("BUG: and took the device's session over: the device lost its connection (%v)", l.err)
			case <-time.After(time.Second):
			}
			e.mustSubscribe(t, s.topics.EnrollResult(tok.ID, "c-cert"))
			secret := secRandom(32)
			req, _ := json.Marshal(protocol.EnrollRequest{Device: "c-cert", Secret: secret})
			e.mustPublish(t, s.topics.Enroll(tok.ID, "c-cert"), false, req)
			m := e.waitMsg(t, s.topics.EnrollResult(tok.ID, "c-cert"), `"device":"c-cert"`)
			if r, _ := protocol.DecodeEnrollResult(m.Payload); r.OK {
				t.Errorf("BUG: the enrollment token enrolled the id of device c-cert with a secret of its choosing")
			}
			if imp, err := s.dial(t, "c-cert", secret, "c-cert"); err == nil {
				code := imp.subscribe(t, s.topics.Desired("c-cert"))
				t.Errorf("BUG: the attacker now logs in as device c-cert with that secret (SUBACK for its desired state: 0x%02x)", code)
			}
		} else if code := refusedCode(err); code != secNotAuthorized {
			t.Errorf("enrollment as c-cert: %v, want CONNACK 0x05", err)
		}
		s.expectRefused(t, "another enrollment as c-cert", user, tok.Secret, "c-cert")
	})

	// The per-identity connection limit counts attempts before it checks
	// the secret, so anyone who knows a device id (it is no secret: it is
	// in every topic) keeps that device out with one wrong guess a second.
	t.Run("connect_limit_lockout", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		secret := s.addDevice(t, op, "l-victim")
		for i := range 25 {
			// From another loopback address: another host to the server.
			conn, code, err := s.rawConnectFrom(secConnect("l-victim", secRandom(32), "l-victim"), false, "127.0.0.2")
			if err != nil {
				t.Fatalf("attempt %d: %v", i, err)
			}
			conn.Close()
			if code != secNotAuthorized {
				t.Fatalf("attempt %d with a wrong secret: CONNACK 0x%02x", i, code)
			}
		}
		c, err := s.dial(t, "l-victim", secret, "l-victim")
		if err != nil {
			t.Errorf("BUG: after 25 wrong guesses by someone else, device l-victim with its right secret is refused: %v", err)
			if s.logged("too many connection attempts", "l-victim") {
				t.Logf("the server refused it for \"too many connection attempts\"")
			}
			return
		}
		c.barrier(t)
	})

	// Every principal may publish to its own sync topics
	// {base}/sync/{client id}/{anything} (bus.Client.Barrier), and the
	// broker keeps a retained copy of each, in memory and in its database,
	// until someone clears it: the weakest identities there are, a fleet
	// enrollment token from firmware or a viewer token from a dashboard,
	// store up to 1 MiB under as many topics as they like, 200 a second.
	t.Run("retained_sync_topics", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		v := s.newToken(t, "viewer")
		enroll := s.enrollToken(t, op, "--uses", "1", "--ttl", "1h")
		for _, who := range []struct{ name, user, pass, clientID string }{
			{"viewer", protocol.TokenUsername(v.ID), v.Secret, tokenClientID(v, "r")},
			{"enrollment token", protocol.TokenUsername(enroll.ID), enroll.Secret, "r-new"},
		} {
			c := s.mustDial(t, who.user, who.pass, who.clientID)
			sync := s.topics.Base() + "/sync/" + who.clientID
			for i := range 20 {
				c.publish(sync+"/r"+strings.Repeat("x", i), 1, true, make([]byte, 64<<10))
			}
			c.barrier(t)
			c.c.Disconnect(0)
			c = s.mustDial(t, who.user, who.pass, who.clientID)
			c.mustSubscribe(t, sync+"/+")
			c.barrier(t)
			if got := c.received(sync + "/"); len(got) > 0 {
				t.Errorf("BUG: the %s stored %d retained messages of 64 KiB on its sync topics and the broker keeps them (want none kept: no one needs a retained sync message)", who.name, len(got))
			}
		}
	})

	// The planner answers admin and enrollment requests from queues of 256
	// and drops what does not fit. A client of a used-up fleet token, which
	// stays connected and may still ask again for its own identity, must
	// neither make the planner hash a secret per request nor push
	// operators' requests (a revocation, say) out of their queue.
	//
	// Not parallel: while the queue is full, the other subtests' admin
	// requests would be dropped too. It runs before them.
	t.Run("enroll_request_flood", func(t *testing.T) {
		op := s.newToken(t, "operator")
		tok := s.enrollToken(t, op, "--uses", "1", "--ttl", "1h")
		e := s.mustDial(t, protocol.TokenUsername(tok.ID), tok.Secret, "f-new")
		e.mustSubscribe(t, s.topics.EnrollResult(tok.ID, "f-new"))
		req, _ := json.Marshal(protocol.EnrollRequest{Device: "f-new", Secret: secRandom(32)})
		e.mustPublish(t, s.topics.Enroll(tok.ID, "f-new"), false, req)
		e.waitMsg(t, s.topics.EnrollResult(tok.ID, "f-new"), `"ok":true`) // the token is used up now
		begin := time.Now()
		for range 800 { // under the publish limit's burst of 2000
			e.publish(s.topics.Enroll(tok.ID, "f-new"), 0, false, req)
		}
		e.barrier(t)
		t.Logf("800 enrollment requests of a used-up token sent in %s", time.Since(begin).Round(time.Millisecond))
		begin = time.Now()
		r := run(t, s.env(op.String()), "tether", "device", "identities")
		t.Logf("an operator's request during the flood: exit %d after %s", r.code, time.Since(begin).Round(time.Millisecond))
		if r.code != 0 {
			t.Errorf("BUG: the operator's admin request was not answered during a flood of a used-up enrollment token's requests")
		}
		if s.logged("admin queue full") {
			t.Errorf("BUG: a used-up enrollment token's requests filled the planner's admin queue: requests were dropped")
		}
	})
}
