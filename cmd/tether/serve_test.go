package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/internal/pki"
)

func TestServerBrokerFlags(t *testing.T) {
	t.Parallel()
	files, err := pki.Init(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string // in the error
	}{
		{[]string{"--broker", "mqtt://127.0.0.1:1", "--mqtt-addr", ":1883", "--insecure-plaintext", "--tls-host", "x"},
			[]string{"--mqtt-addr", "--tls-host", "--insecure-plaintext", "embedded broker"}},
		{[]string{"--broker", "mqtt://127.0.0.1:1", "--ws-addr", "", "--insecure-allow-anonymous", "--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"},
			[]string{"--ws-addr", "--tls-cert", "--tls-key", "--tls-client-ca", "--insecure-allow-anonymous"}},
		{[]string{"--broker-username", "p", "--dashboard-ws-port", "8083", "--dashboard-ws-tls"},
			[]string{"--broker-username", "--dashboard-ws-port", "--dashboard-ws-tls", "only with --broker"}},
		{[]string{"--broker-ca-file", "ca.pem", "--broker-cert-file", "c", "--broker-key-file", "k", "--broker-password", "x"},
			[]string{"--broker-ca-file", "--broker-cert-file", "--broker-key-file", "--broker-password", "only with --broker"}},
		{[]string{"--broker", "mqtts://127.0.0.1:1", "--broker-cert-file", "c.pem"},
			[]string{"no key file"}},
		{[]string{"--broker", "mqtts://127.0.0.1:1", "--broker-ca-file", "/nonexistent/ca.pem"},
			[]string{"--broker-ca-file", "/nonexistent/ca.pem"}},
		// TLS settings for a broker that does not speak TLS.
		{[]string{"--broker", "mqtt://127.0.0.1:1", "--broker-ca-file", files.CACert},
			[]string{"no broker URL uses TLS"}},
	} {
		args := append([]string{"server", "--data-dir", t.TempDir(), "--http-addr", ""}, tc.args...)
		out, err := runTether(t, args...)
		if err == nil {
			t.Errorf("%v: no error\n%s", tc.args, out)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: error %q does not name %q", tc.args, err, w)
			}
		}
	}
}

// TETHER_BROKER_PASSWORD is read with --broker only, and is no flag
// default that --help would show.
func TestServerBrokerPasswordEnv(t *testing.T) {
	t.Setenv("TETHER_BROKER_PASSWORD", "s3cret")
	out, err := runTether(t, "server", "--help")
	if err != nil || strings.Contains(out, "s3cret") {
		t.Errorf("server --help shows the password from the environment (%v):\n%s", err, out)
	}
	parse := func(args ...string) (*cobra.Command, externalFlags) {
		t.Helper()
		root := newRoot()
		cmd, _, err := root.Find([]string{"server"})
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		return cmd, externalFlags{}
	}
	cmd, x := parse("--data-dir", t.TempDir())
	if ext, err := x.config(cmd, "mqtt://127.0.0.1:1"); err != nil || ext != nil {
		t.Errorf("without --broker: %+v, %v; want the embedded broker", ext, err)
	}
	cmd, x = parse("--broker", "mqtt://127.0.0.1:1")
	if ext, err := x.config(cmd, "mqtt://127.0.0.1:1"); err != nil || ext == nil || ext.Password != "s3cret" {
		t.Errorf("with --broker: %+v, %v; want the password from TETHER_BROKER_PASSWORD", ext, err)
	}
}
