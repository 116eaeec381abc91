package edged

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/fake"
	"github.com/tether-edge/tether/protocol"
	bolt "go.etcd.io/bbolt"
)

// healthRig is a real broker, an edged over a fake runtime, and an
// observer client that publishes desired documents and records every
// report and event edged publishes, in arrival order.
type healthRig struct {
	t      *testing.T
	device string
	cfg    Config
	rt     *fake.Driver
	obs    *bus.Client
	topics protocol.Topics

	mu      sync.Mutex
	reports []seenReport
	events  []protocol.Event
}

type seenReport struct {
	protocol.Reported
	arrived time.Time
}

func newHealthRig(t *testing.T, resync time.Duration, opts fake.Options) *healthRig {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t))
	b := startBroker(t, "127.0.0.1:0", log)
	addr := "mqtt://" + b.MQTTAddr()
	opts.Log = log
	r := &healthRig{t: t, device: "h1", rt: fake.New(opts)}
	r.cfg = Config{DeviceID: r.device, Brokers: []string{addr}, DataDir: t.TempDir(), Drivers: []driver.Driver{r.rt}, Resync: resync, PlannerKeys: testPlannerKeys(), Log: log}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obs, err := bus.Dial(ctx, bus.Config{Brokers: []string{addr}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(obs.Close)
	r.obs = obs
	if err := obs.Subscribe(ctx, r.topics.Reported(r.device), 1, func(m bus.Message) {
		rep, err := protocol.DecodeReported(m.Payload)
		if err != nil {
			t.Errorf("bad report: %v", err)
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		// Delivery is at least once: drop what is not newer, as receivers do.
		if n := len(r.reports); n > 0 && r.reports[n-1].Epoch == rep.Epoch && rep.Seq <= r.reports[n-1].Seq {
			return
		}
		r.reports = append(r.reports, seenReport{Reported: rep, arrived: time.Now()})
	}); err != nil {
		t.Fatal(err)
	}
	seenEvents := map[uint64]bool{}
	if err := obs.Subscribe(ctx, r.topics.Events(r.device), 1, func(m bus.Message) {
		e, err := protocol.DecodeEvent(m.Payload)
		if err != nil {
			t.Errorf("bad event: %v", err)
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if !seenEvents[e.Seq] {
			seenEvents[e.Seq] = true
			r.events = append(r.events, e)
		}
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

// publish sends a desired document the way the planner does: signed,
// retained, QoS 1.
func (r *healthRig) publish(d protocol.Desired) {
	r.t.Helper()
	d.Device = r.device
	raw, err := protocol.Encode(sign(r.t, d, testPlannerKey))
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.obs.Publish(ctx, r.topics.Desired(r.device), raw, true, 1); err != nil {
		r.t.Fatal(err)
	}
}

// seen returns copies of what arrived so far.
func (r *healthRig) seen() ([]seenReport, []protocol.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]seenReport(nil), r.reports...), append([]protocol.Event(nil), r.events...)
}

// waitReport waits for a report that satisfies cond and returns its index.
func (r *healthRig) waitReport(what string, cond func(protocol.Reported) bool) int {
	r.t.Helper()
	found := -1
	eventually(r.t, what, func() bool {
		reps, _ := r.seen()
		for i, rep := range reps {
			if cond(rep.Reported) {
				found = i
				return true
			}
		}
		return false
	})
	return found
}

// healthEvents waits for n health events of alloc (the outbox sends the
// newest report before older events) and returns all that arrived, in
// order.
func (r *healthRig) healthEvents(alloc string, n int) []protocol.Event {
	r.t.Helper()
	var out []protocol.Event
	eventually(r.t, fmt.Sprintf("%d health events of %s", n, alloc), func() bool {
		_, evs := r.seen()
		out = nil
		for _, e := range evs {
			if e.Alloc == alloc && (e.Type == eventAllocHealthy || e.Type == eventAllocUnhealthy) {
				out = append(out, e)
			}
		}
		return len(out) >= n
	})
	return out
}

func allocOf(rep protocol.Reported, id string) (protocol.AllocStatus, bool) {
	for _, a := range rep.Allocations {
		if a.ID == id {
			return a, true
		}
	}
	return protocol.AllocStatus{}, false
}

// is reports whether rep shows alloc at version v with the given health.
func is(rep protocol.Reported, alloc string, v uint64, h protocol.Health) bool {
	a, ok := allocOf(rep, alloc)
	return ok && a.JobVersion == v && a.Health == h
}

// undecided reports whether rep shows no verdict for alloc at version v:
// the allocation is not there yet, or has no health.
func undecided(rep protocol.Reported, alloc string, v uint64) bool {
	a, ok := allocOf(rep, alloc)
	return !ok || a.JobVersion == v && a.Health == ""
}

// allRunning reports whether rep shows alloc at version v with every task
// running.
func allRunning(rep protocol.Reported, alloc string, v uint64) bool {
	a, ok := allocOf(rep, alloc)
	if !ok || a.JobVersion != v || len(a.Tasks) == 0 {
		return false
	}
	for _, t := range a.Tasks {
		if t.State != protocol.TaskRunning {
			return false
		}
	}
	return true
}

func forever(name string) protocol.Task {
	return protocol.Task{Name: name, Driver: protocol.DriverPodman, Config: protocol.TaskConfig{Image: "img", Command: []string{"sleep", "infinity"}},
		Restart: &protocol.RestartPolicy{Attempts: 3, Delay: protocol.Duration(50 * time.Millisecond), Interval: protocol.Duration(time.Minute), Mode: protocol.RestartFail}}
}

func healthPolicy(minHealthy, deadline time.Duration) *protocol.HealthPolicy {
	return &protocol.HealthPolicy{MinHealthyTime: protocol.Duration(minHealthy), HealthyDeadline: protocol.Duration(deadline)}
}

// crashFirst is a fake behaviour under which the first instance started
// from each task name crashes at once and every later one runs until
// stopped: a task that restarts early, then runs fine.
func crashFirst(names ...string) fake.Behavior {
	var mu sync.Mutex
	started := map[string]bool{}
	crash := map[string]bool{}
	for _, n := range names {
		crash[n] = true
	}
	return func(spec driver.Spec) fake.Outcome {
		mu.Lock()
		defer mu.Unlock()
		key := spec.Labels[driver.LabelAlloc] + "/" + spec.Labels[driver.LabelTask]
		if crash[spec.Labels[driver.LabelTask]] && !started[key] {
			started[key] = true
			return fake.Outcome{Exits: true, After: 10 * time.Millisecond, Code: 1}
		}
		return fake.Forever
	}
}

// TestHealthyAfterMinHealthyTime: an allocation with min_healthy_time
// 300ms is reported running and undecided first, healthy after that time
// (edged wakes up for it: the resync is a minute away), with one
// alloc_healthy event; an allocation without a policy reports no health.
func TestHealthyAfterMinHealthyTime(t *testing.T) {
	t.Parallel()
	r := newHealthRig(t, time.Minute, fake.Options{})
	const judged, plain = "web.g.0-abcdef", "plain.g.0-abcdef"
	r.publish(protocol.Desired{Generation: 1, Allocations: []protocol.Allocation{
		{ID: judged, Job: "web", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{forever("app"), forever("side")}, Health: healthPolicy(300*time.Millisecond, time.Minute)},
		{ID: plain, Job: "plain", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{forever("app")}},
	}})
	startAgent(t, r.cfg)
	healthy := r.waitReport("the allocation reported healthy", func(rep protocol.Reported) bool { return is(rep, judged, 1, protocol.Healthy) })

	reps, _ := r.seen()
	running := -1
	for i, rep := range reps[:healthy] {
		if !undecided(rep.Reported, judged, 1) {
			t.Fatalf("report %d before the healthy one has health %+v, want none", i, rep.Allocations)
		}
		if running < 0 && allRunning(rep.Reported, judged, 1) {
			running = i
		}
	}
	if running < 0 {
		t.Fatalf("no report showed the tasks running before the healthy one: %+v", reps[:healthy+1])
	}
	// Never before min_healthy_time: a lower bound, which no slowness can
	// break.
	a, _ := allocOf(reps[healthy].Reported, judged)
	for _, task := range a.Tasks {
		if ran := reps[healthy].arrived.Sub(*task.StartedAt); ran < 300*time.Millisecond {
			t.Errorf("healthy after task %s ran %v, before min_healthy_time", task.Name, ran)
		}
	}
	for _, rep := range reps {
		if p, ok := allocOf(rep.Reported, plain); ok && p.Health != "" {
			t.Fatalf("an allocation without a health policy reported health %q", p.Health)
		}
	}
	evs := r.healthEvents(judged, 1)
	if len(evs) != 1 || evs[0].Type != eventAllocHealthy || evs[0].Job != "web" || !strings.Contains(evs[0].Message, "job version 1") {
		t.Fatalf("health events %+v, want one alloc_healthy for job version 1", evs)
	}
	if evs := r.healthEvents(plain, 0); len(evs) != 0 {
		t.Fatalf("health events for an allocation without a policy: %+v", evs)
	}
}

// TestRestartBeforeMinHealthyTimeIsUnhealthy: a task that crashes and is
// restarted before min_healthy_time makes the allocation unhealthy, and it
// stays unhealthy while the restarted task runs fine for longer than
// min_healthy_time, pass after pass.
func TestRestartBeforeMinHealthyTimeIsUnhealthy(t *testing.T) {
	t.Parallel()
	r := newHealthRig(t, 50*time.Millisecond, fake.Options{Behavior: crashFirst("app")})
	const id = "web.g.0-abcdef"
	minHealthy := time.Second
	r.publish(protocol.Desired{Generation: 1, Allocations: []protocol.Allocation{
		{ID: id, Job: "web", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{forever("app")}, Health: healthPolicy(minHealthy, time.Minute)},
	}})
	ra := startAgent(t, r.cfg)
	bad := r.waitReport("the allocation reported unhealthy", func(rep protocol.Reported) bool { return is(rep, id, 1, protocol.Unhealthy) })
	waitRanFine(t, r, ra, id, 2*minHealthy)

	reps, _ := r.seen()
	for i, rep := range reps {
		if i < bad && !undecided(rep.Reported, id, 1) || i >= bad && !is(rep.Reported, id, 1, protocol.Unhealthy) {
			t.Fatalf("report %d: %+v; want no health before report %d and unhealthy from it on", i, rep.Allocations, bad)
		}
	}
	evs := r.healthEvents(id, 1)
	if len(evs) != 1 || evs[0].Type != eventAllocUnhealthy || !strings.Contains(evs[0].Message, "task app restarted") {
		t.Fatalf("health events %+v, want one alloc_unhealthy saying the task restarted", evs)
	}
}

// waitRanFine waits until the reports show the task of alloc restarted
// once and running since at least ran ago, and the agent made a few passes
// more.
func waitRanFine(t *testing.T, r *healthRig, ra *runningAgent, alloc string, ran time.Duration) {
	t.Helper()
	var since time.Time
	r.waitReport("the restarted task to run", func(rep protocol.Reported) bool {
		a, ok := allocOf(rep, alloc)
		if ok && a.Tasks[0].State == protocol.TaskRunning && a.Tasks[0].Restarts == 1 {
			since = *a.Tasks[0].StartedAt
			return true
		}
		return false
	})
	eventually(t, fmt.Sprintf("the restarted task to run for %s", ran), func() bool { return time.Since(since) > ran })
	n := ra.passes.Load()
	eventually(t, "five passes more", func() bool { return ra.passes.Load() >= n+5 })
}

// TestHealthyDeadlineWithTaskNeverStarted: one task runs, the other never
// starts (its driver is not on this device): at healthy_deadline the
// allocation is unhealthy, woken by edged's timer (the resync is a minute
// away), and never healthy before.
func TestHealthyDeadlineWithTaskNeverStarted(t *testing.T) {
	t.Parallel()
	r := newHealthRig(t, time.Minute, fake.Options{})
	const id = "web.g.0-abcdef"
	never := protocol.Task{Name: "side", Driver: protocol.DriverExec, Config: protocol.TaskConfig{Command: []string{"sleep", "infinity"}}}
	r.publish(protocol.Desired{Generation: 1, Allocations: []protocol.Allocation{
		{ID: id, Job: "web", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{forever("app"), never}, Health: healthPolicy(100*time.Millisecond, 700*time.Millisecond)},
	}})
	startAgent(t, r.cfg)
	bad := r.waitReport("the allocation reported unhealthy", func(rep protocol.Reported) bool { return is(rep, id, 1, protocol.Unhealthy) })
	reps, _ := r.seen()
	appRan := false
	for i, rep := range reps[:bad] {
		if !undecided(rep.Reported, id, 1) {
			t.Fatalf("report %d before the unhealthy one: %+v", i, rep.Allocations)
		}
		a, ok := allocOf(rep.Reported, id)
		appRan = appRan || ok && a.Tasks[0].State == protocol.TaskRunning
	}
	if !appRan {
		t.Fatal("no report showed the task that runs running before the deadline")
	}
	evs := r.healthEvents(id, 1)
	if len(evs) != 1 || evs[0].Type != eventAllocUnhealthy || !strings.Contains(evs[0].Message, "healthy_deadline") || !strings.Contains(evs[0].Message, "side pending") {
		t.Fatalf("health events %+v, want one alloc_unhealthy naming the deadline and the pending task", evs)
	}
}

// TestInPlaceVersionBumpJudgedAfresh: a new job version with the same tasks
// leaves the task running, and is judged afresh: undecided in its first
// report although the task ran long enough already, healthy once
// min_healthy_time has passed since edged began applying it.
func TestInPlaceVersionBumpJudgedAfresh(t *testing.T) {
	t.Parallel()
	r := newHealthRig(t, time.Minute, fake.Options{})
	const id = "web.g.0-abcdef"
	alloc := func(v uint64) protocol.Allocation {
		return protocol.Allocation{ID: id, Job: "web", JobVersion: v, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{forever("app")}, Health: healthPolicy(time.Second, time.Minute)}
	}
	r.publish(protocol.Desired{Generation: 1, Allocations: []protocol.Allocation{alloc(1)}})
	startAgent(t, r.cfg)
	r.waitReport("version 1 healthy", func(rep protocol.Reported) bool { return is(rep, id, 1, protocol.Healthy) })
	before := r.rt.Instances()
	if len(before) != 1 || before[0].State != driver.StateRunning {
		t.Fatalf("instances %+v, want one running", before)
	}

	r.publish(protocol.Desired{Generation: 2, Allocations: []protocol.Allocation{alloc(2)}})
	good := r.waitReport("version 2 healthy", func(rep protocol.Reported) bool { return is(rep, id, 2, protocol.Healthy) })
	reps, _ := r.seen()
	first := -1
	for i, rep := range reps {
		if a, ok := allocOf(rep.Reported, id); ok && a.JobVersion == 2 {
			first = i
			break
		}
	}
	if first == good || !is(reps[first].Reported, id, 2, "") {
		t.Fatalf("first report of version 2: %+v, want it undecided", reps[first].Allocations)
	}
	after := r.rt.Instances()
	if len(after) != 1 || after[0].ID != before[0].ID || !after[0].StartedAt.Equal(before[0].StartedAt) || after[0].State != driver.StateRunning {
		t.Fatalf("instances after the bump %+v, want %s untouched", after, before[0].ID)
	}
	evs := r.healthEvents(id, 2)
	if len(evs) != 2 || evs[0].Type != eventAllocHealthy || evs[1].Type != eventAllocHealthy ||
		!strings.Contains(evs[0].Message, "job version 1") || !strings.Contains(evs[1].Message, "job version 2") {
		t.Fatalf("health events %+v, want alloc_healthy for version 1 then 2", evs)
	}
}

// TestHealthVerdictsSurviveRestart: edged stops and starts again on the same
// state directory while the workloads run on. An unhealthy verdict stays
// unhealthy although the task now runs fine for longer than
// min_healthy_time; an undecided judgement keeps the time edged began
// applying the version, so a task that has run long enough by then is
// healthy in every report of the new run.
func TestHealthVerdictsSurviveRestart(t *testing.T) {
	t.Parallel()
	r := newHealthRig(t, 50*time.Millisecond, fake.Options{Behavior: crashFirst("flaky")})
	const bad, steady = "bad.g.0-abcdef", "steady.g.0-abcdef"
	minHealthy := 2 * time.Second
	r.publish(protocol.Desired{Generation: 1, Allocations: []protocol.Allocation{
		{ID: bad, Job: "bad", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{forever("flaky")}, Health: healthPolicy(minHealthy, time.Minute)},
		{ID: steady, Job: "steady", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{forever("app")}, Health: healthPolicy(minHealthy, time.Minute)},
	}})
	ra := startAgent(t, r.cfg)
	r.waitReport("bad unhealthy, steady running", func(rep protocol.Reported) bool {
		return is(rep, bad, 1, protocol.Unhealthy) && allRunning(rep, bad, 1) && allRunning(rep, steady, 1)
	})
	ra.stop()

	st, err := openState(filepath.Join(r.cfg.DataDir, "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	stored, err := st.health()
	if err != nil {
		t.Fatal(err)
	}
	lastSeq := storedReportSeq(t, st)
	st.close()
	if stored[bad].Health != protocol.Unhealthy || stored[steady].Health != "" || stored[steady].Began.IsZero() {
		t.Fatalf("stored judgements %+v, want bad unhealthy and steady undecided", stored)
	}
	instances := r.rt.Instances()
	// edged stays away until steady's tasks have run long enough.
	eventually(t, "min_healthy_time to pass while edged is down", func() bool { return time.Since(stored[steady].Began) > minHealthy })

	r.cfg.Drivers = []driver.Driver{r.rt.Reopen()}
	ra = startAgent(t, r.cfg)
	isNew := func(rep protocol.Reported) bool { return rep.Seq > lastSeq }
	r.waitReport("steady healthy after the restart", func(rep protocol.Reported) bool { return isNew(rep) && is(rep, steady, 1, protocol.Healthy) })
	waitRanFine(t, r, ra, bad, 2*minHealthy)
	badEvents, steadyEvents := r.healthEvents(bad, 1), r.healthEvents(steady, 1)
	ra.stop()

	reps, _ := r.seen()
	for i, rep := range reps {
		if isNew(rep.Reported) && (!is(rep.Reported, bad, 1, protocol.Unhealthy) || !is(rep.Reported, steady, 1, protocol.Healthy)) {
			t.Fatalf("report %d of the new run: %+v; want bad unhealthy and steady healthy throughout", i, rep.Allocations)
		}
	}
	if evs := badEvents; len(evs) != 1 || evs[0].Type != eventAllocUnhealthy {
		t.Fatalf("health events of bad %+v, want only the one alloc_unhealthy of the first run", evs)
	}
	if evs := steadyEvents; len(evs) != 1 || evs[0].Type != eventAllocHealthy {
		t.Fatalf("health events of steady %+v, want one alloc_healthy", evs)
	}
	if got := r.rt.Instances(); len(got) != len(instances) || got[0].ID != instances[0].ID || got[1].ID != instances[1].ID {
		t.Fatalf("instances %+v after the restart, want %+v untouched", got, instances)
	}
	st, err = openState(filepath.Join(r.cfg.DataDir, "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	again, _ := st.health()
	if !again[steady].Began.Equal(stored[steady].Began) {
		t.Fatalf("steady's judgement began at %v after the restart, want %v kept", again[steady].Began, stored[steady].Began)
	}
}

// storedReportSeq is the sequence number of the last report edged built.
func storedReportSeq(t *testing.T, st *localState) uint64 {
	t.Helper()
	var n uint64
	if err := st.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = strconv.ParseUint(string(tx.Bucket(bkMeta).Get(kRepSeq)), 10, 64)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}
