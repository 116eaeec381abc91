package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIErrors: bad input gets a precise error and exit 1, quickly, and
// changes nothing.
func TestCLIErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	r := run(t, nil, "tether", "dev", "--data-dir", t.TempDir(), "--device-id", "bad id", "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "", "--http-addr", "")
	if r.code != 1 || !strings.Contains(r.stderr, "--device-id: invalid identifier") {
		t.Errorf("dev with a bad device id: exit %d", r.code)
	}
	r = run(t, nil, "edged", "run", "--device-id", "d", "--data-dir", t.TempDir(), "--broker", "foo://x")
	if r.code != 1 || !strings.Contains(r.stderr, `unknown scheme "foo"`) {
		t.Errorf("edged with a bad broker URL: exit %d", r.code)
	}
	r = run(t, nil, "edged", "run")
	if r.code != 1 || !strings.Contains(r.stderr, "--device-id") || !strings.Contains(r.stderr, "--data-dir") {
		t.Errorf("edged without settings: exit %d", r.code)
	}
	r = run(t, []string{"TETHER_BROKER=mqtt://127.0.0.1:1"}, "tether", "job", "run", "../deploy/examples/invalid.yaml")
	if r.code != 1 || !strings.Contains(r.stderr, `groups[0].tasks[0].driver: unknown driver "dokcer"`) || !strings.Contains(r.stderr, "id: invalid identifier") {
		t.Errorf("invalid example: exit %d", r.code)
	}

	_, env := devServer(t, "--no-edged")
	r = run(t, env, "tether", "job", "stop", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "job nope not found") {
		t.Errorf("stop of an unknown job: exit %d", r.code)
	}
	r = run(t, env, "tether", "job", "status", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "job nope not found") {
		t.Errorf("status of an unknown job: exit %d", r.code)
	}
	// No device at all: accepted, but it says why nothing runs.
	file := filepath.Join(t.TempDir(), "j.yaml")
	os.WriteFile(file, []byte("id: lonely\ngroups:\n  - name: g\n    tasks:\n      - {name: t, driver: exec, config: {command: [/bin/true]}}\n"), 0o644)
	r = run(t, env, "tether", "job", "run", file, "--timeout", "30s")
	if r.code != 1 || !strings.Contains(r.stderr, "0 of 0 devices feasible") || !strings.Contains(r.stderr, "not every instance can be placed") {
		t.Errorf("unplaceable job: exit %d", r.code)
	}

	// Rollout commands: precise errors, nothing changed.
	r = run(t, env, "tether", "job", "plan", "../deploy/examples/invalid.yaml")
	if r.code != 255 || !strings.Contains(r.stderr, `groups[0].tasks[0].driver: unknown driver "dokcer"`) {
		t.Errorf("plan of an invalid document: exit %d, want 255 (as nomad job plan)", r.code)
	}
	r = run(t, env, "tether", "job", "plan", file)
	if r.code != 0 || !strings.Contains(r.stdout, "equals version 1") {
		t.Errorf("plan of the document in force: exit %d", r.code)
	}
	r = run(t, env, "tether", "job", "promote", "lonely")
	if r.code != 1 || !strings.Contains(r.stderr, "job lonely has no rollout") {
		t.Errorf("promote without an update block: exit %d", r.code)
	}
	r = run(t, env, "tether", "job", "promote", "nope")
	if r.code != 1 || !strings.Contains(r.stderr, "job nope not found") {
		t.Errorf("promote of an unknown job: exit %d", r.code)
	}
	r = run(t, env, "tether", "job", "revert", "lonely", "7")
	if r.code != 1 || !strings.Contains(r.stderr, "job lonely has no version 7 in its history (have 1)") {
		t.Errorf("revert to a version that does not exist: exit %d", r.code)
	}
	r = run(t, env, "tether", "job", "revert", "lonely", "latest")
	if r.code != 1 || !strings.Contains(r.stderr, `version "latest": want a version number`) {
		t.Errorf("revert to a word: exit %d", r.code)
	}
	r = run(t, env, "tether", "job", "history", "lonely")
	if r.code != 0 || !strings.Contains(r.stdout, "VERSION") || !strings.Contains(r.stdout, "\n1 ") {
		t.Errorf("history: exit %d", r.code)
	}
	r = run(t, env, "tether", "device", "eligibility", "d1")
	if r.code != 1 || !strings.Contains(r.stderr, "want exactly one of --enable or --disable") {
		t.Errorf("eligibility without a flag: exit %d", r.code)
	}
	r = run(t, env, "tether", "device", "drain", "bad id")
	if r.code != 1 || !strings.Contains(r.stderr, "device: invalid identifier") {
		t.Errorf("drain of a bad id: exit %d", r.code)
	}
}
