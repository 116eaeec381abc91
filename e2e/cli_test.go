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
}
