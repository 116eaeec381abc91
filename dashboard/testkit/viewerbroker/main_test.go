package main

import (
	"crypto/sha256"
	"io"
	"testing"

	"github.com/tether-edge/tether/protocol"
)

// The fixture's rules are what the page is tested against: they must be
// the contract, no looser.
func TestPolicy(t *testing.T) {
	t.Parallel()
	p := &policy{topics: protocol.Topics{Root: "acme"}, out: &syncWriter{w: io.Discard}, tokens: map[string]token{
		"0a1b2c3d4e5f": {role: viewer, secret: sha256.Sum256([]byte("s3cr-t_"))},
		"ffffffffffff": {role: operator, secret: sha256.Sum256([]byte("op"))},
	}}
	for _, c := range []struct {
		client, user, pw string
		want             role
	}{
		{"token/0a1b2c3d4e5f/dash-1", "token/0a1b2c3d4e5f", "s3cr-t_", viewer},
		{"token/ffffffffffff/x", "token/ffffffffffff", "op", operator},
		{"dash-1", "token/0a1b2c3d4e5f", "s3cr-t_", refused},                    // client id without the username
		{"token/0a1b2c3d4e5fx/dash", "token/0a1b2c3d4e5f", "s3cr-t_", refused},  // a longer prefix is not the username
		{"token/0a1b2c3d4e5f/dash-1", "token/0a1b2c3d4e5f", "wrong", refused},   // wrong secret
		{"token/000000000000/dash-1", "token/000000000000", "s3cr-t_", refused}, // unknown id
		{"0a1b2c3d4e5f/dash-1", "0a1b2c3d4e5f", "s3cr-t_", refused},             // no token/ prefix
		{"tether-dash-1", "", "", refused},                                      // anonymous
	} {
		got, err := p.authenticate(c.client, c.user, []byte(c.pw))
		if got != c.want {
			t.Errorf("authenticate(%q, %q) = %v (%v), want %v", c.client, c.user, got, err, c.want)
		}
	}

	me := "token/0a1b2c3d4e5f/dash-1"
	for _, c := range []struct {
		topic string
		write bool
		want  bool
	}{
		{"acme/v1/devices/+/facts", false, true},
		{"acme/v1/devices/pi-07/facts", false, true},
		{"acme/v1/devices/+/scheduling", false, true},
		{"acme/v1/jobs/+/history", false, true},
		{"acme/v1/fleet/summary", false, true},
		{"acme/v1/sync/" + me + "/+", false, true},
		{"acme/v1/sync/" + me + "/abc", true, true},
		{"acme/v1/devices/+/desired", false, false},
		{"acme/v1/devices/pi-07/desired", false, false},
		{"acme/v1/jobs/+", false, false},
		{"acme/v1/jobs/hello", false, false},
		{"acme/v1/#", false, false},
		{"#", false, false},
		{"acme/v1/devices/+/#", false, false},
		{"acme/v1/devices/pi-07/facts", true, false},
		{"acme/v1/sync/token/other/dash-2/+", false, false},
		{"acme/v1/sync/" + me + "/#", false, false},
	} {
		if got := p.allowed(viewer, me, c.topic, c.write); got != c.want {
			t.Errorf("viewer allowed(%q, write %t) = %t, want %t", c.topic, c.write, got, c.want)
		}
	}
	if !p.allowed(operator, "x", "acme/v1/devices/+/desired", false) || p.allowed(refused, "x", "acme/v1/fleet/summary", false) {
		t.Error("operators read everything; refused clients nothing")
	}
}
