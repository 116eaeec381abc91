package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runTether runs the tether command with args and returns its output.
func runTether(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

func TestTLSCommands(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")

	out, err := runTether(t, "tls", "init", "--dir", dir, "--host", "broker.lan")
	if err != nil {
		t.Fatalf("tls init: %v\n%s", err, out)
	}
	for _, want := range []string{
		"--tls-cert " + filepath.Join(dir, "server.pem"),
		"--tls-key " + filepath.Join(dir, "server-key.pem"),
		"--tls-client-ca " + filepath.Join(dir, "ca.pem"),
		"--ca-file", "--cert-file", "--key-file", "broker.lan",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("tls init output lacks %q:\n%s", want, out)
		}
	}
	if out, err := runTether(t, "tls", "init", "--dir", dir); err != nil || strings.Contains(out, "created") {
		t.Errorf("second tls init: %v, output:\n%s", err, out)
	}

	// One bad id refuses the whole run before anything is written.
	_, err = runTether(t, "tls", "device", "dev-1", "bad/id", "--dir", dir)
	if err == nil || !strings.Contains(err.Error(), `"bad/id"`) || !strings.Contains(err.Error(), "want") {
		t.Errorf("bad device id: %v, want an error naming the id and the rule", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "clients", "dev-1")); !os.IsNotExist(err) {
		t.Errorf("a refused run issued dev-1: %v", err)
	}

	out, err = runTether(t, "tls", "device", "dev-1", "dev-2", "--dir", dir, "--ttl", "24h")
	if err != nil {
		t.Fatalf("tls device: %v\n%s", err, out)
	}
	for _, id := range []string{"dev-1", "dev-2"} {
		for _, f := range []string{id + ".pem", id + "-key.pem"} {
			if _, err := os.Stat(filepath.Join(dir, "clients", id, f)); err != nil {
				t.Errorf("tls device: %v", err)
			}
		}
	}
	if out, err := runTether(t, "tls", "device", "dev-1", "--dir", dir); err != nil || !strings.Contains(out, "kept") {
		t.Errorf("tls device again: %v, output:\n%s", err, out)
	}
}

func TestTLSCommandErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"tls", "init"}, "--dir is required"},
		{[]string{"tls", "device", "dev-1"}, "--dir is required"},
		{[]string{"tls", "device", "--dir", t.TempDir()}, "device ids"},
		{[]string{"tls", "device", "dev-1", "--dir", t.TempDir()}, "tether tls init"},
		{[]string{"tls", "device", "dev-1", "--dir", t.TempDir(), "--ttl", "-1h"}, "--ttl"},
		{[]string{"tls", "init", "--dir", t.TempDir(), "--host", "broker:8883"}, `"broker:8883"`},
	}
	for _, tt := range tests {
		_, err := runTether(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("tether %s: %v, want an error containing %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
}
