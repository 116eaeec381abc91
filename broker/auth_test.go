package broker

import (
	"errors"
	"testing"
)

func TestAnonymousLoopbackAllowed(t *testing.T) {
	t.Parallel()
	b := startBroker(t, Config{AllowAnonymousLoopback: true})
	mustConnect(t, "tcp://"+b.MQTTAddr()) // from 127.0.0.1
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	users := map[string]string{"planner": "s3cret"}
	tests := []struct {
		name     string
		cfg      Config
		user, pw string
		ok       bool
	}{
		{"anonymous refused without an anonymous switch", Config{Users: users}, "", "", false},
		{"user with its password", Config{Users: users}, "planner", "s3cret", true},
		{"wrong password", Config{Users: users}, "planner", "s3cret!", false},
		{"unknown user", Config{Users: users}, "device", "s3cret", false},
		{"wrong password is not retried as anonymous", Config{Users: users, AllowAnonymousLoopback: true}, "planner", "nope", false},
		{"user alongside anonymous loopback", Config{Users: users, AllowAnonymousLoopback: true}, "planner", "s3cret", true},
		{"anonymous from anywhere", Config{AllowAnonymous: true}, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := startBroker(t, tt.cfg)
			_, err := connect(t, "tcp://"+b.MQTTAddr(), credentials(tt.user, tt.pw))
			if tt.ok && err != nil {
				t.Fatalf("connect refused: %v", err)
			}
			if !tt.ok && err == nil {
				t.Fatal("connect succeeded")
			}
		})
	}
}

// The policy's decisions for peers a test cannot produce over a socket:
// remote hosts and browsers.
func TestStaticPolicy(t *testing.T) {
	t.Parallel()
	loopbackOnly := newStaticPolicy(Config{AllowAnonymousLoopback: true})
	anyone := newStaticPolicy(Config{AllowAnonymous: true})
	tests := []struct {
		name   string
		policy *staticPolicy
		peer   Peer
		pw     string
		ok     bool
	}{
		{"ipv4 loopback", loopbackOnly, Peer{Remote: "127.0.0.1:5000"}, "", true},
		{"other 127/8 address", loopbackOnly, Peer{Remote: "127.3.2.1:5000"}, "", true},
		{"ipv6 loopback", loopbackOnly, Peer{Remote: "[::1]:5000"}, "", true},
		{"ipv4-mapped loopback", loopbackOnly, Peer{Remote: "[::ffff:127.0.0.1]:5000"}, "", true},
		{"lan address", loopbackOnly, Peer{Remote: "192.168.1.20:5000"}, "", false},
		{"unparseable remote", loopbackOnly, Peer{Remote: "pipe"}, "", false},
		{"password without username", loopbackOnly, Peer{Remote: "127.0.0.1:5000"}, "pw", false},
		{"browser on a local page", loopbackOnly, Peer{Remote: "127.0.0.1:5000", Listener: ListenerWS, Origin: "http://localhost:3000"}, "", true},
		{"browser on a local ip page", loopbackOnly, Peer{Remote: "127.0.0.1:5000", Listener: ListenerWS, Origin: "http://127.0.0.1:8080"}, "", true},
		{"browser on a web site", loopbackOnly, Peer{Remote: "127.0.0.1:5000", Listener: ListenerWS, Origin: "https://evil.example"}, "", false},
		{"browser on a local file", loopbackOnly, Peer{Remote: "127.0.0.1:5000", Listener: ListenerWS, Origin: "null"}, "", false},
		{"anyone from the lan", anyone, Peer{Remote: "192.168.1.20:5000"}, "", true},
		{"anyone with a web origin", anyone, Peer{Remote: "192.168.1.20:5000", Origin: "https://evil.example"}, "", true},
	}
	for _, tt := range tests {
		err := tt.policy.Authenticate(tt.peer, []byte(tt.pw))
		if tt.ok && err != nil {
			t.Errorf("%s: refused: %v", tt.name, err)
		}
		if !tt.ok && err == nil {
			t.Errorf("%s: admitted", tt.name)
		}
		if !tt.ok && tt.pw == "" && !errors.Is(err, errNoCredentials) {
			t.Errorf("%s: error %v does not say credentials are missing", tt.name, err)
		}
	}
}
