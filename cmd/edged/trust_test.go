package main

import (
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tether-edge/tether/protocol"
)

func testKey(t *testing.T, seed byte) string {
	t.Helper()
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	return protocol.EncodeKey(ed25519.NewKeyFromSeed(s).Public().(ed25519.PublicKey))
}

func write(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadKeyFile(t *testing.T) {
	k1, k2 := testKey(t, 1), testKey(t, 2)
	keys, err := readKeyFile(write(t, "keys", "# the planner\n"+k1+"\n\n  "+k2+"  \n# old\n"))
	if err != nil || len(keys) != 2 || protocol.EncodeKey(keys[0]) != k1 || protocol.EncodeKey(keys[1]) != k2 {
		t.Fatalf("keys %v, err %v", keys, err)
	}
	_, err = readKeyFile(write(t, "bad", k1+"\nnot-a-key\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("err %v, want it to name line 2", err)
	}
	if _, err := readKeyFile(write(t, "empty", "# nothing yet\n")); err == nil || !strings.Contains(err.Error(), "no key") {
		t.Fatalf("err %v, want: no key", err)
	}
}

// run runs `edged run` with args and a context that is already done, so a
// configuration that is accepted returns at once.
func run(t *testing.T, args ...string) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	root := newRoot()
	root.SetArgs(append([]string{"run", "--fake-runtime", "--broker", "mqtt://127.0.0.1:1", "--data-dir", t.TempDir(), "--device-id", "c1"}, args...))
	return root.ExecuteContext(ctx)
}

func TestTrustFlags(t *testing.T) {
	t.Setenv("TETHER_PLANNER_KEY", "")
	t.Setenv("TETHER_ENROLL_TOKEN", "")
	good := testKey(t, 1)
	keyFile := write(t, "planner-key.pub", good+"\n")
	for _, c := range []struct {
		name string
		args []string
		env  map[string]string
		want string // "" = accepted
	}{
		{"nothing to trust", nil, nil, "--planner-key-file"},
		{"key flag", []string{"--planner-key", good}, nil, ""},
		{"key file", []string{"--planner-key-file", keyFile}, nil, ""},
		{"key env", nil, map[string]string{"TETHER_PLANNER_KEY": good}, ""},
		{"insecure", []string{"--insecure-accept-unsigned"}, nil, ""},
		{"bad key flag", []string{"--planner-key", good, "--planner-key", "Zm9v"}, nil, "--planner-key (key 2 of 2): public key: 3 bytes"},
		{"bad key env", nil, map[string]string{"TETHER_PLANNER_KEY": "Zm9v"}, "TETHER_PLANNER_KEY (key 1 of 1)"},
		{"missing key file", []string{"--planner-key-file", "/nonexistent/k.pub"}, nil, "--planner-key-file: open /nonexistent/k.pub"},
		{"bad token", []string{"--enroll-token", "nope"}, nil, "--enroll-token: token: want <id>.<secret>"},
		{"token env", nil, map[string]string{"TETHER_ENROLL_TOKEN": "x.y"}, "TETHER_ENROLL_TOKEN: token: id \"x\""},
		{"both tokens", []string{"--enroll-token", "0123456789ab.c2VjcmV0", "--enroll-token-file", keyFile}, nil, "--enroll-token and --enroll-token-file both given"},
		{"bad token file", []string{"--enroll-token-file", keyFile}, nil, "--enroll-token-file " + keyFile + ": token"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			err := run(t, c.args...)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("err %v, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestTrustConfigFile(t *testing.T) {
	t.Setenv("TETHER_PLANNER_KEY", "")
	t.Setenv("TETHER_ENROLL_TOKEN", "")
	good := testKey(t, 1)
	cfg := write(t, "edged.yaml", "planner_keys: [\""+good+"\", \"Zm9v\"]\n")
	if err := run(t, "--config", cfg); err == nil || !strings.Contains(err.Error(), "planner_keys in "+cfg+" (key 2 of 2)") {
		t.Fatalf("err %v, want it to name planner_keys in the config file", err)
	}
	// A flag wins over the file.
	if err := run(t, "--config", cfg, "--planner-key", good); err != nil {
		t.Fatalf("with --planner-key over a bad file entry: %v", err)
	}
	keyFile := write(t, "planner-key.pub", good+"\n")
	if err := run(t, "--config", write(t, "edged.yaml", "planner_key_file: "+keyFile+"\n")); err != nil {
		t.Fatalf("planner_key_file: %v", err)
	}
	tokFile := write(t, "token", "0123456789ab.c2VjcmV0\n")
	if err := run(t, "--config", write(t, "edged.yaml", "enroll_token_file: "+tokFile+"\n")); err != nil {
		t.Fatalf("enroll_token_file: %v", err)
	}
	if err := run(t, "--config", write(t, "edged.yaml", "enroll_token: bad\n")); err == nil || !strings.Contains(err.Error(), "enroll_token in ") {
		t.Fatalf("err %v, want it to name enroll_token in the config file", err)
	}
}
