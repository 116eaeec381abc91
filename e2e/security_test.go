package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
)

// TestSecurity attacks a real `tether server` in its default configuration
// (TLS from a CA it makes, an identity for every client) with real MQTT
// clients over mqtts://, and checks that every attack fails with the
// precise outcome an attacker would see: a refused CONNACK, a SUBACK
// failure, a dropped connection, a message that never reaches anyone, state
// that does not change. One server serves every subtest; each uses its own
// identities, so that they can run in parallel and the per-identity
// connection limit of one never touches another.
func TestSecurity(t *testing.T) {
	s := secStartServer(t)
	base := s.topics.Base()

	// A legitimate device, so that the refusals below prove something: it
	// connects over mqtts:// with the secret `tether device add` printed
	// (through the bus package edged uses) and an operator sees its
	// presence, live and in `tether device list`.
	t.Run("legit_device", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		secret := s.addDevice(t, op, "good")
		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		watch.mustSubscribe(t, s.topics.Presence("good"))

		ctx, cancel := context.WithTimeout(context.Background(), secWait)
		defer cancel()
		begin := time.Now()
		dev, err := bus.Dial(ctx, bus.Config{Brokers: []string{s.url}, TLS: s.tls.Clone(), ClientID: "good",
			Username: "good", Password: secret, CleanSession: true, Log: zerolog.Nop()})
		if err != nil {
			t.Fatalf("the added device cannot connect: %v", err)
		}
		defer dev.Close()
		t.Logf("device connected over mqtts in %s", time.Since(begin).Round(time.Millisecond))
		if err := dev.Publish(ctx, s.topics.Presence("good"), presenceDoc(t, "good", protocol.Online, "legit-good"), true, 1); err != nil {
			t.Fatal(err)
		}
		watch.waitMsg(t, s.topics.Presence("good"), "legit-good")
		// The list comes from the planner's device index, which follows
		// the presence by a pass.
		eventually(t, secWait, "device list to show good online", func() bool {
			out := s.must(t, op, "device", "list")
			return strings.Contains(out, "good") && strings.Contains(out, "online")
		})
	})

	// The CLI needs a token, and says so; with the bootstrap token file and
	// the CA it works.
	t.Run("cli_needs_token", func(t *testing.T) {
		t.Parallel()
		r := run(t, s.env(""), "tether", "job", "status", "x")
		if r.code == 0 || !strings.Contains(r.stderr, "token") {
			t.Errorf("job status without a token: exit %d, want non-zero and an error that mentions the token", r.code)
		}
		r = run(t, []string{"TETHER_BROKER=", "TETHER_CA_FILE=", "TETHER_TOKEN=", "TETHER_TOKEN_FILE="}, "tether", "--broker", s.url,
			"--token-file", filepath.Join(s.dataDir, "operator.token"), "--ca-file", s.caFile, "job", "status", "x")
		if r.code != 1 || !strings.Contains(r.stderr, "job x not found") {
			t.Errorf("job status with the operator token: exit %d, want 1 and \"job x not found\" (the answer of a connected client)", r.code)
		}
	})

	// 1. No identity, no entry; no TLS, no entry.
	t.Run("unauthenticated", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		s.addDevice(t, op, "t1-dev")
		s.expectRefused(t, "no credentials", "", "", "t1-anon")
		s.expectRefused(t, "unknown user", "nobody", "secret", "nobody")
		s.expectRefused(t, "device with a wrong secret", "t1-dev", secRandom(32), "t1-dev")
		s.expectRefused(t, "token with a wrong secret", protocol.TokenUsername(op.ID), secRandom(32), tokenClientID(op, "x"))
		s.expectRefused(t, "unknown token", protocol.TokenUsername("0123456789ab"), secRandom(32), "token/0123456789ab/x")
		s.expectRefused(t, "the planner's user with a guess", "tether-planner", secRandom(24), "tether-planner-x")

		c, err := s.dialURL(t, s.wsURL, "", "", "t1-ws")
		if code := refusedCode(err); code != secNotAuthorized {
			if err == nil {
				c.c.Disconnect(0)
			}
			t.Errorf("anonymous over wss://: %v (CONNACK %d), want a refusal with 0x05", err, code)
		}

		// Plaintext MQTT to the TLS port: the TLS handshake fails, no CONNACK.
		conn, code, err := s.rawConnect(secConnect("", "", "t1-plain"), true)
		if err == nil {
			conn.Close()
			t.Errorf("plaintext CONNECT to the TLS port got a CONNACK (0x%02x)", code)
		} else {
			t.Logf("plaintext CONNECT to the TLS port: %v", err)
		}
		_, err = s.dialURL(t, "tcp://"+s.addr, "", "", "t1-plain")
		if err == nil || refusedCode(err) != -1 {
			t.Errorf("paho over mqtt:// to the TLS port: %v, want a network failure, not a CONNACK", err)
		}
		// A client that does not trust the server's CA cannot be fooled
		// into talking to another, and cannot talk to this one either.
		tc, err := tls.Dial("tcp", s.addr, &tls.Config{MinVersion: tls.VersionTLS12})
		if err == nil {
			tc.Close()
			t.Errorf("TLS without the server's CA verified")
		} else if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("TLS without the server's CA: %v, want a certificate error", err)
		}
	})

	// 2. Device A reads nothing of device B.
	t.Run("device_reads_other_device", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		secA, secB := s.addDevice(t, op, "t2-a"), s.addDevice(t, op, "t2-b")
		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		watch.mustSubscribe(t, base+"/devices/t2-b/#")
		b := s.mustDial(t, "t2-b", secB, "t2-b")
		b.mustPublish(t, s.topics.Presence("t2-b"), true, presenceDoc(t, "t2-b", protocol.Online, "b-presence"))
		b.mustPublish(t, s.topics.Reported("t2-b"), true, []byte(`{"device":"t2-b","observed_generation":0,"time":"2026-01-01T00:00:00Z","allocations":[],"error":"b-reported"}`))
		watch.waitMsg(t, s.topics.Reported("t2-b"), "b-reported")

		a := s.mustDial(t, "t2-a", secA, "t2-a")
		for _, f := range []string{
			s.topics.Desired("t2-b"), s.topics.Reported("t2-b"), s.topics.Presence("t2-b"), s.topics.Events("t2-b"),
			base + "/devices/t2-b/#", base + "/devices/+/desired", base + "/devices/+/reported",
			"#", base + "/#", "tether/#", "+/v1/devices/t2-b/desired", "$SYS/#",
			"$share/g/" + s.topics.Desired("t2-b"), "$share/g/" + base + "/#",
			base + "/sync/t2-b/+",
		} {
			a.expectSubRefused(t, f)
		}
		// Its own desired state it may read.
		a.mustSubscribe(t, s.topics.Desired("t2-a"))

		b.mustPublish(t, s.topics.Events("t2-b"), false, []byte(`{"device":"t2-b","seq":1,"time":"2026-01-01T00:00:00Z","type":"x","message":"b-event"}`))
		watch.waitMsg(t, s.topics.Events("t2-b"), "b-event")
		a.barrier(t)
		if got := a.received(base + "/devices/t2-b/"); len(got) > 0 {
			t.Errorf("device t2-a received device t2-b's messages: %v", got)
		}
	})

	// 3. Device A cannot write B's topics (nor its own desired state).
	t.Run("device_writes_other_device", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		secA, secB := s.addDevice(t, op, "t3-a"), s.addDevice(t, op, "t3-b")
		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		watch.mustSubscribe(t, base+"/devices/t3-b/#")
		b := s.mustDial(t, "t3-b", secB, "t3-b")
		b.mustPublish(t, s.topics.Presence("t3-b"), true, presenceDoc(t, "t3-b", protocol.Online, "legit-b"))
		watch.waitMsg(t, s.topics.Presence("t3-b"), "legit-b")

		// QoS 0: dropped without a word.
		a := s.mustDial(t, "t3-a", secA, "t3-a")
		a.publish(s.topics.Presence("t3-b"), 0, true, presenceDoc(t, "t3-b", protocol.Offline, "forged-by-a"))
		a.publish(s.topics.Reported("t3-b"), 0, true, []byte(`{"device":"t3-b","error":"forged-by-a"}`))
		a.publish(s.topics.Events("t3-b"), 0, false, []byte(`{"device":"t3-b","message":"forged-by-a"}`))
		a.barrier(t) // the broker has handled them; a is still connected
		watch.barrier(t)
		watch.expectNothing(t, "forged-by-a")

		// QoS 1: MQTT 3.1.1 has no negative PUBACK, so mochi disconnects.
		for _, topic := range []string{s.topics.Reported("t3-b"), s.topics.Presence("t3-b"), s.topics.Desired("t3-a")} {
			a := s.mustDial(t, "t3-a", secA, "t3-a")
			begin := time.Now()
			a.publish(topic, 1, true, []byte(`{"device":"t3-b","status":"offline","version":"forged-by-a"}`))
			a.waitLost(t, "device publishes QoS 1 to "+topic, begin)
		}
		watch.barrier(t)
		watch.expectNothing(t, "forged-by-a")

		// State unchanged: a new subscriber gets B's own retained presence.
		late := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "late"))
		late.mustSubscribe(t, s.topics.Presence("t3-b"))
		late.barrier(t)
		late.waitMsg(t, s.topics.Presence("t3-b"), "legit-b")
		late.expectNothing(t, "forged-by-a")
		b.expectUp(t, "after the forgeries")
	})

	// 4. A device cannot submit a job.
	t.Run("device_submits_job", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		secA := s.addDevice(t, op, "t4-a")
		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		watch.mustSubscribe(t, base+"/jobs/t4-evil/#")
		watch.mustSubscribe(t, s.topics.Job("t4-evil"))

		a := s.mustDial(t, "t4-a", secA, "t4-a")
		a.publish(s.topics.Job("t4-evil"), 0, true, jobDoc(t, "t4-evil"))
		a.barrier(t)
		begin := time.Now()
		a.publish(s.topics.Job("t4-evil"), 1, true, jobDoc(t, "t4-evil"))
		a.waitLost(t, "device publishes a job at QoS 1", begin)
		watch.barrier(t)
		if got := watch.received(base + "/jobs/t4-evil"); len(got) > 0 {
			t.Errorf("the device's job reached an operator: %v", got)
		}
		s.expectNoJob(t, op, "t4-evil")
	})

	// 5. A viewer reads status and writes nothing.
	t.Run("viewer", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		v := s.newToken(t, "viewer")
		vUser := protocol.TokenUsername(v.ID)
		devSecret := s.addDevice(t, op, "t5-dev")

		c := s.mustDial(t, vUser, v.Secret, tokenClientID(v, "dash"))
		for _, f := range []string{
			base + "/devices/+/desired", s.topics.Desired("t5-dev"), base + "/jobs/+", s.topics.Job("t5-job"),
			base + "/jobs/#", base + "/#", "#", base + "/admin/#", base + "/plans/+", base + "/enroll/#",
			base + "/devices/t5-dev/#", base + "/devices/+/+",
		} {
			c.expectSubRefused(t, f)
		}
		c.mustSubscribe(t, base+"/jobs/+/status")
		c.mustSubscribe(t, base+"/devices/+/presence")

		dev := s.mustDial(t, "t5-dev", devSecret, "t5-dev")
		dev.mustPublish(t, s.topics.Presence("t5-dev"), true, presenceDoc(t, "t5-dev", protocol.Online, "t5-online"))
		c.waitMsg(t, s.topics.Presence("t5-dev"), "t5-online")
		file := filepath.Join(t.TempDir(), "job.yaml")
		if err := os.WriteFile(file, []byte("id: t5-job\ngroups:\n  - name: g\n    tasks:\n      - {name: t, driver: exec, config: {command: [/bin/true]}}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, s.env(op.String()), "tether", "job", "run", "--detach", "--timeout", "30s", file)
		c.waitMsg(t, s.topics.JobStatus("t5-job"), "t5-job")
		c.barrier(t) // its own sync topic: the one thing it may publish
		if got := c.received(s.topics.Job("t5-job")); slices.ContainsFunc(got, func(m secMsg) bool { return m.Topic == s.topics.Job("t5-job") }) {
			t.Errorf("the viewer received a job document")
		}

		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		watch.mustSubscribe(t, s.topics.Desired("t5-dev"))
		watch.mustSubscribe(t, base+"/jobs/t5-evil/#")
		watch.mustSubscribe(t, s.topics.Job("t5-evil"))
		for _, w := range []struct {
			topic   string
			payload []byte
		}{
			{s.topics.Job("t5-evil"), jobDoc(t, "t5-evil")},
			{s.topics.Desired("t5-dev"), []byte(`{"device":"t5-dev","generation":99,"allocations":[],"note":"forged-by-viewer"}`)},
			{s.topics.Promote("t5-job"), []byte(`{"forged-by-viewer":true}`)},
			{s.topics.Presence("t5-dev"), presenceDoc(t, "t5-dev", protocol.Offline, "forged-by-viewer")},
		} {
			c := s.mustDial(t, vUser, v.Secret, tokenClientID(v, "w"))
			begin := time.Now()
			c.publish(w.topic, 1, true, w.payload)
			c.waitLost(t, "viewer publishes to "+w.topic, begin)
		}
		watch.barrier(t)
		watch.expectNothing(t, "forged-by-viewer")
		if got := watch.received(base + "/jobs/t5-evil"); len(got) > 0 {
			t.Errorf("the viewer's job reached an operator: %v", got)
		}
		s.expectNoJob(t, op, "t5-evil")
	})

	// 6. Nobody takes over another's session by its client id.
	t.Run("client_id_takeover", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		other := s.newToken(t, "viewer")
		secA, secB := s.addDevice(t, op, "t6-a"), s.addDevice(t, op, "t6-b")
		enroll := s.enrollToken(t, op, "--uses", "5", "--ttl", "1h")
		b := s.mustDial(t, "t6-b", secB, "t6-b")

		opUser := protocol.TokenUsername(op.ID)
		s.expectRefused(t, "device A as client id t6-b", "t6-a", secA, "t6-b")
		s.expectRefused(t, "operator as client id t6-b", opUser, op.Secret, "t6-b")
		s.expectRefused(t, "operator as another token's client id", opUser, op.Secret, tokenClientID(other, "x"))
		s.expectRefused(t, "viewer as the operator's client id", protocol.TokenUsername(other.ID), other.Secret, tokenClientID(op, "watch"))
		s.expectRefused(t, "operator without its prefix", opUser, op.Secret, "cli-x")
		s.expectRefused(t, "operator with the bare prefix", opUser, op.Secret, opUser+"/")
		s.expectRefused(t, "operator as its username", opUser, op.Secret, opUser)
		s.expectRefused(t, "enrollment token as enrolled device t6-b", protocol.TokenUsername(enroll.ID), enroll.Secret, "t6-b")
		b.expectUp(t, "after the takeover attempts")
		s.mustDial(t, opUser, op.Secret, tokenClientID(op, "ok")) // its own prefix works
	})

	// 7. A revoked device is cut off at once and for good.
	t.Run("revoked_device", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		secA := s.addDevice(t, op, "t7-a")
		enroll := s.enrollToken(t, op, "--uses", "5", "--ttl", "1h")
		a := s.mustDial(t, "t7-a", secA, "t7-a")
		a.mustSubscribe(t, s.topics.Desired("t7-a"))

		begin := time.Now()
		s.must(t, op, "device", "revoke", "t7-a")
		cli := time.Since(begin)
		d := a.waitLost(t, "device revoke", begin)
		t.Logf("revoke: CLI took %s, connection closed %s after the CLI started", cli.Round(time.Millisecond), d.Round(time.Millisecond))
		s.expectRefused(t, "revoked device reconnects", "t7-a", secA, "t7-a")
		s.expectRefused(t, "enrollment as the revoked device", protocol.TokenUsername(enroll.ID), enroll.Secret, "t7-a")

		// Nor through another device id's enrollment topic.
		e := s.mustDial(t, protocol.TokenUsername(enroll.ID), enroll.Secret, "t7-other")
		req, _ := json.Marshal(protocol.EnrollRequest{Device: "t7-a", Secret: secRandom(32)})
		begin = time.Now()
		e.publish(s.topics.Enroll(enroll.ID, "t7-a"), 1, false, req)
		e.waitLost(t, "enrollment for another device id than its client id", begin)

		out := s.must(t, op, "device", "identities")
		if !slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
			return strings.HasPrefix(l, "t7-a ") && strings.HasSuffix(strings.TrimSpace(l), "revoked")
		}) {
			t.Errorf("device identities does not show t7-a revoked:\n%s", out)
		}
	})

	// 8. Enrollment: once per token use, once per device id, and nothing
	// else.
	t.Run("enrollment", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		s.addDevice(t, op, "t8-added")
		tok := s.enrollToken(t, op, "--uses", "1", "--ttl", "1h", "--label", "site=berlin")
		user := protocol.TokenUsername(tok.ID)

		e := s.mustDial(t, user, tok.Secret, "newdev")
		for _, f := range []string{
			base + "/#", "#", s.topics.Desired("newdev"), base + "/devices/newdev/#", base + "/enroll/#",
			base + "/enroll/" + tok.ID + "/+/result", s.topics.EnrollResult(tok.ID, "other"), base + "/admin/#",
			base + "/jobs/+/status",
		} {
			e.expectSubRefused(t, f)
		}
		for _, topic := range []string{s.topics.Presence("newdev"), s.topics.Job("t8-evil")} {
			c := s.mustDial(t, user, tok.Secret, "newdev")
			begin := time.Now()
			c.publish(topic, 1, false, []byte("{}"))
			c.waitLost(t, "enrollment client publishes to "+topic, begin)
		}
		e = s.mustDial(t, user, tok.Secret, "newdev") // the one above was taken over
		e.mustSubscribe(t, s.topics.EnrollResult(tok.ID, "newdev"))
		secret := secRandom(32)
		req, _ := json.Marshal(protocol.EnrollRequest{Device: "newdev", Secret: secret})
		begin := time.Now()
		e.mustPublish(t, s.topics.Enroll(tok.ID, "newdev"), false, req)
		m := e.waitMsg(t, s.topics.EnrollResult(tok.ID, "newdev"), `"device":"newdev"`)
		t.Logf("enrollment answered in %s", time.Since(begin).Round(time.Millisecond))
		res, err := protocol.DecodeEnrollResult(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if !res.OK || res.Labels["site"] != "berlin" || !slices.Equal(res.PlannerKeys, s.plannerKeys(t)) {
			t.Fatalf("enrollment answer %+v: want ok, label site=berlin and the keys of planner-key.pub %v", res, s.plannerKeys(t))
		}

		// The device is itself now.
		d := s.mustDial(t, "newdev", secret, "newdev")
		d.mustSubscribe(t, s.topics.Desired("newdev"))
		d.mustPublish(t, s.topics.Presence("newdev"), true, presenceDoc(t, "newdev", protocol.Online, "enrolled"))
		if out := s.must(t, op, "device", "identities"); !strings.Contains(out, "newdev") || !strings.Contains(out, tok.ID) {
			t.Errorf("identities do not show newdev enrolled by %s:\n%s", tok.ID, out)
		}

		s.expectRefused(t, "second enrollment with a used-up token", user, tok.Secret, "newdev2")
		tok2 := s.enrollToken(t, op, "--uses", "5", "--ttl", "1h")
		user2 := protocol.TokenUsername(tok2.ID)
		s.expectRefused(t, "enrollment of an enrolled id", user2, tok2.Secret, "newdev")
		s.expectRefused(t, "enrollment of an added id", user2, tok2.Secret, "t8-added")
		s.expectRefused(t, "enrollment token with another's secret", user2, tok.Secret, "newdev3")

		// Requests the planner refuses: a weak secret, a body naming
		// another device.
		e3 := s.mustDial(t, user2, tok2.Secret, "newdev3")
		e3.mustSubscribe(t, s.topics.EnrollResult(tok2.ID, "newdev3"))
		for _, bad := range []protocol.EnrollRequest{{Device: "newdev3", Secret: secRandom(16)}, {Device: "t8-added", Secret: secRandom(32)}} {
			req, _ := json.Marshal(bad)
			e3.mustPublish(t, s.topics.Enroll(tok2.ID, "newdev3"), false, req)
		}
		e3.barrier(t)
		deadline := time.Now().Add(secWait)
		for len(e3.received(s.topics.EnrollResult(tok2.ID, "newdev3"))) < 2 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		got := e3.received(s.topics.EnrollResult(tok2.ID, "newdev3"))
		if len(got) != 2 {
			t.Fatalf("want 2 answers to bad enrollment requests, got %v", got)
		}
		for _, m := range got {
			if r, err := protocol.DecodeEnrollResult(m.Payload); err != nil || r.OK || r.Error == "" {
				t.Errorf("bad enrollment request answered %s, want a refusal", m.Payload)
			}
		}
		s.expectRefused(t, "device newdev3 after refused requests", "newdev3", secret, "newdev3")
	})

	// 9a. A packet over 1 MiB costs the sender its connection, nobody else
	// anything.
	t.Run("oversize_packet", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		sec := s.addDevice(t, op, "t9-big")
		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		watch.mustSubscribe(t, s.topics.Events("t9-big"))
		c := s.mustDial(t, "t9-big", sec, "t9-big")
		big := make([]byte, 1<<20+1024)
		copy(big, "oversize")
		begin := time.Now()
		c.publish(s.topics.Events("t9-big"), 0, false, big)
		c.waitLost(t, "publish of 1 MiB + 1 KiB", begin)
		watch.expectUp(t, "after the oversize packet")
		watch.expectNothing(t, "oversize")
		s.mustDial(t, "t9-big", sec, "t9-big").barrier(t) // it may come back
	})

	// 9b. A publish flood costs the sender its connection.
	t.Run("publish_flood", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		sec := s.addDevice(t, op, "t9-flood")
		watch := s.mustDial(t, protocol.TokenUsername(op.ID), op.Secret, tokenClientID(op, "watch"))
		c := s.mustDial(t, "t9-flood", sec, "t9-flood")
		ev := []byte(`{"device":"t9-flood","seq":1,"time":"2026-01-01T00:00:00Z","type":"flood"}`)
		begin := time.Now()
		var n atomic.Int64
		// paho blocks a publish made as the link drops for its write
		// timeout: flood from a goroutine that stops once it noticed.
		go func() {
			for n.Load() < 5000 && c.c.IsConnectionOpen() {
				c.publish(s.topics.Events("t9-flood"), 0, false, ev)
				n.Add(1)
			}
		}()
		c.waitLost(t, "QoS 0 publishes as fast as possible", begin)
		t.Logf("the client had handed %d publishes to paho when it saw the link drop", n.Load())
		eventually(t, secWait, `the server to log "publish flood"`, func() bool { return s.logged("publish flood", "t9-flood") })
		watch.expectUp(t, "after the publish flood")
	})

	// 9c. A connection flood with one identity is cut to the burst.
	t.Run("connection_flood", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		sec := s.addDevice(t, op, "t9-conn")
		watchSecret := s.addDevice(t, op, "t9-other")
		accepted, refused, firstRefused := 0, 0, -1
		begin := time.Now()
		for i := range 50 {
			conn, code, err := s.rawConnect(secConnect("t9-conn", sec, "t9-conn"), false)
			switch {
			case err != nil:
				t.Fatalf("connect %d: %v", i, err)
			case code == 0:
				accepted++
			case code == secNotAuthorized:
				refused++
				if firstRefused < 0 {
					firstRefused = i
				}
			default:
				t.Errorf("connect %d: CONNACK 0x%02x", i, code)
			}
			conn.Close()
		}
		elapsed := time.Since(begin)
		t.Logf("50 connects in %s: %d accepted, %d refused (first refusal: attempt %d)", elapsed.Round(time.Millisecond), accepted, refused, firstRefused)
		if refused == 0 || firstRefused < 20 || accepted > 20+int(elapsed/time.Second)+1 {
			t.Errorf("want the first 20 accepted, then refusals but for about one a second")
		}
		if !s.logged("too many connection attempts", "t9-conn") {
			t.Errorf("the server did not log why it refused")
		}
		s.mustDial(t, "t9-other", watchSecret, "t9-other").barrier(t)
		s.must(t, op, "device", "identities")
	})

	// 10. A revoked operator token is cut off at once and for good.
	t.Run("revoked_operator_token", func(t *testing.T) {
		t.Parallel()
		op := s.newToken(t, "operator")
		victim := s.newToken(t, "operator")
		vUser := protocol.TokenUsername(victim.ID)
		c := s.mustDial(t, vUser, victim.Secret, tokenClientID(victim, "live"))
		c.mustSubscribe(t, base+"/jobs/+/status")
		begin := time.Now()
		out := s.must(t, op, "acl", "token", "revoke", victim.ID)
		if !strings.Contains(out, "revoked") {
			t.Errorf("acl token revoke printed %q", out)
		}
		c.waitLost(t, "acl token revoke", begin)
		s.expectRefused(t, "revoked token reconnects", vUser, victim.Secret, tokenClientID(victim, "again"))
		if r := run(t, s.env(victim.String()), "tether", "job", "status", "x"); r.code == 0 || !strings.Contains(r.stderr, "refused") {
			t.Errorf("CLI with the revoked token: exit %d, want a refusal", r.code)
		}
		if out := s.must(t, op, "acl", "token", "list"); !slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
			return strings.HasPrefix(l, victim.ID) && strings.HasSuffix(strings.TrimSpace(l), "revoked")
		}) {
			t.Errorf("token list does not show %s revoked:\n%s", victim.ID, out)
		}
	})

	// An expired token is refused, and its live connection may do
	// nothing more.
	t.Run("expired_token", func(t *testing.T) {
		t.Parallel()
		out := s.must(t, s.op, "acl", "token", "create", "--role", "viewer", "--ttl", "2s")
		v, err := protocol.ParseToken(out)
		if err != nil {
			t.Fatal(err)
		}
		user := protocol.TokenUsername(v.ID)
		c := s.mustDial(t, user, v.Secret, tokenClientID(v, "live"))
		c.barrier(t)
		begin := time.Now()
		eventually(t, secWait, "the expired token to be refused", func() bool {
			c, err := s.dial(t, user, v.Secret, tokenClientID(v, "again"))
			if err == nil {
				c.c.Disconnect(0)
				return false
			}
			if code := refusedCode(err); code != secNotAuthorized {
				t.Fatalf("connect with an expired token: %v", err)
			}
			return true
		})
		t.Logf("token with a 2s ttl refused %s after its first use", time.Since(begin).Round(time.Millisecond))
		begin = time.Now()
		c.publish(s.topics.Base()+"/sync/"+c.id+"/x", 1, false, []byte("x"))
		c.waitLost(t, "the live connection of an expired token publishes to its own sync topic", begin)
	})

	// 11. Admin answers (they carry new secrets) reach only the operator
	// who asked.
	t.Run("admin_answers", func(t *testing.T) {
		t.Parallel()
		op1 := s.newToken(t, "operator")
		op2 := s.newToken(t, "operator")
		v := s.newToken(t, "viewer")

		vc := s.mustDial(t, protocol.TokenUsername(v.ID), v.Secret, tokenClientID(v, "x"))
		for _, f := range []string{base + "/admin/#", base + "/admin/" + op1.ID + "/#", base + "/admin/+/+/result", base + "/#"} {
			vc.expectSubRefused(t, f)
		}
		o2 := s.mustDial(t, protocol.TokenUsername(op2.ID), op2.Secret, tokenClientID(op2, "x"))
		for _, f := range []string{base + "/admin/" + op1.ID + "/#", base + "/admin/" + op1.ID + "/+/result", base + "/admin/" + op1.ID + "/+"} {
			o2.expectSubRefused(t, f)
		}
		o2.mustSubscribe(t, base+"/admin/#")
		o2.mustSubscribe(t, base+"/#")

		created, err := protocol.ParseToken(s.must(t, op1, "acl", "token", "create", "--role", "viewer", "--name", "secret-bearing"))
		if err != nil {
			t.Fatal(err)
		}
		// op2's own admin request: its answer comes back through the same
		// filter, after op1's answer was published.
		req, _ := json.Marshal(protocol.AdminRequest{Op: protocol.OpTokenList})
		o2.mustPublish(t, s.topics.Admin(op2.ID, "n1"), false, req)
		o2.waitMsg(t, s.topics.AdminResult(op2.ID, "n1"), `"ok":true`)
		o2.barrier(t)
		vc.barrier(t)
		if got := o2.received(base + "/admin/" + op1.ID + "/"); len(got) > 0 {
			t.Errorf("operator 2 received operator 1's admin messages: %v", got)
		}
		o2.expectNothing(t, created.Secret)
		vc.expectNothing(t, created.Secret)
		if got := vc.received(""); len(got) > 0 {
			t.Errorf("the viewer received %v", got)
		}
	})
}

// enrollToken creates an enrollment token with `tether enroll token create`.
func (s *secServer) enrollToken(t *testing.T, op protocol.Token, args ...string) protocol.Token {
	t.Helper()
	tok, err := protocol.ParseToken(s.must(t, op, append([]string{"enroll", "token", "create"}, args...)...))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
