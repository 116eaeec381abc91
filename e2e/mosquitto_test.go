package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
)

// External broker mode against a real Mosquitto (Debian's, installed by
// .ci/run): `tether server --broker` with real edged processes behind
// fault proxies, and the same checks as the connectivity matrix.

// mosquittoPath finds Mosquitto. Without it the test skips, and fails
// when CI is set: there the tests must not pass by not running.
func mosquittoPath(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	if os.Getenv("CI") != "" {
		t.Fatal("mosquitto is not installed (CI is set: .ci/run installs it)")
	}
	t.Skip("mosquitto is not installed (apt-get install mosquitto): skipping the external broker tests")
	return ""
}

// mosquitto is one Mosquitto process with a configuration and a data
// directory of its own; restart keeps both.
type mosquitto struct {
	t    *testing.T
	path string
	conf string // config file
	dir  string // persistence and the config's files
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	out  bytes.Buffer // output of every run
}

// startMosquitto writes conf (already naming its listeners and files) into
// dir and starts Mosquitto on it, waiting until every addr accepts
// connections. It runs as the current user: as root Mosquitto would
// otherwise switch to the "mosquitto" user, who cannot read a test's
// temporary files.
func startMosquitto(t *testing.T, dir, conf string, addrs ...string) *mosquitto {
	t.Helper()
	m := &mosquitto{t: t, path: mosquittoPath(t), conf: filepath.Join(dir, "mosquitto.conf"), dir: dir}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	conf += fmt.Sprintf("\nuser %s\nlog_dest stderr\nlog_type all\n", u.Username)
	if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	m.start(addrs...)
	t.Cleanup(func() {
		m.stop()
		if t.Failed() {
			m.mu.Lock()
			t.Logf("--- output of mosquitto -c %s:\n%s", m.conf, m.out.String())
			m.mu.Unlock()
		}
	})
	return m
}

// lockedWriter lets the process write into m.out while tests read it.
type lockedWriter struct{ m *mosquitto }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	return w.m.out.Write(p)
}

func (m *mosquitto) start(addrs ...string) {
	m.t.Helper()
	m.cmd = exec.Command(m.path, "-c", m.conf)
	m.cmd.Stdout, m.cmd.Stderr = lockedWriter{m}, lockedWriter{m}
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	done := make(chan struct{})
	m.done = done
	go func() { m.cmd.Wait(); close(done) }()
	for _, a := range addrs {
		eventually(m.t, 15*time.Second, "mosquitto to listen on "+a, func() bool {
			select {
			case <-done:
				m.mu.Lock()
				defer m.mu.Unlock()
				m.t.Fatalf("mosquitto exited at start:\n%s", m.out.String())
			default:
			}
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
	}
}

// stop ends Mosquitto cleanly (SIGTERM): it writes its database, as at a
// planned restart.
func (m *mosquitto) stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(15 * time.Second):
		_ = m.cmd.Process.Kill()
		<-m.done
	}
	m.cmd = nil
}

// restart stops Mosquitto cleanly and starts it again on the same
// configuration and database.
func (m *mosquitto) restart(addrs ...string) {
	m.t.Helper()
	m.stop()
	m.start(addrs...)
}

// anonymousMosquitto is the plainest Mosquitto Tether can use: one
// listener, anyone in, persistence on (in the test's directory).
func anonymousMosquitto(t *testing.T) (*mosquitto, string) {
	t.Helper()
	mosquittoPath(t)
	dir := t.TempDir()
	addr := freePort(t)
	host, port, _ := net.SplitHostPort(addr)
	conf := fmt.Sprintf(`listener %s %s
allow_anonymous true
persistence true
persistence_location %s/
autosave_interval 30
max_inflight_messages 100
max_queued_messages 10000
`, port, host, dir)
	return startMosquitto(t, dir, conf, addr), addr
}

// newMosquittoFleet is a connectivity fleet whose server is `tether server
// --broker` against an anonymous Mosquitto.
func newMosquittoFleet(t *testing.T) (*cfleet, *mosquitto) {
	t.Helper()
	m, addr := anonymousMosquitto(t)
	f := &cfleet{t: t, dataDir: t.TempDir(), mqtt: addr, work: t.TempDir(), events: map[string][]protocol.Event{}, reports: map[string]protocol.Reported{}}
	f.env = []string{"TETHER_BROKER=mqtt://" + addr}
	startExternalServer(f)
	observe(f)
	return f, m
}

// startExternalServer starts `tether server --broker` for the fleet, with
// its data in DATA/server, where plannerKeyArgs looks for the key.
func startExternalServer(f *cfleet) {
	f.t.Helper()
	f.server = start(f.t, "tether", nil, "server", "--broker", "mqtt://"+f.mqtt, "--data-dir", filepath.Join(f.dataDir, "server"), "--http-addr", "")
	f.server.waitLine("Access:")
}

// observe records the fleet's events and newest reports with a persistent
// session, so that nothing is missed across restarts of the server (its
// session and queue are in the broker's database).
func observe(f *cfleet) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	obs, err := bus.Dial(ctx, bus.Config{Brokers: []string{"mqtt://" + f.mqtt}, ClientID: bus.RandomID("observer-"), CleanSession: false,
		KeepAlive: 2 * time.Second, ConnectTimeout: 2 * time.Second, Log: zerolog.Nop()})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(obs.Close)
	var topics protocol.Topics
	if err := obs.Subscribe(ctx, topics.DevicesFilter(protocol.KindEvents), 1, func(m bus.Message) {
		if e, err := protocol.DecodeEvent(m.Payload); err == nil {
			f.mu.Lock()
			f.events[e.Device] = append(f.events[e.Device], e)
			f.mu.Unlock()
		}
	}); err != nil {
		f.t.Fatal(err)
	}
	if err := obs.Subscribe(ctx, topics.DevicesFilter(protocol.KindReported), 1, func(m bus.Message) {
		if r, err := protocol.DecodeReported(m.Payload); err == nil {
			f.mu.Lock()
			if old, ok := f.reports[r.Device]; !ok || old.Epoch != r.Epoch || r.Seq > old.Seq {
				f.reports[r.Device] = r
			}
			f.mu.Unlock()
		}
	}); err != nil {
		f.t.Fatal(err)
	}
}

// retainedDesired reads the retained desired document of a device with a
// fresh client, as a device that just subscribed would.
func retainedDesired(t *testing.T, addr, device string) (protocol.Desired, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := bus.Dial(ctx, bus.Config{Brokers: []string{"mqtt://" + addr}, CleanSession: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var topics protocol.Topics
	got := make(chan []byte, 1)
	if err := c.Subscribe(ctx, topics.Desired(device), 1, func(m bus.Message) {
		if m.Retained {
			select {
			case got <- m.Payload:
			default:
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Barrier(ctx, topics.Base()); err != nil {
		t.Fatal(err)
	}
	select {
	case raw := <-got:
		d, err := protocol.DecodeDesired(raw)
		if err != nil {
			t.Fatalf("retained desired state of %s: %v", device, err)
		}
		return d, true
	default:
		return protocol.Desired{}, false
	}
}

func TestMosquittoExternalBroker(t *testing.T) {
	mosquittoPath(t)
	t.Parallel()

	t.Run("job_run_and_stop", func(t *testing.T) {
		t.Parallel()
		begin := time.Now()
		f, _ := newMosquittoFleet(t)
		a := f.addDevice("ma1", "--label", "member=yes")
		b := f.addDevice("ma2", "--label", "member=yes")
		f.presence("ma1", protocol.Online)
		f.presence("ma2", protocol.Online)
		file := filepath.Join(t.TempDir(), "web.yaml")
		doc := "id: web\ntype: system\ngroups:\n  - name: g\n    constraints:\n      - {attribute: \"${device.labels.member}\", value: \"yes\"}\n" + f.workloadTask("1")
		if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		// Without --detach job run follows the job until it runs.
		if r := run(t, f.env, "tether", "job", "run", file, "--timeout", "60s"); r.code != 0 {
			t.Fatalf("job run: exit %d", r.code)
		}
		f.converged("web", 1, "ma1", "ma2")
		a.oneAlive()
		b.oneAlive()
		t.Logf("job running on both devices %s after the start of the test", time.Since(begin).Round(time.Millisecond))
		if r := run(t, f.env, "tether", "job", "stop", "web", "--timeout", "60s"); r.code != 0 {
			t.Fatalf("job stop: exit %d", r.code)
		}
		eventually(t, 30*time.Second, "both workloads to stop", func() bool { return len(a.runningPids())+len(b.runningPids()) == 0 })
		// The signed desired state came through Mosquitto: edged pinned
		// the planner key and ran it.
		if d, ok := retainedDesired(t, f.mqtt, "ma1"); !ok || d.Signature == nil {
			t.Errorf("retained desired state of ma1: %+v, present %v; want a signed document", d, ok)
		}
		t.Logf("run and stop through Mosquitto: %s", time.Since(begin).Round(time.Millisecond))
	})

	t.Run("offline_device_gets_the_update", func(t *testing.T) {
		t.Parallel()
		f, _ := newMosquittoFleet(t)
		d := f.addDevice("mb1", "--label", "role=mb1")
		f.presence("mb1", protocol.Online)
		f.job("jb", "mb1", "1")
		f.converged("jb", 1, "mb1")
		mark := f.reportMark("mb1")
		d.proxy.Cut()
		f.presence("mb1", protocol.Offline) // Mosquitto sent the device's will
		f.job("jb", "mb1", "2")
		d.proxy.Heal()
		took := f.freshReport("mb1", mark, 2)
		f.converged("jb", 2, "mb1")
		t.Logf("the device that was away runs version 2 %s after it came back", took.Round(time.Millisecond))
		d.onlyVersionRuns("2")
		if n := len(d.pids()); n != 2 {
			t.Errorf("%d starts (%v), want 2: v1 and v2", n, d.pids())
		}
		f.checkEvents("mb1")
	})

	t.Run("server_killed_with_update_queued", func(t *testing.T) {
		t.Parallel()
		f, _ := newMosquittoFleet(t)
		d := f.addDevice("mc1", "--label", "role=mc1")
		f.presence("mc1", protocol.Online)
		f.job("jc", "mc1", "1")
		f.converged("jc", 1, "mc1")
		mark := f.reportMark("mc1")
		d.proxy.Cut()
		f.presence("mc1", protocol.Offline)
		// The update is accepted, then the server dies at once: a power cut.
		f.job("jc", "mc1", "2")
		f.server.kill()
		d.proxy.Heal()
		startExternalServer(f)
		begin := time.Now()
		f.freshReport("mc1", mark, 2)
		f.converged("jc", 2, "mc1")
		t.Logf("converged on version 2 %s after the server came back", time.Since(begin).Round(time.Millisecond))
		d.onlyVersionRuns("2")
		if n := len(d.pids()); n != 2 {
			t.Errorf("%d starts (%v), want 2: v1 and v2", n, d.pids())
		}
		f.checkEvents("mc1")
	})

	t.Run("mosquitto_restart", func(t *testing.T) {
		t.Parallel()
		f, m := newMosquittoFleet(t)
		var devs []*cdevice
		for _, id := range []string{"md1", "md2"} {
			devs = append(devs, f.addDevice(id, "--label", "role="+id))
			f.presence(id, protocol.Online)
		}
		f.job("jd1", "md1", "1")
		f.job("jd2", "md2", "1")
		f.converged("jd1", 1, "md1")
		f.converged("jd2", 1, "md2")
		before, ok := retainedDesired(t, f.mqtt, "md1")
		if !ok {
			t.Fatal("no retained desired state for md1 before the restart")
		}
		marks := map[string]protocol.Reported{"md1": f.reportMark("md1"), "md2": f.reportMark("md2")}

		// A planned restart (SIGTERM: Mosquitto saves its database). The
		// planner, the devices and the observer all lose the broker.
		begin := time.Now()
		m.restart(f.mqtt)
		after, ok := retainedDesired(t, f.mqtt, "md1")
		if !ok || after.Generation != before.Generation || after.Signature == nil || before.Signature == nil || after.Signature.Sig != before.Signature.Sig {
			t.Fatalf("retained desired state after the restart: %+v (present %v), want generation %d as before", after, ok, before.Generation)
		}
		for _, d := range devs {
			f.presence(d.id, protocol.Online)
			f.freshReport(d.id, marks[d.id], 1)
		}
		t.Logf("every device online with a fresh report %s after the broker restart", time.Since(begin).Round(time.Millisecond))
		for _, d := range devs {
			d.oneAlive()
			if n := len(d.pids()); n != 1 {
				t.Errorf("%s: %d starts (%v), want 1: a broker restart must not restart workloads", d.id, n, d.pids())
			}
		}
		// The planner re-subscribed: a new version still goes out.
		f.job("jd1", "md1", "2")
		f.converged("jd1", 2, "md1")
		f.converged("jd2", 1, "md2")
		devs[0].onlyVersionRuns("2")
		if n := len(devs[1].pids()); n != 1 {
			t.Errorf("md2: %d starts (%v), want 1", n, devs[1].pids())
		}
		for _, d := range devs {
			f.checkEvents(d.id)
		}
	})
}
