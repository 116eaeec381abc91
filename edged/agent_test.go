package edged

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
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

func running(d *fake.Driver, device string) []driver.Instance {
	var out []driver.Instance
	list, _ := d.List(context.Background(), device)
	for _, i := range list {
		if i.State == driver.StateRunning {
			out = append(out, i)
		}
	}
	return out
}

type runningAgent struct {
	a      *Agent
	cancel context.CancelFunc
	done   chan error
	passes atomic.Int64
}

func startAgent(t *testing.T, cfg Config) *runningAgent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
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

// TestOfflineBootRestartAndAdoption: with no broker at all, edged applies the
// desired document it stored earlier, restarts a task that dies, and after
// its own restart adopts the running workload without restarting it.
func TestOfflineBootRestartAndAdoption(t *testing.T) {
	dir := t.TempDir()
	st, err := openState(filepath.Join(dir, "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	task := protocol.Task{Name: "app", Driver: "podman", Config: protocol.TaskConfig{Image: "img", Command: []string{"sleep", "infinity"}},
		Restart: &protocol.RestartPolicy{Attempts: 3, Delay: protocol.Duration(50 * time.Millisecond), Interval: protocol.Duration(time.Minute), Mode: protocol.RestartFail}}
	desired := protocol.Desired{Device: "d1", Generation: 7, Allocations: []protocol.Allocation{{ID: "j.g.0-abcdef", Job: "j", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{task}}}}
	if err := st.putDesired(desired); err != nil {
		t.Fatal(err)
	}
	st.close()

	rt := fake.New(fake.Options{})
	cfg := Config{
		DeviceID: "d1", Brokers: []string{"mqtt://127.0.0.1:1"}, DataDir: dir, Drivers: []driver.Driver{rt},
		Resync: 100 * time.Millisecond, Log: zerolog.New(zerolog.NewTestWriter(t)),
	}
	ra := startAgent(t, cfg)
	eventually(t, "the stored workload to start offline", func() bool { return len(running(rt, "d1")) == 1 })
	first := running(rt, "d1")[0]
	if first.Labels[driver.LabelAlloc] != "j.g.0-abcdef" || first.Labels[driver.LabelSpec] != protocol.SpecHash(task) {
		t.Fatalf("labels %v", first.Labels)
	}

	if err := rt.Kill(first.Name, 137); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the killed task to be restarted", func() bool {
		r := running(rt, "d1")
		return len(r) == 1 && r[0].ID != first.ID
	})
	second := running(rt, "d1")[0]
	ra.stop()

	// edged restarts; the workload kept running meanwhile.
	cfg.Drivers = []driver.Driver{rt.Reopen()}
	ra = startAgent(t, cfg)
	eventually(t, "three passes after the restart", func() bool { return ra.passes.Load() >= 3 })
	r := running(rt, "d1")
	if len(r) != 1 || r[0].ID != second.ID || !r[0].StartedAt.Equal(second.StartedAt) {
		t.Fatalf("after edged restart: %+v, want the adopted %s untouched", r, second.ID)
	}
	if n := len(rt.Instances()); n != 1 {
		t.Fatalf("%d instances exist, want 1", n)
	}
	ra.stop()
	st, _ = openState(filepath.Join(dir, "edged.db"))
	defer st.close()
	recs, _ := st.tasks()
	if rec := recs[taskKey("j.g.0-abcdef", "app")]; rec.Total != 1 {
		t.Errorf("restart count after edged restart = %d, want 1", rec.Total)
	}
}
