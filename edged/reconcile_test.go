package edged

import (
	"fmt"
	"testing"
	"time"

	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func svcTask(name string) protocol.Task {
	return protocol.Task{Name: name, Driver: "podman", Config: protocol.TaskConfig{Image: "img"},
		Restart: &protocol.RestartPolicy{Attempts: 2, Delay: protocol.Duration(time.Second), Interval: protocol.Duration(time.Minute), Mode: protocol.RestartFail}}
}

func desiredWith(typ protocol.JobType, tasks ...protocol.Task) *protocol.Desired {
	return desiredV(typ, 1, tasks...)
}

func desiredV(typ protocol.JobType, version uint64, tasks ...protocol.Task) *protocol.Desired {
	return &protocol.Desired{Device: "d", Generation: version, Allocations: []protocol.Allocation{{ID: "j.g.0-aaaaaa", Job: "j", JobVersion: version, Group: "g", Type: typ, Tasks: tasks}}}
}

func inst(task protocol.Task, state driver.State, code int) observed {
	return instOf(desiredWith(protocol.JobService, task), task, state, code)
}

// instOf is an instance created from task of the first allocation of d.
func instOf(d *protocol.Desired, task protocol.Task, state driver.State, code int) observed {
	return observed{Driver: "podman", Instance: driver.Instance{
		ID: "c-" + task.Name, Name: instanceName("j.g.0-aaaaaa", task.Name), State: state, ExitCode: code, StartedAt: t0.Add(-time.Hour),
		Labels: map[string]string{driver.LabelAlloc: "j.g.0-aaaaaa", driver.LabelTask: task.Name, driver.LabelJob: "j", driver.LabelSpec: instanceHash(d.Allocations[0], task), driver.LabelDevice: "d"},
	}}
}

var listed = map[string]bool{"podman": true}

func kinds(acts []action) []string {
	var out []string
	for _, a := range acts {
		switch a.Kind {
		case actStart:
			out = append(out, "start:"+a.Spec.Name)
		case actRemove:
			out = append(out, "remove:"+a.ID+":"+a.Reason)
		}
	}
	return out
}

func TestDiffStartsMissingAndAdoptsRunning(t *testing.T) {
	a, b := svcTask("a"), svcTask("b")
	res := diff("d", desiredWith(protocol.JobService, a, b), []observed{inst(a, driver.StateRunning, 0)}, nil, listed, t0)
	got := kinds(res.Actions)
	if len(got) != 1 || got[0] != "start:tether-j.g.0-aaaaaa-b" {
		t.Fatalf("actions = %v", got)
	}
	spec := res.Actions[0].Spec
	for _, l := range []string{driver.LabelAlloc, driver.LabelJob, driver.LabelGroup, driver.LabelTask, driver.LabelSpec, driver.LabelDevice} {
		if spec.Labels[l] == "" {
			t.Errorf("label %s missing", l)
		}
	}
}

func TestDiffRemovesUndesiredDuplicateAndChanged(t *testing.T) {
	a := svcTask("a")
	stray := inst(svcTask("old"), driver.StateRunning, 0)
	stray.Labels[driver.LabelAlloc] = "gone.g.0-bbbbbb"
	dup := inst(a, driver.StateRunning, 0)
	dup.ID = "c-dup"
	dup.StartedAt = t0.Add(-2 * time.Hour)
	res := diff("d", desiredWith(protocol.JobService, a), []observed{inst(a, driver.StateRunning, 0), dup, stray}, nil, listed, t0)
	got := kinds(res.Actions)
	want := map[string]bool{"remove:c-old:no longer desired": true, "remove:c-dup:duplicate": true}
	if len(got) != 2 || !want[got[0]] || !want[got[1]] {
		t.Fatalf("actions = %v", got)
	}

	changed := a
	changed.Env = map[string]string{"X": "1"}
	res = diff("d", desiredWith(protocol.JobService, changed), []observed{inst(a, driver.StateRunning, 0)}, nil, listed, t0)
	got = kinds(res.Actions)
	if len(got) != 2 || got[0] != "remove:c-a:spec changed" || got[1] != "start:tether-j.g.0-aaaaaa-a" {
		t.Fatalf("spec change actions = %v", got)
	}
}

func TestDiffRestartPolicy(t *testing.T) {
	a := svcTask("a")
	d := desiredWith(protocol.JobService, a)
	recs := map[string]taskRecord{}
	now := t0
	// Two restarts are allowed within the interval; the third exit fails.
	for i := 1; i <= 3; i++ {
		dead := inst(a, driver.StateExited, 137)
		dead.ID = fmt.Sprintf("c-%d", i) // every restart is a new instance
		res := diff("d", d, []observed{dead}, recs, listed, now)
		rec := res.Tasks[taskKey("j.g.0-aaaaaa", "a")]
		if i <= 2 {
			if rec.Restarts != i || rec.Failed || !rec.NextStart.Equal(now.Add(time.Second)) || res.Wake.IsZero() {
				t.Fatalf("exit %d: rec = %+v wake %v", i, rec, res.Wake)
			}
			if got := kinds(res.Actions); len(got) != 1 || got[0] != "remove:"+dead.ID+":restarting" {
				t.Fatalf("exit %d: actions %v", i, got)
			}
			// Before the delay nothing starts; after it, a new instance does.
			if r := diff("d", d, nil, res.Tasks, listed, now.Add(500*time.Millisecond)); len(r.Actions) != 0 {
				t.Fatalf("started before the delay: %v", kinds(r.Actions))
			}
			if r := diff("d", d, nil, res.Tasks, listed, now.Add(time.Second)); len(r.Actions) != 1 {
				t.Fatalf("not started after the delay: %v", kinds(r.Actions))
			}
		} else {
			if !rec.Failed || len(res.Actions) != 0 {
				t.Fatalf("third exit: rec = %+v actions %v", rec, kinds(res.Actions))
			}
			rep := buildReport(d, nil, res.Tasks, listed, listed, now)
			if rep[0].State != protocol.AllocFailed || rep[0].Tasks[0].State != protocol.TaskFailed {
				t.Fatalf("report %+v", rep)
			}
		}
		recs = res.Tasks
		now = now.Add(2 * time.Second)
	}
	// A failed task stays failed: nothing is started again.
	if r := diff("d", d, nil, recs, listed, now.Add(time.Hour)); len(r.Actions) != 0 {
		t.Fatalf("failed task restarted: %v", kinds(r.Actions))
	}
}

func TestOnExitDelayModeAndWindow(t *testing.T) {
	p := protocol.RestartPolicy{Attempts: 1, Delay: protocol.Duration(time.Second), Interval: protocol.Duration(time.Minute), Mode: protocol.RestartDelay}
	var rec taskRecord
	if ev := onExit(&rec, protocol.JobService, p, 1, t0); ev != protocol.EventRestarting || rec.Restarts != 1 {
		t.Fatalf("first: %s %+v", ev, rec)
	}
	ev := onExit(&rec, protocol.JobService, p, 1, t0.Add(5*time.Second))
	if ev != protocol.EventRestarting || rec.Failed || !rec.NextStart.Equal(t0.Add(time.Minute)) {
		t.Fatalf("delay mode: %s %+v", ev, rec)
	}
	// After the interval the budget is fresh again.
	rec = taskRecord{Restarts: 1, WindowStart: t0}
	fp := p
	fp.Mode = protocol.RestartFail
	if ev := onExit(&rec, protocol.JobService, fp, 1, t0.Add(2*time.Minute)); ev != protocol.EventRestarting || rec.Restarts != 1 {
		t.Fatalf("new window: %s %+v", ev, rec)
	}
}

func TestBatchCompletesOnce(t *testing.T) {
	a := svcTask("a")
	d := desiredWith(protocol.JobBatch, a)
	res := diff("d", d, []observed{instOf(d, a, driver.StateExited, 0)}, nil, listed, t0)
	rec := res.Tasks[taskKey("j.g.0-aaaaaa", "a")]
	if !rec.Complete || len(res.Actions) != 0 {
		t.Fatalf("rec %+v actions %v", rec, kinds(res.Actions))
	}
	// Even when the exited container is gone, a complete task never runs again.
	if r := diff("d", d, nil, res.Tasks, listed, t0.Add(time.Hour)); len(r.Actions) != 0 {
		t.Fatalf("batch rerun: %v", kinds(r.Actions))
	}
	rep := buildReport(d, nil, res.Tasks, listed, listed, t0)
	if rep[0].State != protocol.AllocComplete {
		t.Fatalf("report %+v", rep)
	}
	// A service task that exits 0 is restarted.
	res = diff("d", desiredWith(protocol.JobService, a), []observed{inst(a, driver.StateExited, 0)}, nil, listed, t0)
	if res.Tasks[taskKey("j.g.0-aaaaaa", "a")].Restarts != 1 {
		t.Fatalf("service exit 0 not restarted: %+v", res.Tasks)
	}
}

func TestDiffLeavesUnlistedDriverAlone(t *testing.T) {
	a := svcTask("a")
	res := diff("d", desiredWith(protocol.JobService, a), nil, nil, map[string]bool{}, t0)
	if len(res.Actions) != 0 {
		t.Fatalf("acted on a driver that did not answer: %v", kinds(res.Actions))
	}
	rep := buildReport(desiredWith(protocol.JobService, a), nil, res.Tasks, map[string]bool{}, listed, t0)
	if rep[0].State != protocol.AllocPending || rep[0].Tasks[0].Message != "driver podman did not answer" {
		t.Fatalf("report %+v", rep)
	}
	rep = buildReport(desiredWith(protocol.JobService, a), nil, res.Tasks, map[string]bool{}, map[string]bool{}, t0)
	if rep[0].Tasks[0].Message != "driver podman is not available on this device" {
		t.Fatalf("report %+v", rep)
	}
}

// TestStartFailureChargedOnce: a failed start leaves a created instance
// behind (as Podman does). It is removed, not counted as a second exit, and
// a batch task that never ran is never complete.
func TestStartFailureChargedOnce(t *testing.T) {
	for _, typ := range []protocol.JobType{protocol.JobBatch, protocol.JobService} {
		a := svcTask("a")
		d := desiredWith(typ, a)
		// The worker charged the failed start: one restart, next start in 1s.
		rec := taskRecord{SpecHash: instanceHash(d.Allocations[0], a), JobVersion: 1}
		onExit(&rec, typ, policy(a, typ), -1, t0)
		recs := map[string]taskRecord{taskKey("j.g.0-aaaaaa", "a"): rec}
		res := diff("d", d, []observed{instOf(d, a, driver.StateCreated, 0)}, recs, listed, t0.Add(10*time.Millisecond))
		got := res.Tasks[taskKey("j.g.0-aaaaaa", "a")]
		if got.Complete || got.Failed || got.Restarts != 1 {
			t.Fatalf("%s: record after a failed start = %+v", typ, got)
		}
		if k := kinds(res.Actions); len(k) != 1 || k[0] != "remove:c-a:never started" {
			t.Fatalf("%s: actions %v", typ, k)
		}
		if len(res.Events) != 0 {
			t.Fatalf("%s: events for a created instance: %+v", typ, res.Events)
		}
	}
}

// TestExitChargedOnceWhenRemoveFails: an exited instance whose removal
// failed is seen again on the next pass; it must not be charged again.
func TestExitChargedOnceWhenRemoveFails(t *testing.T) {
	a := svcTask("a")
	d := desiredWith(protocol.JobService, a)
	dead := inst(a, driver.StateExited, 1)
	res := diff("d", d, []observed{dead}, nil, listed, t0)
	res2 := diff("d", d, []observed{dead}, res.Tasks, listed, t0.Add(100*time.Millisecond))
	rec := res2.Tasks[taskKey("j.g.0-aaaaaa", "a")]
	if rec.Restarts != 1 || len(res2.Events) != 0 {
		t.Fatalf("charged twice: %+v, events %+v", rec, res2.Events)
	}
	if k := kinds(res2.Actions); len(k) != 1 || k[0] != "remove:c-a:restarting" {
		t.Fatalf("removal not retried: %v", k)
	}
}

// TestNewVersionGetsFreshRecord: a job stopped and run again (a new
// version, same spec) while this device was away must run again: a batch
// task that completed in version 1 runs in version 2, a failed service
// task starts again, and a running service task is left alone.
func TestNewVersionGetsFreshRecord(t *testing.T) {
	a := svcTask("a")
	k := taskKey("j.g.0-aaaaaa", "a")
	v1 := desiredV(protocol.JobBatch, 1, a)
	done := diff("d", v1, []observed{instOf(v1, a, driver.StateExited, 0)}, nil, listed, t0)
	if !done.Tasks[k].Complete {
		t.Fatal("v1 not complete")
	}
	v2 := desiredV(protocol.JobBatch, 2, a)
	res := diff("d", v2, []observed{instOf(v1, a, driver.StateExited, 0)}, done.Tasks, listed, t0)
	if got := kinds(res.Actions); len(got) != 2 || got[0] != "remove:c-a:spec changed" || got[1] != "start:tether-j.g.0-aaaaaa-a" {
		t.Fatalf("batch v2: %v", got)
	}

	s1 := desiredV(protocol.JobService, 1, a)
	failed := map[string]taskRecord{k: {SpecHash: instanceHash(s1.Allocations[0], a), JobVersion: 1, Failed: true}}
	s2 := desiredV(protocol.JobService, 2, a)
	if got := kinds(diff("d", s2, nil, failed, listed, t0).Actions); len(got) != 1 || got[0] != "start:tether-j.g.0-aaaaaa-a" {
		t.Fatalf("failed service not started for v2: %v", got)
	}
	running := instOf(s1, a, driver.StateRunning, 0)
	if got := kinds(diff("d", s2, []observed{running}, nil, listed, t0).Actions); len(got) != 0 {
		t.Fatalf("running service restarted by a version bump with the same spec: %v", got)
	}
}

// TestSameIDNewRunIsCharged: the exec driver reuses the instance id (its
// name) for every run; a new run that exits is a new exit.
func TestSameIDNewRunIsCharged(t *testing.T) {
	a := svcTask("a")
	d := desiredWith(protocol.JobService, a)
	first := inst(a, driver.StateExited, 3)
	res := diff("d", d, []observed{first}, nil, listed, t0)
	second := first
	second.StartedAt = first.StartedAt.Add(2 * time.Second)
	res2 := diff("d", d, []observed{second}, res.Tasks, listed, t0.Add(3*time.Second))
	rec := res2.Tasks[taskKey("j.g.0-aaaaaa", "a")]
	if rec.Restarts != 2 || len(res2.Events) == 0 {
		t.Fatalf("second run's exit not charged: %+v, events %+v", rec, res2.Events)
	}
}

// TestSuspendedKeepsRecords: a suspended allocation (stop_after) stops its
// running workload but keeps its records and exited instances: a batch task
// that completed never runs again after the suspension ends.
func TestSuspendedKeepsRecords(t *testing.T) {
	a := svcTask("a")
	d := desiredV(protocol.JobBatch, 1, a)
	k := taskKey("j.g.0-aaaaaa", "a")
	done := diff("d", d, []observed{instOf(d, a, driver.StateExited, 0)}, nil, listed, t0)
	sus := map[string]string{"j.g.0-aaaaaa": "stopped: no server"}
	res := diffSuspended("d", d, []observed{instOf(d, a, driver.StateExited, 0)}, done.Tasks, listed, sus, t0)
	if !res.Tasks[k].Complete || len(res.Actions) != 0 {
		t.Fatalf("suspension touched a complete batch task: %+v %v", res.Tasks[k], kinds(res.Actions))
	}
	after := diff("d", d, nil, res.Tasks, listed, t0.Add(time.Hour))
	if len(after.Actions) != 0 {
		t.Fatalf("complete batch task ran again after the suspension: %v", kinds(after.Actions))
	}
	// A running service task is stopped, and keeps its restart budget.
	s := desiredWith(protocol.JobService, a)
	recs := map[string]taskRecord{k: {SpecHash: instanceHash(s.Allocations[0], a), JobVersion: 1, Restarts: 1, Total: 1}}
	res = diffSuspended("d", s, []observed{inst(a, driver.StateRunning, 0)}, recs, listed, sus, t0)
	if got := kinds(res.Actions); len(got) != 1 || got[0] != "remove:c-a:stop_after" || res.Tasks[k].Total != 1 {
		t.Fatalf("suspend running service: %v %+v", got, res.Tasks[k])
	}
}
