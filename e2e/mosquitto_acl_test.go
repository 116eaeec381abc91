package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/internal/pki"
	"github.com/tether-edge/tether/protocol"
)

// deployFiles puts deploy/mosquitto's tether.acl into dir, with a broker
// certificate for 127.0.0.1 (server.pem, server-key.pem, ca.pem), as an
// administrator would into /etc/mosquitto/tether; it returns the CA file.
func deployFiles(t *testing.T, dir string) string {
	t.Helper()
	acl, err := os.ReadFile("../deploy/mosquitto/tether.acl")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tether.acl"), acl, 0o600); err != nil {
		t.Fatal(err)
	}
	files, err := pki.Init(filepath.Join(dir, "pki"), []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	for src, dst := range map[string]string{files.CACert: "ca.pem", files.ServerCert: "server.pem", files.ServerKey: "server-key.pem"} {
		b, err := os.ReadFile(src)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, dst), b, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "ca.pem")
}

// deployedMosquitto runs Mosquitto on deploy/mosquitto's mosquitto.conf,
// with its listeners moved to free loopback ports and its paths into dir
// (see deployFiles and credential). It returns the addresses of the
// devices', users' and WebSocket listeners.
func deployedMosquitto(t *testing.T, dir string) (m *mosquitto, devAddr, userAddr, wsAddr string) {
	t.Helper()
	raw, err := os.ReadFile("../deploy/mosquitto/mosquitto.conf")
	if err != nil {
		t.Fatal(err)
	}
	devAddr, userAddr, wsAddr = freePort(t), freePort(t), freePort(t)
	listeners := map[string]string{"8883": devAddr, "8884": userAddr, "8083": wsAddr}
	var conf []string
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 2 && f[0] == "listener":
			a, ok := listeners[f[1]]
			if !ok {
				t.Fatalf("deploy/mosquitto/mosquitto.conf: unexpected %q", l)
			}
			host, port, _ := net.SplitHostPort(a)
			l = "listener " + port + " " + host
			delete(listeners, f[1])
		case len(f) > 0 && (f[0] == "pid_file" || f[0] == "log_dest" || f[0] == "log_type"):
			continue // startMosquitto logs to stderr
		}
		l = strings.ReplaceAll(l, "/etc/mosquitto/tether/", dir+"/")
		l = strings.ReplaceAll(l, "/var/lib/mosquitto/", dir+"/")
		conf = append(conf, l)
	}
	if len(listeners) > 0 {
		t.Fatalf("deploy/mosquitto/mosquitto.conf lacks the listeners %v", listeners)
	}
	return startMosquitto(t, dir, strings.Join(conf, "\n"), devAddr, userAddr, wsAddr), devAddr, userAddr, wsAddr
}

// credential runs deploy/mosquitto/tether-mosquitto and returns the secret
// (or token) it prints.
func credential(t *testing.T, dir string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("mosquitto_passwd"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("mosquitto_passwd is not installed (it comes with Debian's mosquitto package)")
		}
		t.Skip("mosquitto_passwd is not installed")
	}
	cmd := exec.Command("../deploy/mosquitto/tether-mosquitto", args...)
	cmd.Env = append(os.Environ(), "TETHER_MOSQUITTO_DIR="+dir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tether-mosquitto %v: %v\n%s", args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// recorder is a client that keeps every message it receives, by topic.
type recorder struct {
	c  *bus.Client
	mu sync.Mutex
	by map[string][][]byte
}

func (r *recorder) record(m bus.Message) {
	r.mu.Lock()
	r.by[m.Topic] = append(r.by[m.Topic], m.Payload)
	r.mu.Unlock()
}

func (r *recorder) got(topic string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.by[topic])
}

func TestMosquittoDeployConfig(t *testing.T) {
	mosquittoPath(t)
	t.Parallel()
	begin := time.Now()
	dir := t.TempDir()
	ca := deployFiles(t, dir)
	plannerPW := credential(t, dir, "planner")
	operator := credential(t, dir, "token", "operator")
	viewer := credential(t, dir, "token", "viewer")
	devicePW := map[string]string{}
	for _, id := range []string{"da", "db", "dx"} {
		devicePW[id] = credential(t, dir, "device", id)
	}
	_, devAddr, userAddr, wsAddr := deployedMosquitto(t, dir)

	// The planner on the users' listener, over TLS, with its password.
	f := &cfleet{t: t, dataDir: t.TempDir(), mqtt: userAddr, work: t.TempDir(), events: map[string][]protocol.Event{}, reports: map[string]protocol.Reported{}}
	srv := start(t, "tether", []string{"TETHER_BROKER_PASSWORD=" + plannerPW}, "server", "--data-dir", filepath.Join(f.dataDir, "server"),
		"--broker", "mqtts://"+userAddr, "--broker-username", "tether-planner", "--broker-ca-file", ca,
		"--http-addr", "127.0.0.1:0", "--dashboard-ws-port", fmt.Sprint(portOf(wsAddr)), "--dashboard-ws-tls")
	srv.waitLine("Access:")
	f.server = srv
	f.env = []string{"TETHER_BROKER=mqtts://" + userAddr, "TETHER_CA_FILE=" + ca, "TETHER_TOKEN=" + operator}
	viewerEnv := []string{"TETHER_BROKER=mqtts://" + userAddr, "TETHER_CA_FILE=" + ca, "TETHER_TOKEN=" + viewer}

	// Devices on the devices' listener: username and client id = device id.
	var devs []*cdevice
	for _, id := range []string{"da", "db"} {
		d := &cdevice{f: f, id: id, dir: t.TempDir()}
		d.args = append([]string{"run", "--device-id", id, "--broker", "mqtts://" + devAddr, "--ca-file", ca, "--username", id,
			"--password", devicePW[id], "--data-dir", d.dir, "--keepalive", "2s", "--no-podman", "--label", "member=yes"}, plannerKeyArgs(f.dataDir)...)
		d.start()
		devs = append(devs, d)
	}
	for _, d := range devs {
		f.presence(d.id, protocol.Online) // as the operator
	}
	f.runDoc("web", "id: web\ntype: system\ngroups:\n  - name: g\n    constraints:\n      - {attribute: \"${device.labels.member}\", value: \"yes\"}\n"+f.workloadTask("1"))
	f.converged("web", 1, "da", "db")
	for _, d := range devs {
		d.oneAlive()
	}
	t.Logf("a signed job runs on both devices through the deployed Mosquitto (TLS, passwords, ACLs) %s after the start", time.Since(begin).Round(time.Millisecond))

	// Admin: keys are the server's, identities the broker's.
	if r := run(t, f.env, "tether", "keys", "list"); r.code != 0 {
		t.Errorf("keys list as operator: exit %d", r.code)
	}
	if r := run(t, f.env, "tether", "acl", "token", "create", "--role", "viewer"); r.code == 0 || !strings.Contains(r.stderr, "external broker") || !strings.Contains(r.stderr, "docs/brokers.md") {
		t.Errorf("acl token create on an external broker: exit %d, %q; want a refusal that points to docs/brokers.md", r.code, r.stderr)
	}
	// A viewer reads status; the CLI's barrier works with its client id
	// under token/<id>/.
	if r := run(t, viewerEnv, "tether", "device", "list", "-o", "json"); r.code != 0 || !strings.Contains(r.stdout, `"da"`) {
		t.Errorf("device list as viewer: exit %d", r.code)
	}

	topics := protocol.Topics{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tlsCfg, err := pki.ClientConfig(ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	dial := func(addr, user, pass, clientID string) (*bus.Client, error) {
		return bus.Dial(ctx, bus.Config{Brokers: []string{"mqtts://" + addr}, TLS: tlsCfg.Clone(), Username: user, Password: pass,
			ClientID: clientID, CleanSession: true, ConnectTimeout: 5 * time.Second, Log: zerolog.Nop()})
	}
	opTok, _ := protocol.ParseToken(operator)
	viewTok, _ := protocol.ParseToken(viewer)
	opClient, err := dial(userAddr, protocol.TokenUsername(opTok.ID), opTok.Secret, protocol.TokenUsername(opTok.ID)+"/observer")
	if err != nil {
		t.Fatal(err)
	}
	defer opClient.Close()
	obs := &recorder{c: opClient, by: map[string][][]byte{}}
	for _, filter := range []string{topics.DevicesFilter(protocol.KindReported), topics.DevicesFilter(protocol.KindPresence), topics.JobsFilter()} {
		if err := opClient.Subscribe(ctx, filter, 1, obs.record); err != nil {
			t.Fatalf("operator subscribe %s: %v", filter, err)
		}
	}
	// settled returns once everything the publisher sent before is
	// delivered to the observer, if it was allowed at all: Mosquitto
	// handles a client's packets in order, so after the publisher's own
	// barrier its earlier publishes are queued for the observer, and the
	// observer's barrier flushes them.
	settled := func(publisher *bus.Client) {
		t.Helper()
		if err := publisher.Barrier(ctx, topics.Base()); err != nil {
			t.Fatalf("publisher barrier: %v", err)
		}
		if err := opClient.Barrier(ctx, topics.Base()); err != nil {
			t.Fatalf("observer barrier: %v", err)
		}
	}

	// Probes: device dx (no edged: its own connection would be taken
	// over) and a viewer subscribe to what they must not read, retained
	// (desired state, job documents) and live (the next version). Mosquitto
	// with an acl_file grants every SUBSCRIBE and checks each message on
	// delivery; a refusal (SUBACK 0x80) would do as well.
	dx, err := dial(devAddr, "dx", devicePW["dx"], "dx")
	if err != nil {
		t.Fatal(err)
	}
	defer dx.Close()
	vc, err := dial(userAddr, protocol.TokenUsername(viewTok.ID), viewTok.Secret, protocol.TokenUsername(viewTok.ID)+"/probe")
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	dxGot := &recorder{c: dx, by: map[string][][]byte{}}
	vcGot := &recorder{c: vc, by: map[string][][]byte{}}
	for _, p := range []struct {
		r       *recorder
		who     string
		filters []string
	}{
		{dxGot, "device dx", []string{topics.Desired("db"), topics.DevicesFilter(protocol.KindDesired), topics.Reported("db"), topics.Base() + "/#", "#"}},
		{vcGot, "the viewer", []string{topics.Desired("da"), topics.JobsFilter(), topics.Job("web"), topics.Base() + "/#", "#"}},
	} {
		for _, filter := range p.filters {
			err := p.r.c.Subscribe(ctx, filter, 1, p.r.record)
			switch {
			case errors.Is(err, bus.ErrRefused):
				t.Logf("%s subscribing to %s: refused", p.who, filter)
			case err != nil:
				t.Errorf("%s subscribing to %s: %v", p.who, filter, err)
			}
		}
	}
	// Forged messages from dx (a report and a presence for db) and from
	// the viewer (a job document), then dx's own report.
	for _, m := range []struct {
		c     *bus.Client
		topic string
	}{{dx, topics.Reported("db")}, {dx, topics.Presence("db")}, {vc, topics.Job("evil")}, {dx, topics.Reported("dx")}} {
		// Mosquitto acknowledges a refused QoS 1 publish of MQTT 3.1.1 and
		// drops it; an error would be fine too.
		if err := m.c.Publish(ctx, m.topic, []byte(`{"forged":true}`), false, 1); err != nil {
			t.Logf("publish %s: %v", m.topic, err)
		}
	}
	// A new version: new desired state for both devices, live.
	f.runDoc("web", "id: web\ntype: system\ngroups:\n  - name: g\n    constraints:\n      - {attribute: \"${device.labels.member}\", value: \"yes\"}\n"+f.workloadTask("2"))
	f.converged("web", 2, "da", "db")
	settled(dx)
	settled(vc)
	if obs.got(topics.Reported("dx")) != 1 {
		t.Errorf("dx's own report reached the operator %d times, want 1", obs.got(topics.Reported("dx")))
	}
	obs.mu.Lock()
	for _, topic := range []string{topics.Reported("db"), topics.Presence("db"), topics.Job("evil")} {
		for _, p := range obs.by[topic] {
			if strings.Contains(string(p), "forged") {
				t.Errorf("a forged message on %s was delivered: %s", topic, p)
			}
		}
	}
	obs.mu.Unlock()
	// What each probe may read at all (protocol.Topics.Allowed).
	dxMay := func(topic string) bool {
		return strings.HasPrefix(topic, topics.Base()+"/devices/dx/") || strings.HasPrefix(topic, topics.Base()+"/sync/dx/")
	}
	vcMay := func(topic string) bool {
		return topics.Allowed(protocol.Principal{Role: protocol.RoleViewer, Name: viewTok.ID}, protocol.TokenUsername(viewTok.ID)+"/probe", topic, false)
	}
	for _, p := range []struct {
		r   *recorder
		who string
		may func(string) bool
	}{{dxGot, "device dx", dxMay}, {vcGot, "the viewer", vcMay}} {
		p.r.mu.Lock()
		n := 0
		for topic, ms := range p.r.by {
			n += len(ms)
			if !p.may(topic) {
				t.Errorf("%s received %d messages on %s", p.who, len(ms), topic)
			}
		}
		p.r.mu.Unlock()
		t.Logf("%s received %d messages in all", p.who, n)
	}
	if vcGot.got(topics.JobStatus("web")) == 0 {
		t.Error("the viewer received no job status: the probe proves nothing")
	}
	dx.Close()

	// On the devices' listener the client id is the username: dx asking
	// for da's id does not take over da's session (no offline presence,
	// which da's will would publish).
	presenceBefore := obs.got(topics.Presence("da"))
	hijack, err := dial(devAddr, "dx", devicePW["dx"], "da")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // a take-over would publish da's will at once
	if err := opClient.Barrier(ctx, topics.Base()); err != nil {
		t.Fatal(err)
	}
	hijack.Close()
	obs.mu.Lock()
	for _, p := range obs.by[topics.Presence("da")][presenceBefore:] {
		if pr, err := protocol.DecodePresence(p); err == nil && pr.Status == protocol.Offline {
			t.Errorf("dx connecting with client id da took over da's session: %s", p)
		}
	}
	obs.mu.Unlock()

	// The dashboard is pointed at the WebSocket listener, and a viewer
	// gets in there.
	res, err := http.Get(strings.TrimSpace(strings.TrimPrefix(srv.waitLine("Dashboard:"), "Dashboard:")) + "config.json")
	if err == nil {
		var page struct {
			WSPort int  `json:"ws_port"`
			WSTLS  bool `json:"ws_tls"`
		}
		err = json.NewDecoder(res.Body).Decode(&page)
		res.Body.Close()
		if err == nil && (page.WSPort != portOf(wsAddr) || !page.WSTLS) {
			err = fmt.Errorf("config.json: %+v", page)
		}
	}
	if err != nil {
		t.Errorf("dashboard config: %v", err)
	}
	ws, err := bus.Dial(ctx, bus.Config{Brokers: []string{"wss://" + wsAddr + "/mqtt"}, TLS: tlsCfg.Clone(),
		Username: protocol.TokenUsername(viewTok.ID), Password: viewTok.Secret, ClientID: protocol.TokenUsername(viewTok.ID) + "/dash-1", CleanSession: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatalf("viewer over wss://: %v", err)
	}
	presences := make(chan bus.Message, 8)
	if err := ws.Subscribe(ctx, topics.DevicesFilter(protocol.KindPresence), 1, func(m bus.Message) { presences <- m }); err != nil {
		t.Errorf("viewer over wss:// subscribing to presence: %v", err)
	}
	select {
	case <-presences:
	case <-time.After(10 * time.Second):
		t.Error("no retained presence over wss://")
	}
	ws.Close()
	t.Logf("deployed Mosquitto: every check done %s after the start", time.Since(begin).Round(time.Millisecond))
}

// portOf is the port of a host:port.
func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	var n int
	fmt.Sscan(p, &n)
	return n
}
