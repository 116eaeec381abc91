package edged

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	execdrv "github.com/tether-edge/tether/edged/exec"
	"github.com/tether-edge/tether/edged/fake"
	"github.com/tether-edge/tether/protocol"
)

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// seedDesired stores d in a new edged.db in dir, as an earlier run of
// edged would have left it.
func seedDesired(t *testing.T, dir string, d protocol.Desired) {
	t.Helper()
	st, err := openState(filepath.Join(dir, "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	if err := st.putDesired(d); err != nil {
		t.Fatal(err)
	}
}

type runningAgent struct {
	a      *Agent
	cancel context.CancelFunc
	done   chan error
	passes atomic.Int64
}

func startAgent(t *testing.T, cfg Config) *runningAgent {
	t.Helper()
	return startAgentWith(t, cfg, nil)
}

// startAgentWith runs prep, if set, on the new agent before it runs.
func startAgentWith(t *testing.T, cfg Config, prep func(*Agent)) *runningAgent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if prep != nil {
		prep(a)
	}
	ra := &runningAgent{a: a, done: make(chan error, 1)}
	a.afterPass = func() { ra.passes.Add(1) }
	ctx, cancel := context.WithCancel(context.Background())
	ra.cancel = cancel
	go func() { ra.done <- a.Run(ctx) }()
	t.Cleanup(ra.stop)
	return ra
}

func (ra *runningAgent) stop() {
	if ra.cancel != nil {
		ra.cancel()
		<-ra.done
		ra.cancel = nil
	}
}

// scenario is what the offline-boot scenario needs from a runtime.
type scenario struct {
	device string
	task   protocol.Task
	// open returns a driver over the runtime; called again to simulate an
	// edged restart while the workloads keep running.
	open func() driver.Driver
	// kill kills an instance behind edged's back.
	kill func(driver.Instance)
}

func runningOf(t *testing.T, d driver.Driver, device string) []driver.Instance {
	t.Helper()
	list, err := d.List(context.Background(), device)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var out []driver.Instance
	for _, i := range list {
		if i.State == driver.StateRunning {
			out = append(out, i)
		}
	}
	return out
}

// offlineBootScenario: with no broker at all, edged applies the desired
// document it stored earlier, restarts a task that dies, and after its own
// restart adopts the running workload without restarting it.
func offlineBootScenario(t *testing.T, sc scenario) {
	dir := t.TempDir()
	alloc := "j.g.0-" + sc.device
	seedDesired(t, dir, protocol.Desired{Device: sc.device, Generation: 7, Allocations: []protocol.Allocation{{ID: alloc, Job: "j", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{sc.task}}}})

	drv := sc.open()
	cfg := Config{
		DeviceID: sc.device, Brokers: []string{"mqtt://127.0.0.1:1"}, DataDir: dir, Drivers: []driver.Driver{drv},
		Resync: 200 * time.Millisecond, StopTimeout: time.Second, PlannerKeys: testPlannerKeys(), Log: zerolog.New(zerolog.NewTestWriter(t)),
	}
	ra := startAgent(t, cfg)
	eventually(t, "the stored workload to start offline", func() bool { return len(runningOf(t, drv, sc.device)) == 1 })
	first := runningOf(t, drv, sc.device)[0]
	if first.Labels[driver.LabelAlloc] != alloc || first.Labels[driver.LabelSpec] != protocol.SpecHash(sc.task) || first.Labels[driver.LabelDevice] != sc.device {
		t.Fatalf("labels %v", first.Labels)
	}

	sc.kill(first)
	eventually(t, "the killed task to be restarted", func() bool {
		r := runningOf(t, drv, sc.device)
		return len(r) == 1 && r[0].ID != first.ID
	})
	second := runningOf(t, drv, sc.device)[0]
	ra.stop()

	// edged restarts; the workload kept running meanwhile.
	drv = sc.open()
	cfg.Drivers = []driver.Driver{drv}
	ra = startAgent(t, cfg)
	eventually(t, "three passes after the restart", func() bool { return ra.passes.Load() >= 3 })
	all, err := drv.List(context.Background(), sc.device)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].ID != second.ID || all[0].State != driver.StateRunning || !all[0].StartedAt.Equal(second.StartedAt) {
		t.Fatalf("after edged restart: %+v, want only the adopted %s, untouched", all, second.ID)
	}

	// The desired state goes away: edged removes the workload.
	if err := ra.a.state.putDesired(protocol.Desired{Device: sc.device, Generation: 8}); err != nil {
		t.Fatal(err)
	}
	ra.a.wake()
	eventually(t, "the workload to be removed", func() bool {
		all, err := drv.List(context.Background(), sc.device)
		return err == nil && len(all) == 0
	})
	ra.stop()
	st, err := openState(filepath.Join(dir, "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	recs, _ := st.tasks()
	if len(recs) != 0 {
		t.Errorf("task records left for removed allocations: %v", recs)
	}
}

func TestOfflineBootRestartAndAdoptionFake(t *testing.T) {
	rt := fake.New(fake.Options{})
	opened := false
	offlineBootScenario(t, scenario{
		device: "d1",
		task: protocol.Task{Name: "app", Driver: "podman", Config: protocol.TaskConfig{Image: "img", Command: []string{"sleep", "infinity"}},
			Restart: &protocol.RestartPolicy{Attempts: 3, Delay: protocol.Duration(50 * time.Millisecond), Interval: protocol.Duration(time.Minute), Mode: protocol.RestartFail}},
		open: func() driver.Driver {
			if !opened {
				opened = true
				return rt
			}
			return rt.Reopen()
		},
		kill: func(i driver.Instance) {
			if err := rt.Kill(i.Name, 137); err != nil {
				t.Fatal(err)
			}
		},
	})
}

// TestExecCrashLoopFails runs a crashing task with the real exec driver,
// which reuses one instance id for every run: the restart budget must run
// out, after exactly attempts+1 runs.
func TestExecCrashLoopFails(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "runs")
	ex, err := execdrv.New(filepath.Join(dir, "exec"), zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	task := protocol.Task{Name: "crash", Driver: "exec", Config: protocol.TaskConfig{Command: []string{"/bin/sh", "-c", "echo run >> " + marker + "; exit 3"}},
		Restart: &protocol.RestartPolicy{Attempts: 2, Delay: protocol.Duration(50 * time.Millisecond), Interval: protocol.Duration(time.Hour), Mode: protocol.RestartFail}}
	seedDesired(t, dir, protocol.Desired{Device: "dx", Generation: 1, Allocations: []protocol.Allocation{{ID: "c.g.0-abcdef", Job: "c", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{task}}}})
	ra := startAgent(t, Config{DeviceID: "dx", Brokers: []string{"mqtt://127.0.0.1:1"}, DataDir: dir, Drivers: []driver.Driver{ex}, Resync: 50 * time.Millisecond, PlannerKeys: testPlannerKeys(), Log: zerolog.New(zerolog.NewTestWriter(t))})
	eventually(t, "the task to be failed", func() bool {
		recs, _ := ra.a.state.tasks()
		return recs[taskKey("c.g.0-abcdef", "crash")].Failed
	})
	n := ra.passes.Load()
	eventually(t, "three passes more", func() bool { return ra.passes.Load() >= n+3 })
	ra.stop()
	b, _ := os.ReadFile(marker)
	if runs := strings.Count(string(b), "run"); runs != 3 {
		t.Fatalf("%d runs, want 3 (the first and 2 restarts)", runs)
	}
}
