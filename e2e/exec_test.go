package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// TestEdgedBinaryExecAdoption runs a separate edged binary (exec driver
// only) against `tether dev`: a system job lands on it because of its
// label, the process keeps running when edged is killed, and a new edged
// adopts it instead of starting a second one.
func TestEdgedBinaryExecAdoption(t *testing.T) {
	_, env, serverDir := devServerDir(t, "--no-edged")
	url := strings.TrimPrefix(env[0], "TETHER_BROKER=")
	dataDir := t.TempDir()
	marker := filepath.Join(t.TempDir(), "pids")
	edgedArgs := append([]string{"run", "--device-id", "exec-dev", "--broker", url, "--data-dir", dataDir, "--label", "role=sensor", "--no-podman"},
		plannerKeyArgs(serverDir)...)
	ed := start(t, "edged", nil, edgedArgs...)

	eventually(t, 30*time.Second, "the device to be listed online", func() bool {
		r := run(t, env, "tether", "device", "list")
		return strings.Contains(r.stdout, "exec-dev") && strings.Contains(r.stdout, "online")
	})
	file := filepath.Join(t.TempDir(), "sensor.yaml")
	os.WriteFile(file, []byte(`id: sensor
type: system
groups:
  - name: reader
    constraints:
      - {attribute: "${device.labels.role}", value: sensor}
    tasks:
      - name: poll
        driver: exec
        config:
          command: ["/bin/sh", "-c", "echo $$ >> `+marker+`; exec sleep 600"]
        resources: {cpu: 10, memory: 8}
`), 0o644)
	r := run(t, env, "tether", "job", "run", file, "--timeout", "1m")
	if r.code != 0 {
		t.Fatalf("job run: exit %d", r.code)
	}
	pids := func() []string {
		b, _ := os.ReadFile(marker)
		return strings.Fields(string(b))
	}
	if got := pids(); len(got) != 1 {
		t.Fatalf("want one process started, got %v", got)
	}

	// A power cut for edged alone: the workload keeps running; a new edged
	// adopts it.
	ed.kill()
	ed = start(t, "edged", nil, edgedArgs...)
	ed.waitLine("") // started
	eventually(t, 30*time.Second, "the new edged to report the adopted task", func() bool {
		r := run(t, env, "tether", "device", "list", "-o", "json")
		var devs []protocol.DeviceBrief
		if json.Unmarshal([]byte(r.stdout), &devs) != nil {
			return false
		}
		for _, d := range devs {
			if d.ID == "exec-dev" && d.Presence != nil && d.Presence.Status == protocol.Online && d.AllocationsTotal == 1 && d.AllocationsRunning == 1 {
				return true
			}
		}
		return false
	})
	if got := pids(); len(got) != 1 {
		t.Fatalf("the task was started again after edged restarted: pids %v", got)
	}

	r = run(t, env, "tether", "job", "stop", "sensor")
	if r.code != 0 {
		t.Fatalf("job stop: exit %d", r.code)
	}
	pid := pids()[0]
	eventually(t, 30*time.Second, "the process to be gone", func() bool {
		_, err := os.Stat("/proc/" + pid)
		return err != nil
	})
}
