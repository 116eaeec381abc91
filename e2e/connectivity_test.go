package e2e

import (
	"encoding/json"
	"fmt"
	"github.com/tether-edge/tether/internal/podmantest"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-edge/tether/internal/faultproxy"
	"github.com/tether-edge/tether/protocol"
)

// The connectivity matrix: real server and edged processes, a fault proxy
// between each edged and the broker, and at the end of every scenario the
// same checks: the device converged to the desired version, no event was
// lost (no sequence gap), no workload runs twice, none was restarted
// needlessly. Run it alone with `go tool task test:connectivity`.

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// cfleet is one server with its devices and an observer of their events.
type cfleet struct {
	t       *testing.T
	dataDir string
	mqtt    string
	server  *proc
	env     []string
	work    string // marker files of the workloads

	mu      sync.Mutex
	events  map[string][]protocol.Event  // by device
	reports map[string]protocol.Reported // newest by device
}

func newFleet(t *testing.T) *cfleet {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	f := &cfleet{t: t, dataDir: t.TempDir(), mqtt: freePort(t), work: t.TempDir(), events: map[string][]protocol.Event{}, reports: map[string]protocol.Reported{}}
	f.env = []string{"TETHER_BROKER=mqtt://" + f.mqtt}
	f.startServer()
	observe(f)
	return f
}

// reportMark is the newest report seen from the device (its sequence).
func (f *cfleet) reportMark(device string) protocol.Reported {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reports[device]
}

// freshReport waits for a report from the device made after mark in which
// every allocation runs at the given job version, and returns how long
// that took: the device itself says it converged, after the fault.
func (f *cfleet) freshReport(device string, mark protocol.Reported, version uint64) time.Duration {
	f.t.Helper()
	begin := time.Now()
	eventually(f.t, 90*time.Second, fmt.Sprintf("a fresh report from %s with everything running at v%d", device, version), func() bool {
		r := f.reportMark(device)
		if r.Epoch == mark.Epoch && r.Seq <= mark.Seq {
			return false
		}
		if len(r.Allocations) == 0 {
			return false
		}
		for _, a := range r.Allocations {
			if a.State != protocol.AllocRunning || a.JobVersion != version {
				return false
			}
		}
		return true
	})
	return time.Since(begin)
}

func (f *cfleet) startServer() {
	f.server = start(f.t, "tether", nil, "dev", "--no-edged", "--data-dir", f.dataDir, "--mqtt-addr", f.mqtt, "--ws-addr", "", "--http-addr", "")
	f.server.waitLine("MQTT broker:")
}

// cdevice is one edged process behind its own fault proxy.
type cdevice struct {
	f     *cfleet
	id    string
	proxy *faultproxy.Proxy
	dir   string
	args  []string
	proc  *proc
}

func (f *cfleet) addDevice(id string, extra ...string) *cdevice {
	f.t.Helper()
	p, err := faultproxy.New(f.mqtt)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { p.Close() })
	d := &cdevice{f: f, id: id, proxy: p, dir: f.t.TempDir()}
	d.args = append([]string{"run", "--device-id", id, "--broker", "mqtt://" + p.Addr(), "--data-dir", d.dir,
		"--keepalive", "2s", "--no-podman", "--label", "role=" + id}, plannerKeyArgs(f.dataDir)...)
	d.args = append(d.args, extra...)
	d.start()
	return d
}

func (d *cdevice) start() {
	d.proc = start(d.f.t, "edged", nil, d.args...)
	d.f.t.Cleanup(func() {
		for _, p := range d.runningPids() {
			n, _ := strconv.Atoi(p[strings.Index(p, ":")+1:])
			_ = syscall.Kill(n, syscall.SIGKILL)
		}
	})
}

// pids are the process ids the device's workload wrote at each start.
func (d *cdevice) pids() []string {
	b, _ := os.ReadFile(filepath.Join(d.f.work, d.id+".pids"))
	return strings.Fields(string(b))
}

// alive reports whether the recorded process runs: a zombie (killed, not
// yet reaped by its new parent) does not.
func alive(entry string) bool {
	n, _ := strconv.Atoi(entry[strings.Index(entry, ":")+1:])
	if n <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// runningPids are the recorded workload processes still alive.
func (d *cdevice) runningPids() []string {
	var out []string
	for _, p := range d.pids() {
		if alive(p) {
			out = append(out, p)
		}
	}
	return out
}

// job writes and runs a system job for one device whose workload records
// "VERSION:PID" at every start.
func (f *cfleet) job(id, device, version string) {
	f.t.Helper()
	f.runDoc(id, fmt.Sprintf(`id: %s
type: system
groups:
  - name: g
    constraints:
      - {attribute: "${device.labels.role}", value: %s}
`, id, device)+f.workloadTask(version))
}

// workloadTask is the tasks block of the test jobs: a plain process that
// records "VERSION:PID" in WORK/DEVICE.pids at every start, then sleeps.
func (f *cfleet) workloadTask(version string) string {
	return fmt.Sprintf(`    tasks:
      - name: w
        driver: exec
        env: {V: "%s"}
        config:
          command: ["/bin/sh", "-c", "echo $V:$$ >> %s/$TETHER_DEVICE_ID.pids; exec sleep 600"]
        resources: {cpu: 10, memory: 8}
        restart: {attempts: 100, delay: 200ms, interval: 1h}
`, version, f.work)
}

// runDoc submits a job document with `tether job run --detach`, which
// returns once the planner accepted it.
func (f *cfleet) runDoc(id, doc string) {
	f.t.Helper()
	file := filepath.Join(f.t.TempDir(), id+".yaml")
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		f.t.Fatal(err)
	}
	if r := run(f.t, f.env, "tether", "job", "run", file, "--detach"); r.code != 0 {
		f.t.Fatalf("job run: exit %d", r.code)
	}
}

// serviceJob runs a service job of count instances, one per device
// (distinct_hosts), on devices labelled role=member, with a disconnect
// policy; each workload records "VERSION:PID" at every start.
func (f *cfleet) serviceJob(id string, count int, version, disconnect string) {
	f.t.Helper()
	f.runDoc(id, fmt.Sprintf(`id: %s
groups:
  - name: g
    count: %d
    disconnect: %s
    constraints:
      - {attribute: "${device.labels.member}", value: "yes"}
      - {operator: distinct_hosts}
`, id, count, disconnect)+f.workloadTask(version))
}

// status returns a job's status.
func (f *cfleet) status(job string) protocol.JobStatus {
	f.t.Helper()
	var st protocol.JobStatus
	r := run(f.t, f.env, "tether", "job", "status", job, "-o", "json")
	_ = json.Unmarshal([]byte(r.stdout), &st)
	return st
}

// alive returns the workload processes alive on the devices, by version.
func aliveByVersion(devs ...*cdevice) map[string]int {
	out := map[string]int{}
	for _, d := range devs {
		for _, p := range d.runningPids() {
			out[p[:strings.Index(p, ":")]]++
		}
	}
	return out
}

// converged waits until the job runs at version on every listed device and
// returns how long that took.
func (f *cfleet) converged(job string, version uint64, devices ...string) time.Duration {
	f.t.Helper()
	begin := time.Now()
	eventually(f.t, 90*time.Second, fmt.Sprintf("job %s v%d running on %v", job, version, devices), func() bool {
		r := run(f.t, f.env, "tether", "job", "status", job, "-o", "json")
		var st protocol.JobStatus
		if json.Unmarshal([]byte(r.stdout), &st) != nil || st.Version != version || st.Counts.Running != len(devices) || len(st.Allocs) != len(devices) {
			return false
		}
		on := map[string]bool{}
		for _, a := range st.Allocs {
			on[a.Device] = a.State == protocol.AllocRunning && a.Version == version
		}
		for _, d := range devices {
			if !on[d] {
				return false
			}
		}
		return true
	})
	return time.Since(begin)
}

// online waits until the device's presence is online.
func (f *cfleet) presence(device string, want protocol.PresenceStatus) {
	f.t.Helper()
	eventually(f.t, 60*time.Second, fmt.Sprintf("%s to be %s", device, want), func() bool {
		r := run(f.t, f.env, "tether", "device", "list", "-o", "json")
		var devs []struct {
			ID       string             `json:"id"`
			Presence *protocol.Presence `json:"presence"`
		}
		json.Unmarshal([]byte(r.stdout), &devs)
		for _, d := range devs {
			if d.ID == device && d.Presence != nil && d.Presence.Status == want {
				return true
			}
		}
		return false
	})
}

// checkEvents asserts that no event of the device was lost: within every
// epoch the sequence numbers, duplicates aside, have no gap. Delivery is at
// least once (a message sent on a link that died before its PUBACK is sent
// again); receivers drop duplicates by sequence, as the planner does. It
// returns the number of distinct events.
func (f *cfleet) checkEvents(device string) int {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	byEpoch := map[string]map[uint64]int{}
	for _, e := range f.events[device] {
		if byEpoch[e.Epoch] == nil {
			byEpoch[e.Epoch] = map[uint64]int{}
		}
		byEpoch[e.Epoch][e.Seq]++
	}
	n := 0
	for epoch, seen := range byEpoch {
		seqs := make([]uint64, 0, len(seen))
		dups := 0
		for s, c := range seen {
			seqs = append(seqs, s)
			dups += c - 1
		}
		sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
		for i := range seqs {
			if seqs[i] != seqs[0]+uint64(i) {
				f.t.Errorf("%s epoch %s: events lost, sequence has a gap: %v", device, epoch, seqs)
				break
			}
		}
		if dups > 0 {
			f.t.Logf("%s epoch %s: %d duplicate deliveries (re-sent after a dead link), dropped by sequence", device, epoch, dups)
		}
		n += len(seqs)
	}
	return n
}

// onlyVersionRuns waits until exactly one workload process of the device
// runs, one that the given version started.
func (d *cdevice) onlyVersionRuns(version string) {
	d.f.t.Helper()
	eventually(d.f.t, 30*time.Second, d.id+" to run only version "+version, func() bool {
		r := d.runningPids()
		return len(r) == 1 && strings.HasPrefix(r[0], version+":")
	})
}

// oneAlive asserts that exactly one workload process of the device runs.
func (d *cdevice) oneAlive() {
	d.f.t.Helper()
	if r := d.runningPids(); len(r) != 1 {
		d.f.t.Fatalf("%s: %d workload processes alive (%v), want exactly 1; all starts: %v", d.id, len(r), r, d.pids())
	}
}

// killPid kills a recorded workload process and waits until it is dead.
func killPid(t *testing.T, entry string) {
	t.Helper()
	n, _ := strconv.Atoi(entry[strings.Index(entry, ":")+1:])
	if err := syscall.Kill(n, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", n, err)
	}
	eventually(t, 10*time.Second, "the killed process to die", func() bool { return !alive(entry) })
}

// fleetWithWorkload starts a fleet with one device running one system job
// at version 1.
func fleetWithWorkload(t *testing.T, device, job string) (*cfleet, *cdevice) {
	t.Helper()
	f := newFleet(t)
	d := f.addDevice(device)
	f.presence(device, protocol.Online)
	f.job(job, device, "1")
	f.converged(job, 1, device)
	return f, d
}

func TestConnectivity(t *testing.T) {
	t.Run("reboot_while_offline", func(t *testing.T) {
		f, d := fleetWithWorkload(t, "d2", "j2")
		d.oneAlive()

		// The link goes; then the device loses power: edged and its
		// workload die. It boots with no broker in reach.
		mark := f.reportMark("d2")
		d.proxy.Cut()
		d.proc.kill()
		killPid(t, d.pids()[0])
		d.start()
		eventually(t, 30*time.Second, "the workload to come back without the server", func() bool { return len(d.runningPids()) == 1 && len(d.pids()) == 2 })
		t.Logf("workload back after an offline reboot, server unreachable: pids %v", d.pids())

		d.proxy.Heal()
		took := f.freshReport("d2", mark, 1)
		f.converged("j2", 1, "d2")
		t.Logf("fresh report with the workload running %s after heal", took.Round(time.Millisecond))
		d.oneAlive()
		if n := len(d.pids()); n != 2 {
			t.Errorf("%d starts, want 2 (the first, and one after the reboot)", n)
		}
		// started; then after the reboot exited, restarting, started.
		eventually(t, 30*time.Second, "every event of the reboot to arrive", func() bool { return f.checkEvents("d2") >= 4 })
	})

	t.Run("server_restart_with_queued_update", func(t *testing.T) {
		f, d := fleetWithWorkload(t, "d3", "j3")

		// Offline while the job changes: the new desired document waits
		// in the device's session (QoS 1) and as the retained message.
		mark := f.reportMark("d3")
		d.proxy.Cut()
		f.presence("d3", protocol.Offline)
		f.job("j3", "d3", "2")
		// The server restarts with the update queued.
		f.server.stop()
		f.startServer()
		d.proxy.Heal()
		took := f.freshReport("d3", mark, 2)
		f.converged("j3", 2, "d3")
		t.Logf("device reported version 2 running %s after heal", took.Round(time.Millisecond))
		d.onlyVersionRuns("2")
		// started v1; stopped v1 (spec changed); started v2.
		eventually(t, 30*time.Second, "every event of the update to arrive", func() bool { return f.checkEvents("d3") >= 2 })
	})

	t.Run("flapping_link", func(t *testing.T) {
		f, d := fleetWithWorkload(t, "d5", "j5")
		before := d.pids()
		mark := f.reportMark("d5")

		// 100 flaps in a minute, while the workload crashes once.
		done := make(chan struct{})
		go func() { d.proxy.Flap(100, 300*time.Millisecond, 300*time.Millisecond); close(done) }()
		time.Sleep(5 * time.Second)
		killPid(t, before[0])
		<-done
		up, down, conns := d.proxy.Stats()
		t.Logf("after 100 flaps: %d connections, %d bytes up, %d down", conns, up, down)
		healed := time.Now()
		f.presence("d5", protocol.Online)
		f.freshReport("d5", mark, 1)
		f.converged("j5", 1, "d5")
		t.Logf("online with a fresh report %s after the last flap", time.Since(healed).Round(time.Millisecond))
		d.oneAlive()
		if n := len(d.pids()); n != 2 {
			t.Errorf("%d starts, want 2: flapping must not restart the workload (starts %v)", n, d.pids())
		}
		eventually(t, 30*time.Second, "the crash's events to arrive", func() bool { return f.checkEvents("d5") >= 4 })
	})

	t.Run("half_open_link", func(t *testing.T) {
		f, d := fleetWithWorkload(t, "d6", "j6")
		nBefore := f.checkEvents("d6")
		mark := f.reportMark("d6")

		d.proxy.Blackhole()
		begin := time.Now()
		f.presence("d6", protocol.Offline) // the broker's keepalive check sends the will
		t.Logf("server saw the half-open device offline after %s (keepalive 2s)", time.Since(begin).Round(time.Millisecond))
		killPid(t, d.pids()[0]) // events while the link is dead
		eventually(t, 30*time.Second, "the workload to be restarted offline", func() bool { return len(d.runningPids()) == 1 && len(d.pids()) == 2 })
		d.proxy.Heal()
		took := f.freshReport("d6", mark, 1)
		t.Logf("fresh report %s after heal", took.Round(time.Millisecond))
		f.presence("d6", protocol.Online)
		eventually(t, 30*time.Second, "the events made while half-open to arrive", func() bool { return f.checkEvents("d6") >= nBefore+3 })
		d.oneAlive()
	})

	t.Run("clock_off_by_an_hour", func(t *testing.T) {
		f := newFleet(t)
		ahead := f.addDevice("d7a", "--clock-offset", "1h")
		behind := f.addDevice("d7b", "--clock-offset", "-1h")
		f.presence("d7a", protocol.Online)
		f.presence("d7b", protocol.Online)
		f.job("j7a", "d7a", "1")
		f.job("j7b", "d7b", "1")
		f.converged("j7a", 1, "d7a")
		f.converged("j7b", 1, "d7b")
		// Crash both workloads: the new reports (clock behind or ahead)
		// must still count.
		killPid(t, ahead.pids()[0])
		killPid(t, behind.pids()[0])
		eventually(t, 30*time.Second, "both workloads restarted", func() bool { return len(ahead.pids()) == 2 && len(behind.pids()) == 2 })
		f.converged("j7a", 1, "d7a")
		f.converged("j7b", 1, "d7b")
		ahead.oneAlive()
		behind.oneAlive()
		f.checkEvents("d7a")
		f.checkEvents("d7b")
	})

	t.Run("idle_cost", func(t *testing.T) {
		// What an idle device costs on the wire: keepalives only, since
		// reports are sent on change. Measured over 10 keepalive periods.
		_, d := fleetWithWorkload(t, "d8", "j8")
		time.Sleep(3 * time.Second) // let the start-up traffic settle
		up0, down0, _ := d.proxy.Stats()
		const periods = 10
		time.Sleep(periods * 2 * time.Second)
		up1, down1, _ := d.proxy.Stats()
		perPeriod := float64((up1-up0)+(down1-down0)) / periods
		if perPeriod == 0 {
			t.Fatal("no keepalive traffic at all")
		}
		perDay := perPeriod * (24 * 3600 / 30) // at the default 30 s keepalive
		t.Logf("idle: %.1f MQTT bytes per keepalive period; at a 30 s keepalive %.0f bytes/day of MQTT payload (%d keepalives/day; with TCP/IP headers about %.0f KB/day)",
			perPeriod, perDay, 24*3600/30, float64(24*3600/30)*(perPeriod+2*66)/1024)
		d.oneAlive()
	})

	for _, replace := range []bool{true, false} {
		t.Run(fmt.Sprintf("partition_during_update_replace_%v", replace), func(t *testing.T) {
			f := newFleet(t)
			var devs []*cdevice
			for _, id := range []string{"m1", "m2", "m3", "m4"} {
				d := f.addDevice(id, "--label", "member=yes")
				devs = append(devs, d)
				f.presence(id, protocol.Online)
			}
			policy := fmt.Sprintf(`{lost_after: 3s, replace: %v}`, replace)
			f.serviceJob("web", 3, "1", policy)
			eventually(t, 60*time.Second, "3 instances of v1", func() bool { return aliveByVersion(devs...)["1"] == 3 })
			st := f.status("web")
			// Partition one device that runs an instance, then roll out v2.
			var victim *cdevice
			for _, d := range devs {
				for _, a := range st.Allocs {
					if a.Device == d.id && victim == nil {
						victim = d
					}
				}
			}
			victim.proxy.Cut()
			f.presence(victim.id, protocol.Offline)
			f.serviceJob("web", 3, "2", policy)
			if replace {
				eventually(t, 60*time.Second, "a replacement for the lost instance", func() bool {
					s := f.status("web")
					return s.Counts.Lost == 1 && s.Counts.Placed == 4
				})
			} else {
				time.Sleep(4 * time.Second) // past lost_after: still no replacement
				if s := f.status("web"); s.Counts.Placed != 3 || s.Counts.Lost != 1 {
					t.Fatalf("with replace off: %+v", s.Counts)
				}
			}
			// The partitioned device kept its workload running meanwhile.
			if len(victim.runningPids()) != 1 {
				t.Fatalf("the partitioned device's workload stopped: %v", victim.pids())
			}
			healed := time.Now()
			victim.proxy.Heal()
			eventually(t, 90*time.Second, "exactly 3 instances, all v2", func() bool {
				a := aliveByVersion(devs...)
				return a["2"] == 3 && a["1"] == 0
			})
			t.Logf("replace=%v: 3 instances of v2 and no duplicate %s after heal", replace, time.Since(healed).Round(time.Millisecond))
			eventually(t, 30*time.Second, "the status to settle", func() bool {
				s := f.status("web")
				return s.Version == 2 && s.Counts.Running == 3 && s.Counts.Placed == 3
			})
			for _, d := range devs {
				f.checkEvents(d.id)
			}
		})
	}

	t.Run("planner_killed_mid_update", func(t *testing.T) {
		f := newFleet(t)
		var devs []*cdevice
		for _, id := range []string{"k1", "k2", "k3"} {
			devs = append(devs, f.addDevice(id, "--label", "member=yes"))
			f.presence(id, protocol.Online)
		}
		f.serviceJob("api", 3, "1", "{}")
		eventually(t, 60*time.Second, "3 instances of v1", func() bool { return aliveByVersion(devs...)["1"] == 3 })
		// Submit v2 and kill the server the moment the planner accepted it,
		// while it publishes the devices' new desired state.
		f.serviceJob("api", 3, "2", "{}")
		f.server.kill()
		f.startServer()
		begin := time.Now()
		eventually(t, 90*time.Second, "3 instances of v2 after the restart", func() bool {
			a := aliveByVersion(devs...)
			return a["2"] == 3 && a["1"] == 0
		})
		t.Logf("every device on v2, none twice, %s after the server came back", time.Since(begin).Round(time.Millisecond))
		for _, d := range devs {
			if n := len(d.pids()); n != 2 {
				t.Errorf("%s started %d times (%v), want 2: v1 and v2", d.id, n, d.pids())
			}
			f.checkEvents(d.id)
		}
	})

	t.Run("reboot_while_offline_podman", func(t *testing.T) {
		// The same power cut for a device that runs a real Podman container.
		socket, image := podmanTest(t)
		f := newFleet(t)
		device := podmantest.NewDevice(t)
		p, err := faultproxy.New(f.mqtt)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		d := &cdevice{f: f, id: device, proxy: p, dir: t.TempDir()}
		d.args = append([]string{"run", "--device-id", device, "--broker", "mqtt://" + p.Addr(), "--data-dir", d.dir,
			"--keepalive", "2s", "--podman-socket", socket, "--label", "role=" + device}, plannerKeyArgs(f.dataDir)...)
		d.start()
		f.presence(device, protocol.Online)
		file := filepath.Join(t.TempDir(), "box.yaml")
		os.WriteFile(file, []byte(fmt.Sprintf(`id: box
type: system
groups:
  - name: g
    constraints:
      - {attribute: "${device.labels.role}", value: %s}
    tasks:
      - name: c
        driver: podman
        config: {image: %s, command: ["sleep", "600"]}
        resources: {cpu: 10, memory: 16}
        restart: {attempts: 100, delay: 200ms, interval: 1h}
`, device, image)), 0o644)
		if r := run(t, f.env, "tether", "job", "run", file, "--timeout", "2m"); r.code != 0 {
			t.Fatalf("job run: exit %d", r.code)
		}
		first := runningContainers(t, device)
		if len(first) != 1 {
			t.Fatalf("want 1 container, got %+v", containers(t, device))
		}
		mark := f.reportMark(device)
		// Power cut: the link, edged and the container go; edged boots with
		// no broker in reach.
		d.proxy.Cut()
		d.proc.kill()
		if out, err := exec.Command("podman", "rm", "--force", "--time", "0", first[0].ID).CombinedOutput(); err != nil {
			t.Fatalf("podman rm: %v\n%s", err, out)
		}
		d.start()
		eventually(t, 60*time.Second, "the container to come back without the server", func() bool {
			r := runningContainers(t, device)
			return len(r) == 1 && r[0].ID != first[0].ID
		})
		d.proxy.Heal()
		took := f.freshReport(device, mark, 1)
		t.Logf("podman: container back offline; fresh report %s after heal", took.Round(time.Millisecond))
		if r := runningContainers(t, device); len(r) != 1 {
			t.Fatalf("%d containers running after heal, want 1", len(r))
		}
		f.checkEvents(device)
	})
}
