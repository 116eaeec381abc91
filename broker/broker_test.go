package broker

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/rs/zerolog"
)

// waitTimeout bounds every wait in these tests. It is generous because it
// only matters when something is broken; passing tests never reach it.
const waitTimeout = 15 * time.Second

func testLog(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).With().Timestamp().Logger()
}

// newBroker returns an unstarted broker on 127.0.0.1:0 that is closed when
// the test ends.
func newBroker(t *testing.T, cfg Config) *Broker {
	t.Helper()
	if cfg.MQTTAddr == "" {
		cfg.MQTTAddr = "127.0.0.1:0"
	}
	cfg.Log = testLog(t)
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

func startBroker(t *testing.T, cfg Config) *Broker {
	t.Helper()
	b := newBroker(t, cfg)
	if err := b.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return b
}

type clientOpt func(*paho.ClientOptions)

func clientID(id string) clientOpt {
	return func(o *paho.ClientOptions) { o.SetClientID(id) }
}

func persistent(id string) clientOpt {
	return func(o *paho.ClientOptions) { o.SetClientID(id).SetCleanSession(false) }
}

func credentials(user, password string) clientOpt {
	return func(o *paho.ClientOptions) { o.SetUsername(user).SetPassword(password) }
}

// deliverTo routes every message the client receives, including those that
// arrive before a Subscribe returns and those of a resumed session, to ch.
// The handler only enqueues: paho's router must never block.
func deliverTo(ch chan<- paho.Message) clientOpt {
	return func(o *paho.ClientOptions) {
		o.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			select {
			case ch <- m:
			default:
				panic("test message buffer full")
			}
		})
	}
}

// connect dials url with paho and returns the connected client or the
// CONNECT error. The client is disconnected when the test ends.
func connect(t *testing.T, url string, opts ...clientOpt) (paho.Client, error) {
	t.Helper()
	o := paho.NewClientOptions().AddBroker(url).
		SetClientID(strings.ReplaceAll(t.Name(), "/", "-")).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second)
	for _, opt := range opts {
		opt(o)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(waitTimeout) {
		return nil, errors.New("connect: timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c, nil
}

func mustConnect(t *testing.T, url string, opts ...clientOpt) paho.Client {
	t.Helper()
	c, err := connect(t, url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	return c
}

func wait(t *testing.T, what string, tok paho.Token) {
	t.Helper()
	if !tok.WaitTimeout(waitTimeout) {
		t.Fatalf("%s: timed out", what)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// waitFor polls cond until it holds or waitTimeout passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// receive returns the next n messages from ch.
func receive(t *testing.T, ch <-chan paho.Message, n int) []paho.Message {
	t.Helper()
	timeout := time.After(waitTimeout)
	var got []paho.Message
	for len(got) < n {
		select {
		case m := <-ch:
			got = append(got, m)
		case <-timeout:
			t.Fatalf("received %d of %d messages before timing out", len(got), n)
		}
	}
	return got
}

func TestAddressesAfterPortZero(t *testing.T) {
	t.Parallel()
	b := newBroker(t, Config{WSAddr: "127.0.0.1:0", AllowAnonymousLoopback: true})
	for name, addr := range map[string]string{"MQTTAddr": b.MQTTAddr(), "WSAddr": b.WSAddr()} {
		if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") {
			t.Errorf("%s = %q, want 127.0.0.1 with a real port", name, addr)
		}
	}
	if b := newBroker(t, Config{AllowAnonymousLoopback: true}); b.WSAddr() != "" {
		t.Errorf("WSAddr without a WebSocket listener = %q, want \"\"", b.WSAddr())
	}
}

func TestCloseTwice(t *testing.T) {
	t.Parallel()
	for _, start := range []bool{true, false} {
		t.Run(fmt.Sprintf("started=%v", start), func(t *testing.T) {
			t.Parallel()
			b, err := New(Config{
				DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", WSAddr: "127.0.0.1:0",
				AllowAnonymousLoopback: true, Log: testLog(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			if start {
				if err := b.Start(); err != nil {
					t.Fatal(err)
				}
				mustConnect(t, "tcp://"+b.MQTTAddr())
			}
			for i := range 2 {
				if err := b.Close(); err != nil {
					t.Fatalf("Close #%d: %v", i+1, err)
				}
			}
			if err := b.Start(); err == nil {
				t.Fatal("Start after Close succeeded")
			}
		})
	}
}

func TestNewUnwritableDataDir(t *testing.T) {
	t.Parallel()
	// A path below a regular file cannot be created, even by root (which
	// ignores directory permissions).
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(file, "data")
	_, err := New(Config{DataDir: dataDir, MQTTAddr: "127.0.0.1:0", AllowAnonymousLoopback: true, Log: testLog(t)})
	if err == nil {
		t.Fatal("New succeeded")
	}
	if !strings.Contains(err.Error(), dataDir) {
		t.Fatalf("error %q does not name %s", err, dataDir)
	}
}

func TestNewDataDirInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	newBroker(t, Config{DataDir: dir, AllowAnonymousLoopback: true})
	_, err := New(Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", AllowAnonymousLoopback: true, Log: testLog(t)})
	if err == nil {
		t.Fatal("second broker on the same DataDir started")
	}
	if want := filepath.Join(dir, DBFile); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not name %s", err, want)
	}
}

func TestNewReleasesPortsOnError(t *testing.T) {
	t.Parallel()
	b := newBroker(t, Config{AllowAnonymousLoopback: true})
	// The WebSocket address is taken, so New fails after binding MQTTAddr
	// and opening the database; both must be released.
	dir := t.TempDir()
	_, err := New(Config{DataDir: dir, MQTTAddr: "127.0.0.1:0", WSAddr: b.MQTTAddr(), AllowAnonymousLoopback: true, Log: testLog(t)})
	if err == nil || !strings.Contains(err.Error(), b.MQTTAddr()) {
		t.Fatalf("New with a busy WSAddr: err = %v, want one naming %s", err, b.MQTTAddr())
	}
	newBroker(t, Config{DataDir: dir, AllowAnonymousLoopback: true}) // database lock released
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; nil = valid
	}{
		{"anonymous loopback", Config{MQTTAddr: ":0", AllowAnonymousLoopback: true}, nil},
		{"users", Config{MQTTAddr: ":0", Users: map[string]string{"planner": "pw"}}, nil},
		{"custom authenticator", Config{MQTTAddr: ":0", Authenticator: newStaticPolicy(Config{})}, nil},
		{"nobody could connect", Config{MQTTAddr: ":0"}, []string{"no client could connect"}},
		{"every problem at once", Config{Users: map[string]string{"": "x", "planner": ""}},
			[]string{"MQTTAddr is empty", "empty username", `"planner" has an empty password`}},
		{"authenticator and switches", Config{MQTTAddr: ":0", AllowAnonymous: true, Authenticator: newStaticPolicy(Config{})},
			[]string{"leave AllowAnonymous"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("validate accepted the config")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestServerOptions(t *testing.T) {
	t.Parallel()
	b := newBroker(t, Config{AllowAnonymousLoopback: true})
	o := b.srv.Options
	if got := o.Capabilities.MaximumMessageExpiryInterval; got != 0 {
		t.Errorf("MaximumMessageExpiryInterval = %d, want 0: retained desired state must not expire", got)
	}
	if got := o.Capabilities.MaximumSessionExpiryInterval; got != 7*24*3600 {
		t.Errorf("MaximumSessionExpiryInterval = %d, want 7 days", got)
	}
	if got := o.SysTopicResendInterval; got != 60 {
		t.Errorf("SysTopicResendInterval = %d, want 60", got)
	}
	if !o.InlineClient {
		t.Error("InlineClient is off: the server's planner reads through it")
	}
}
