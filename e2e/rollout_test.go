package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// Rollouts with real server and edged processes: health is judged by each
// edged, the rollout is driven by the planner, and the operator uses the
// CLI as documented.

// rolloutDoc is a system job over the devices labelled member=yes whose
// workload records "VERSION:PID" at every start; tasks replaces the
// workload when set.
func (f *cfleet) rolloutDoc(version, update, tasks string) string {
	if tasks == "" {
		tasks = f.workloadTask(version)
	}
	return fmt.Sprintf(`id: svc
type: system
groups:
  - name: g
    constraints:
      - {attribute: "${device.labels.member}", value: "yes"}
    update: %s
`, update) + tasks
}

// cli runs a tether command with a job document written to a file in
// place of the word FILE, and returns its result.
func (f *cfleet) cli(doc string, args ...string) result {
	f.t.Helper()
	file := filepath.Join(f.t.TempDir(), "svc.yaml")
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		f.t.Fatal(err)
	}
	for i, a := range args {
		if a == "FILE" {
			args[i] = file
		}
	}
	return run(f.t, f.env, "tether", args...)
}

func members(f *cfleet, names ...string) []*cdevice {
	var devs []*cdevice
	for _, n := range names {
		devs = append(devs, f.addDevice(n, "--label", "member=yes"))
	}
	for _, n := range names {
		f.presence(n, protocol.Online)
	}
	return devs
}

func starts(devs ...*cdevice) int {
	n := 0
	for _, d := range devs {
		n += len(d.pids())
	}
	return n
}

func TestRollout(t *testing.T) {
	t.Run("canary_promoted_then_auto_revert", func(t *testing.T) {
		f := newFleet(t)
		devs := members(f, "m1", "m2", "m3", "m4")
		update := `{max_parallel: 2, canary: 1, min_healthy_time: 1s, healthy_deadline: 30s, progress_deadline: 2m, auto_revert: true}`

		r := f.cli(f.rolloutDoc("1", update, ""), "job", "run", "FILE")
		if r.code != 0 || !strings.Contains(r.stdout, "Rollout of version 1 successful") {
			t.Fatalf("version 1: exit %d", r.code)
		}

		// Version 2: one canary, then the rollout waits for the operator.
		begin := time.Now()
		r = f.cli(f.rolloutDoc("2", update, ""), "job", "run", "FILE")
		if r.code != 0 || !strings.Contains(r.stdout, "paused") {
			t.Fatalf("version 2: exit %d, want a paused rollout", r.code)
		}
		t.Logf("canary healthy and rollout paused %s after submission", time.Since(begin).Round(time.Millisecond))
		if got := aliveByVersion(devs...); got["1"] != 3 || got["2"] != 1 {
			t.Fatalf("while paused: workloads by version %v, want 3 of v1 and 1 of v2", got)
		}
		st := f.status("svc")
		if st.Rollout == nil || st.Rollout.State != protocol.RolloutPaused || st.Rollout.Groups[0].Healthy != 1 {
			t.Fatalf("paused status: %+v", st.Rollout)
		}
		// A dry run of the same document changes nothing and says so.
		if r := f.cli(f.rolloutDoc("2", update, ""), "job", "plan", "FILE"); r.code != 0 || !strings.Contains(r.stdout, "equals version 2") {
			t.Errorf("plan of the document in force: exit %d", r.code)
		}

		begin = time.Now()
		if r := run(t, f.env, "tether", "job", "promote", "svc"); r.code != 0 || !strings.Contains(r.stdout, "Rollout of version 2 successful") {
			t.Fatalf("promote: exit %d", r.code)
		}
		t.Logf("promotion to rollout successful (3 devices, max_parallel 2): %s", time.Since(begin).Round(time.Millisecond))
		if got := aliveByVersion(devs...); got["2"] != 4 || len(got) != 1 {
			t.Fatalf("after promotion: workloads by version %v, want 4 of v2", got)
		}
		if n := starts(devs...); n != 8 {
			t.Errorf("%d starts, want 8: each device started v1 once and v2 once", n)
		}

		// Version 3 crashes: its canary is unhealthy, the rollout fails and
		// the planner returns the job to version 2 (as version 4).
		pidsBefore := map[string][]string{}
		for _, d := range devs {
			pidsBefore[d.id] = d.runningPids()
		}
		crash := `    tasks:
      - name: w
        driver: exec
        config: {command: ["/bin/sh", "-c", "exit 3"]}
        resources: {cpu: 10, memory: 8}
        restart: {attempts: 1, delay: 100ms, interval: 1h, mode: fail}
`
		begin = time.Now()
		r = f.cli(f.rolloutDoc("3", update, crash), "job", "run", "FILE")
		if r.code != 1 || !strings.Contains(r.stderr, "Rollout of version 3 failed") || !strings.Contains(r.stderr, "Reverting to version 2") {
			t.Fatalf("version 3: exit %d, want a failed rollout reverting to 2", r.code)
		}
		f.converged("svc", 4, "m1", "m2", "m3", "m4")
		t.Logf("bad version submitted → every device back on the good one: %s", time.Since(begin).Round(time.Millisecond))
		eventually(t, 60*time.Second, "four v2 workloads", func() bool {
			got := aliveByVersion(devs...)
			return got["2"] == 4 && len(got) == 1
		})
		// Only the canary was touched: the three others never restarted.
		touched := 0
		for _, d := range devs {
			now := d.runningPids()
			if len(now) != 1 || len(pidsBefore[d.id]) != 1 || now[0] != pidsBefore[d.id][0] {
				touched++
			}
		}
		if touched != 1 {
			t.Errorf("%d devices restarted their workload, want 1 (the canary)", touched)
		}
		h := run(t, f.env, "tether", "job", "history", "svc", "-o", "json")
		for _, want := range []string{`"reverted_to": 2`, `"state": "failed"`} {
			if !strings.Contains(h.stdout, want) {
				t.Errorf("history lacks %s", want)
			}
		}
	})

	t.Run("offline_device_does_not_stall", func(t *testing.T) {
		f := newFleet(t)
		devs := members(f, "o1", "o2", "o3")
		update := `{max_parallel: 1, min_healthy_time: 1s, healthy_deadline: 30s}`
		if r := f.cli(f.rolloutDoc("1", update, ""), "job", "run", "FILE"); r.code != 0 {
			t.Fatalf("version 1: exit %d", r.code)
		}
		devs[2].proxy.Cut()
		f.presence("o3", protocol.Offline)

		begin := time.Now()
		r := f.cli(f.rolloutDoc("2", update, ""), "job", "run", "FILE")
		if r.code != 0 || !strings.Contains(r.stdout, "Rollout of version 2 successful") {
			t.Fatalf("version 2 with a device offline: exit %d", r.code)
		}
		t.Logf("rollout over 2 online devices, 1 offline, max_parallel 1: %s", time.Since(begin).Round(time.Millisecond))
		st := f.status("svc")
		if g := st.Rollout.Groups[0]; g.PendingOffline != 1 || g.Healthy != 2 {
			t.Errorf("rollout with an offline device: %+v, want 2 healthy and 1 pending (offline)", g)
		}
		if got := aliveByVersion(devs[2]); got["1"] != 1 {
			t.Errorf("the offline device must keep running v1: %v", got)
		}

		mark := f.reportMark("o3")
		devs[2].proxy.Heal()
		took := f.freshReport("o3", mark, 2)
		f.converged("svc", 2, "o1", "o2", "o3")
		t.Logf("the returning device ran v2 %s after heal", took.Round(time.Millisecond))
		eventually(t, 30*time.Second, "three v2 workloads", func() bool { return aliveByVersion(devs...)["2"] == 3 })
	})
}
