package e2e

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/tether-edge/tether/internal/pki"
	"github.com/tether-edge/tether/protocol"
)

// Helpers of the attack tests (security_test.go): a real `tether server` in
// its default, secure configuration and bare MQTT clients that do exactly
// what an attacker's would, with no reconnects and no retries to hide a
// refusal. Every name here starts with "sec" so as not to collide with the
// helpers of other e2e files.

// secWait bounds every wait for something that must happen.
const secWait = 15 * time.Second

// secQuiet is how long a test watches for something that must not happen
// when there is no event to wait for instead (a last will is sent when the
// broker notices a dropped connection, on its own goroutine).
const secQuiet = 2 * time.Second

// Return codes as an MQTT 3.1.1 client sees them.
const (
	secNotAuthorized = 0x05 // CONNACK: connection refused, not authorized
	secSubFailure    = 0x80 // SUBACK: failure
)

// secServer is a started `tether server` with TLS and identities.
type secServer struct {
	proc    *proc
	dataDir string
	url     string // mqtts://127.0.0.1:port
	addr    string // 127.0.0.1:port
	wsURL   string // wss://127.0.0.1:port
	caFile  string
	tls     *tls.Config // trusts the server's CA
	topics  protocol.Topics
	op      protocol.Token // the bootstrap operator token
}

// secStartServer starts `tether server` with nothing but free ports and a
// data dir: TLS from a CA made in DATA-DIR/tls, every client needs an
// identity.
func secStartServer(t *testing.T) *secServer {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	s := &secServer{dataDir: t.TempDir()}
	s.proc = start(t, "tether", nil, "server", "--data-dir", s.dataDir,
		"--mqtt-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--http-addr", "")
	s.url = strings.TrimSpace(strings.TrimPrefix(s.proc.waitLine("MQTT broker:"), "MQTT broker:"))
	s.wsURL = strings.TrimSpace(strings.TrimPrefix(s.proc.waitLine("WebSocket:"), "WebSocket:"))
	s.proc.waitLine("Access:") // printed last
	if !strings.HasPrefix(s.url, "mqtts://") || !strings.HasPrefix(s.wsURL, "wss://") {
		t.Fatalf("a default tether server must serve TLS only: got %s and %s", s.url, s.wsURL)
	}
	s.addr = strings.TrimPrefix(s.url, "mqtts://")
	s.caFile = filepath.Join(s.dataDir, "tls", "ca.pem")
	var err error
	if s.tls, err = pki.ClientConfig(s.caFile, "", ""); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(s.dataDir, "operator.token"))
	if err != nil {
		t.Fatalf("bootstrap operator token: %v", err)
	}
	if s.op, err = protocol.ParseToken(string(raw)); err != nil {
		t.Fatal(err)
	}
	return s
}

// logged reports whether the server wrote a line containing all of parts.
func (s *secServer) logged(parts ...string) bool {
	s.proc.mu.Lock()
	defer s.proc.mu.Unlock()
	for _, l := range s.proc.lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}

// env points the tether CLI at the server over TLS, with token if given.
func (s *secServer) env(token string) []string {
	env := []string{"TETHER_BROKER=" + s.url, "TETHER_CA_FILE=" + s.caFile, "TETHER_TOKEN=", "TETHER_TOKEN_FILE="}
	if token != "" {
		env = append(env, "TETHER_TOKEN="+token)
	}
	return env
}

// must runs a tether CLI command with token and returns its stdout; it
// fails the test unless the command succeeds.
func (s *secServer) must(t *testing.T, token protocol.Token, args ...string) string {
	t.Helper()
	r := run(t, s.env(token.String()), "tether", args...)
	if r.code != 0 {
		t.Fatalf("tether %s: exit %d: %s", strings.Join(args, " "), r.code, r.stderr)
	}
	return strings.TrimSpace(r.stdout)
}

// newToken creates an operator or viewer token with the bootstrap token.
func (s *secServer) newToken(t *testing.T, role string) protocol.Token {
	t.Helper()
	tok, err := protocol.ParseToken(s.must(t, s.op, "acl", "token", "create", "--role", role, "--name", t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// addDevice gives a device an identity with `tether device add` and returns
// its secret.
func (s *secServer) addDevice(t *testing.T, op protocol.Token, id string) string {
	t.Helper()
	secret := s.must(t, op, "device", "add", id)
	if secret == "" || strings.ContainsAny(secret, " \n") {
		t.Fatalf("device add %s printed %q, want the secret alone", id, secret)
	}
	return secret
}

// plannerKeys reads DATA-DIR/planner-key.pub.
func (s *secServer) plannerKeys(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(s.dataDir, "planner-key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, l := range strings.Split(string(raw), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			keys = append(keys, l)
		}
	}
	return keys
}

// secMsg is a message a secClient received.
type secMsg struct {
	Topic    string
	Payload  []byte
	Retained bool
}

func (m secMsg) String() string { return fmt.Sprintf("%s: %.200s", m.Topic, m.Payload) }

// secClient is a bare paho client: MQTT 3.1.1, clean session, no
// automatic reconnect, every message recorded.
type secClient struct {
	id     string
	topics protocol.Topics
	c      paho.Client
	lost   chan secLost // receives once when the broker drops the link

	mu  sync.Mutex
	got []secMsg
}

// secLost is a lost connection: why, and when paho noticed.
type secLost struct {
	err error
	at  time.Time
}

// tokenClientID is a client id a token may connect with.
func tokenClientID(tok protocol.Token, suffix string) string {
	return protocol.TokenUsername(tok.ID) + "/" + suffix
}

// dial connects over mqtts:// with these credentials; an error is the
// broker's refusal (see refusedCode) or a network failure.
func (s *secServer) dial(t *testing.T, user, pass, clientID string) (*secClient, error) {
	t.Helper()
	return s.dialURL(t, "ssl://"+s.addr, user, pass, clientID)
}

func (s *secServer) dialURL(t *testing.T, url, user, pass, clientID string) (*secClient, error) {
	t.Helper()
	return s.dialTLS(t, s.tls, url, user, pass, clientID)
}

// dialTLS connects with this TLS configuration (a client certificate, say).
func (s *secServer) dialTLS(t *testing.T, tlsCfg *tls.Config, url, user, pass, clientID string) (*secClient, error) {
	t.Helper()
	sc := &secClient{id: clientID, topics: s.topics, lost: make(chan secLost, 1)}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(clientID).
		SetUsername(user).SetPassword(pass).SetProtocolVersion(4).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetKeepAlive(30 * time.Second).SetWriteTimeout(10 * time.Second)
	if !strings.HasPrefix(url, "tcp://") {
		o.SetTLSConfig(tlsCfg.Clone())
	}
	o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
		sc.mu.Lock()
		sc.got = append(sc.got, secMsg{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained()})
		sc.mu.Unlock()
	})
	o.SetConnectionLostHandler(func(_ paho.Client, err error) {
		select {
		case sc.lost <- secLost{err, time.Now()}:
		default:
		}
	})
	sc.c = paho.NewClient(o)
	tok := sc.c.Connect()
	if !tok.WaitTimeout(secWait) {
		sc.c.Disconnect(0)
		return nil, errors.New("no CONNACK in time")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { sc.c.Disconnect(0) })
	return sc, nil
}

// mustDial connects or fails the test.
func (s *secServer) mustDial(t *testing.T, user, pass, clientID string) *secClient {
	t.Helper()
	c, err := s.dial(t, user, pass, clientID)
	if err != nil {
		t.Fatalf("connect as %q (client id %q): %v", user, clientID, err)
	}
	return c
}

// refusedCode returns the CONNACK return code of a refused connection, or
// -1 when err is no refusal.
func refusedCode(err error) int {
	for code, e := range packets.ConnErrors {
		if code != packets.Accepted && code != packets.ErrNetworkError && e != nil && errors.Is(err, e) {
			return int(code)
		}
	}
	return -1
}

// expectRefused fails unless a connection attempt is refused with CONNACK
// 0x05 (mochi's answer to MQTT 3.1.1 clients that fail authentication).
func (s *secServer) expectRefused(t *testing.T, what, user, pass, clientID string) {
	t.Helper()
	begin := time.Now()
	c, err := s.dial(t, user, pass, clientID)
	if err == nil {
		c.c.Disconnect(0)
		t.Errorf("%s: connected (user %q, client id %q), want CONNACK 0x05", what, user, clientID)
		return
	}
	if code := refusedCode(err); code != secNotAuthorized {
		t.Errorf("%s: %v (CONNACK %d), want a refusal with 0x05", what, err, code)
		return
	}
	t.Logf("%s: refused with CONNACK 0x05 in %s", what, time.Since(begin).Round(time.Millisecond))
}

// subscribe sends one SUBSCRIBE at QoS 1 and returns the SUBACK code.
func (c *secClient) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	tok := c.c.Subscribe(filter, 1, nil)
	if !tok.WaitTimeout(secWait) {
		t.Fatalf("%s: no SUBACK for %s", c.id, filter)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: subscribe %s: %v", c.id, filter, err)
	}
	// paho keys the result by the filter without a "$share/group/" prefix.
	res := tok.(*paho.SubscribeToken).Result()
	if len(res) != 1 {
		t.Fatalf("%s: SUBACK for %s: %v, want one code", c.id, filter, res)
	}
	for _, code := range res {
		return code
	}
	return 0
}

// expectSubRefused fails unless the broker answers SUBACK 0x80. Call it
// before the client has QoS 1 messages in flight: mochi also refuses a
// SUBSCRIBE whose packet id collides with one of them.
func (c *secClient) expectSubRefused(t *testing.T, filter string) {
	t.Helper()
	if code := c.subscribe(t, filter); code != secSubFailure {
		t.Errorf("%s subscribed to %s: SUBACK 0x%02x, want 0x80", c.id, filter, code)
	}
}

// mustSubscribe subscribes at QoS 1 or fails. A refusal is retried a few
// times for the packet id collision expectSubRefused describes.
func (c *secClient) mustSubscribe(t *testing.T, filter string) {
	t.Helper()
	var code byte
	for range 5 {
		if code = c.subscribe(t, filter); code <= 2 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: subscribe %s: SUBACK 0x%02x", c.id, filter, code)
}

// publish sends a message without waiting for its PUBACK.
func (c *secClient) publish(topic string, qos byte, retain bool, payload []byte) paho.Token {
	return c.c.Publish(topic, qos, retain, payload)
}

// mustPublish sends a QoS 1 message and waits for its PUBACK.
func (c *secClient) mustPublish(t *testing.T, topic string, retain bool, payload []byte) {
	t.Helper()
	tok := c.publish(topic, 1, retain, payload)
	if !tok.WaitTimeout(secWait) || tok.Error() != nil {
		t.Fatalf("%s: publish %s: no PUBACK (%v)", c.id, topic, tok.Error())
	}
}

// barrier returns once every message the broker routed to this client
// before the call has been recorded, and every packet the client sent
// before it has been processed: a round trip through the client's own sync
// topic, as the broker handles each client's packets, and delivers to it,
// in order.
func (c *secClient) barrier(t *testing.T) {
	t.Helper()
	topic := c.topics.Base() + "/sync/" + c.id + "/" + secRandom(6)
	got := make(chan struct{})
	var once sync.Once
	// mochi refuses a SUBSCRIBE whose packet id is that of a QoS 1
	// message it is still delivering to the client (0x91, even to MQTT
	// 3.1.1 clients); a retry gets a fresh id.
	for attempt := 0; ; attempt++ {
		tok := c.c.Subscribe(topic, 1, func(paho.Client, paho.Message) { once.Do(func() { close(got) }) })
		if !tok.WaitTimeout(secWait) || tok.Error() != nil {
			t.Fatalf("%s: barrier subscribe: %v", c.id, tok.Error())
		}
		code := tok.(*paho.SubscribeToken).Result()[topic]
		if code <= 2 {
			break
		}
		if attempt == 4 {
			t.Fatalf("%s: barrier: own sync topic refused (0x%02x)", c.id, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.mustPublish(t, topic, false, []byte("sync"))
	select {
	case <-got:
	case <-time.After(secWait):
		t.Fatalf("%s: barrier: own message never came back", c.id)
	}
	c.c.Unsubscribe(topic).WaitTimeout(secWait)
}

// received returns the messages recorded so far whose topic has prefix.
func (c *secClient) received(prefix string) []secMsg {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []secMsg
	for _, m := range c.got {
		if strings.HasPrefix(m.Topic, prefix) {
			out = append(out, m)
		}
	}
	return out
}

// waitMsg waits for a message on topic whose payload contains want.
func (c *secClient) waitMsg(t *testing.T, topic, want string) secMsg {
	t.Helper()
	deadline := time.Now().Add(secWait)
	for time.Now().Before(deadline) {
		for _, m := range c.received(topic) {
			if m.Topic == topic && strings.Contains(string(m.Payload), want) {
				return m
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no message on %s containing %q; got %v", c.id, topic, want, c.received(""))
	return secMsg{}
}

// expectNothing fails if any message recorded has payload containing mark.
func (c *secClient) expectNothing(t *testing.T, mark string) {
	t.Helper()
	for _, m := range c.received("") {
		if strings.Contains(string(m.Payload), mark) {
			t.Errorf("%s received the attacker's message on %s: %s", c.id, m.Topic, m.Payload)
		}
	}
}

// waitLost waits until the broker drops the client's connection and
// returns how long that took from since.
func (c *secClient) waitLost(t *testing.T, what string, since time.Time) time.Duration {
	t.Helper()
	select {
	case l := <-c.lost:
		d := l.at.Sub(since)
		t.Logf("%s: connection closed by the broker after %s (%v)", what, d.Round(time.Millisecond), l.err)
		return d
	case <-time.After(secWait):
		t.Fatalf("%s: the broker kept %s connected", what, c.id)
		return 0
	}
}

// expectUp fails if the client's connection was dropped, and proves it
// still works with a round trip.
func (c *secClient) expectUp(t *testing.T, what string) {
	t.Helper()
	select {
	case l := <-c.lost:
		t.Fatalf("%s: %s lost its connection: %v", what, c.id, l.err)
	default:
	}
	c.barrier(t)
}

// secRandom returns n random bytes, base64url.
func secRandom(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// secConnect builds an MQTT 3.1.1 CONNECT packet.
func secConnect(user, pass, clientID string) *packets.ConnectPacket {
	cp := packets.NewControlPacket(packets.Connect).(*packets.ConnectPacket)
	cp.ProtocolName, cp.ProtocolVersion = "MQTT", 4
	cp.CleanSession, cp.Keepalive = true, 30
	cp.ClientIdentifier = clientID
	if user != "" {
		cp.UsernameFlag, cp.Username = true, user
	}
	if pass != "" {
		cp.PasswordFlag, cp.Password = true, []byte(pass)
	}
	return cp
}

// rawConnect sends cp over a new connection (TLS unless plain) and returns
// the connection and the CONNACK return code; err when no CONNACK came.
func (s *secServer) rawConnect(cp *packets.ConnectPacket, plain bool) (net.Conn, byte, error) {
	return s.rawConnectFrom(cp, plain, "")
}

// rawConnectFrom is rawConnect from a local address: another loopback
// address than 127.0.0.1 looks like another host to the server.
func (s *secServer) rawConnectFrom(cp *packets.ConnectPacket, plain bool, local string) (net.Conn, byte, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	var conn net.Conn
	var err error
	if plain {
		conn, err = d.Dial("tcp", s.addr)
	} else {
		conn, err = tls.DialWithDialer(d, "tcp", s.addr, s.tls.Clone())
	}
	if err != nil {
		return nil, 0, err
	}
	_ = conn.SetDeadline(time.Now().Add(secWait))
	if err := cp.Write(conn); err != nil {
		conn.Close()
		return nil, 0, err
	}
	pk, err := packets.ReadPacket(conn)
	if err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("no CONNACK: %w", err)
	}
	ack, ok := pk.(*packets.ConnackPacket)
	if !ok {
		conn.Close()
		return nil, 0, fmt.Errorf("no CONNACK: got %s", pk.String())
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, ack.ReturnCode, nil
}

// jobDoc is a valid job document that would run on every device.
func jobDoc(t *testing.T, id string) []byte {
	t.Helper()
	j, err := protocol.ParseJob([]byte("id: " + id + "\ntype: system\ngroups:\n  - name: g\n    tasks:\n      - {name: t, driver: exec, config: {command: [/bin/sh, -c, 'echo pwned']}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := protocol.Encode(j)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// presenceDoc is a device's presence document with a marker in its version.
func presenceDoc(t *testing.T, device string, status protocol.PresenceStatus, mark string) []byte {
	t.Helper()
	now := time.Now().UTC()
	b, err := protocol.Encode(protocol.Presence{Device: device, Status: status, Since: &now, Version: mark})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectNoJob fails if the planner knows job id: `tether job status` must
// say it does not exist.
func (s *secServer) expectNoJob(t *testing.T, op protocol.Token, id string) {
	t.Helper()
	r := run(t, s.env(op.String()), "tether", "job", "status", id)
	if r.code != 1 || !strings.Contains(r.stderr, "job "+id+" not found") {
		t.Errorf("job %s exists after the attack: exit %d\n%s%s", id, r.code, r.stdout, r.stderr)
	}
}
