package planner

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// fixture is a real broker, a real store and a planner connected through a
// real MQTT client, plus an observer client that records what is published.
type fixture struct {
	t      *testing.T
	topics protocol.Topics
	broker *broker.Broker
	store  *store.Store
	obs    *bus.Client
	log    zerolog.Logger

	mu   sync.Mutex
	msgs map[string][][]byte // by topic, in arrival order

	cancel context.CancelFunc
	done   chan error

	// indexPageSize, when set before startPlanner, is the planner's
	// IndexPageSize.
	indexPageSize int
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t))
	b, err := broker.New(broker.Config{MQTTAddr: "127.0.0.1:0", AllowAnonymousLoopback: true, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	st, err := store.Open(filepath.Join(t.TempDir(), "planner.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{t: t, broker: b, store: st, log: log, msgs: map[string][][]byte{}}
	f.obs = f.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, filter := range []string{f.topics.Base() + "/devices/+/desired", f.topics.JobStatusFilter(), f.topics.FleetSummary(), f.topics.Base() + "/jobs/+/history", f.topics.Base() + "/plans/+/result"} {
		if err := f.obs.Subscribe(ctx, filter, 1, func(m bus.Message) {
			f.mu.Lock()
			f.msgs[m.Topic] = append(f.msgs[m.Topic], m.Payload)
			f.mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *fixture) dial() *bus.Client {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := bus.Dial(ctx, bus.Config{Brokers: []string{"tcp://" + f.broker.MQTTAddr()}, CleanSession: true, Log: f.log})
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(c.Close)
	return c
}

func (f *fixture) startPlanner() { f.startPlannerOn(f.dial()) }

func (f *fixture) startPlannerOn(b Bus) {
	f.t.Helper()
	p := New(Config{Bus: b, Store: f.store, Topics: f.topics, Log: f.log.With().Str("part", "planner").Logger(), IndexPageSize: f.indexPageSize})
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.done = make(chan error, 1)
	go func() { f.done <- p.Run(ctx) }()
	f.t.Cleanup(f.stopPlanner)
}

func (f *fixture) stopPlanner() {
	if f.cancel != nil {
		f.cancel()
		<-f.done
		f.cancel = nil
	}
}

func (f *fixture) publish(topic string, v any) {
	f.t.Helper()
	var raw []byte
	switch x := v.(type) {
	case string:
		raw = []byte(x)
	case nil:
	default:
		var err error
		if raw, err = protocol.Encode(v); err != nil {
			f.t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.obs.Publish(ctx, topic, raw, true, 1); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) device(id string, mhz, mb int, labels map[string]string) {
	f.publish(f.topics.Facts(id), protocol.Facts{Device: id, Arch: "amd64", OS: "linux", CPUCores: 2, CPUMHz: mhz, MemoryMB: mb, Drivers: []string{"exec", "podman"}, Labels: labels})
	now := time.Now()
	f.publish(f.topics.Presence(id), protocol.Presence{Device: id, Status: protocol.Online, Since: &now})
}

func (f *fixture) count(topic string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.msgs[topic])
}

// wait polls until the newest message on topic satisfies cond.
func wait[T any](f *fixture, topic string, decode func([]byte) (T, error), what string, cond func(T) bool) T {
	f.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		f.mu.Lock()
		list := f.msgs[topic]
		var last []byte
		if len(list) > 0 {
			last = list[len(list)-1]
		}
		f.mu.Unlock()
		if last != nil {
			if v, err := decode(last); err == nil && cond(v) {
				return v
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s on %s; last: %s", what, topic, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const webJob = `{"id":"web","type":"service","groups":[{"name":"g","count":3,"tasks":[{"name":"t","driver":"podman","config":{"image":"img"},"resources":{"cpu":500,"memory":256}}]}]}`

func TestPlannerPlacesReportsRestartsAndStops(t *testing.T) {
	f := newFixture(t)
	f.device("a", 1000, 1024, nil)
	f.device("b", 2000, 1024, nil)
	f.startPlanner()
	f.publish(f.topics.Job("web"), webJob)

	// 3 × 500 MHz over a (1000) and b (2000), never over-committed: one
	// device gets one, the other two.
	st := wait(f, f.topics.JobStatus("web"), protocol.DecodeJobStatus, "3 placements", func(s protocol.JobStatus) bool {
		return s.Version == 1 && s.Counts.Placed == 3
	})
	if st.State != protocol.JobPending || st.Submission != protocol.Digest([]byte(webJob)) {
		t.Fatalf("status %+v", st)
	}
	da := wait(f, f.topics.Desired("a"), protocol.DecodeDesired, "desired for a", func(d protocol.Desired) bool { return len(d.Allocations) > 0 })
	db := wait(f, f.topics.Desired("b"), protocol.DecodeDesired, "desired for b", func(d protocol.Desired) bool { return len(d.Allocations) > 0 })
	if len(da.Allocations)+len(db.Allocations) != 3 || len(da.Allocations) > 2 || len(db.Allocations) > 4 {
		t.Fatalf("placement a=%d b=%d", len(da.Allocations), len(db.Allocations))
	}

	// Devices report everything running → the job is running.
	for _, d := range []protocol.Desired{da, db} {
		rep := protocol.Reported{Device: d.Device, Epoch: "e1", Seq: 5, ObservedGeneration: d.Generation, Time: time.Now()}
		for _, al := range d.Allocations {
			rep.Allocations = append(rep.Allocations, protocol.AllocStatus{ID: al.ID, Job: al.Job, JobVersion: al.JobVersion, Group: al.Group, State: protocol.AllocRunning})
		}
		f.publish(f.topics.Reported(d.Device), rep)
	}
	wait(f, f.topics.JobStatus("web"), protocol.DecodeJobStatus, "running", func(s protocol.JobStatus) bool { return s.State == protocol.JobRunning && s.Counts.Running == 3 })
	// A re-sent older report (same epoch, lower seq) changes nothing, even
	// with a later device clock.
	stale := protocol.Reported{Device: da.Device, Epoch: "e1", Seq: 4, Time: time.Now().Add(time.Hour)}
	for _, al := range da.Allocations {
		stale.Allocations = append(stale.Allocations, protocol.AllocStatus{ID: al.ID, Job: al.Job, JobVersion: al.JobVersion, Group: al.Group, State: protocol.AllocFailed})
	}
	f.publish(f.topics.Reported(da.Device), stale)
	f.device("sentinel0", 100, 100, nil)
	// The summary is published last in a pass: once it counts the sentinel,
	// the pass that also applied the stale report has published everything.
	wait(f, f.topics.FleetSummary(), protocol.DecodeFleetSummary, "the fleet summary", func(s protocol.FleetSummary) bool {
		return s.Devices.Total == 3 && s.Devices.Online == 3 && s.Devices.ByArch["amd64"] == 3 && len(s.Jobs) == 1
	})
	if st := wait(f, f.topics.JobStatus("web"), protocol.DecodeJobStatus, "status", func(protocol.JobStatus) bool { return true }); st.State != protocol.JobRunning {
		t.Fatalf("a stale report changed the status: %+v", st)
	}

	// An invalid document changes nothing: version 1 stays in force.
	bad := `{"id":"web","groups":[{"name":"g","tasks":[{"name":"t","driver":"dokcer"}]}]}`
	f.publish(f.topics.Job("web"), bad)
	st = wait(f, f.topics.JobStatus("web"), protocol.DecodeJobStatus, "rejection", func(s protocol.JobStatus) bool { return len(s.Errors) > 0 })
	if st.Version != 1 || st.State != protocol.JobRunning || st.Errors[0].Path != "groups[0].tasks[0].driver" {
		t.Fatalf("after invalid submission: %+v", st)
	}
	// A rejected document for a job that never existed says invalid.
	f.publish(f.topics.Job("nope"), `{"id":"other"}`)
	st = wait(f, f.topics.JobStatus("nope"), protocol.DecodeJobStatus, "invalid", func(s protocol.JobStatus) bool { return s.State == protocol.JobInvalid })
	if !strings.Contains(protocol.FieldErrors(joinErrs(st.Errors))[0].Error(), "groups") && len(st.Errors) < 2 {
		t.Errorf("errors %+v", st.Errors)
	}

	// Deleting a job that was never accepted clears it too.
	f.publish(f.topics.Job("nope"), nil)
	wait(f, f.topics.JobStatus("nope"), protocol.DecodeJobStatus, "the rejected job stopped", func(s protocol.JobStatus) bool { return s.State == protocol.JobStopped })

	// A planner restart republishes nothing unchanged.
	genA := f.count(f.topics.Desired("a"))
	statusN := f.count(f.topics.JobStatus("web"))
	summaryN := f.count(f.topics.FleetSummary())
	f.stopPlanner()
	f.startPlanner()
	f.device("c", 100, 100, nil) // a sentinel: its first desired proves a full pass ran
	wait(f, f.topics.Desired("c"), protocol.DecodeDesired, "desired for c", func(protocol.Desired) bool { return true })
	if n := f.count(f.topics.Desired("a")); n != genA {
		t.Errorf("desired for a republished after a restart: %d messages, had %d", n, genA)
	}
	if n := f.count(f.topics.JobStatus("web")); n != statusN {
		t.Errorf("status republished after a restart: %d messages, had %d", n, statusN)
	}
	wait(f, f.topics.FleetSummary(), protocol.DecodeFleetSummary, "the summary to count the new device", func(s protocol.FleetSummary) bool { return s.Devices.Total == 4 })
	f.mu.Lock()
	for _, raw := range f.msgs[f.topics.FleetSummary()][summaryN:] {
		if s, err := protocol.DecodeFleetSummary(raw); err != nil || s.Devices.Total != 4 {
			t.Errorf("unchanged summary republished after a restart: %s", raw)
		}
	}
	f.mu.Unlock()

	// Stopping the job empties the desired documents with a higher generation.
	f.publish(f.topics.Job("web"), nil)
	wait(f, f.topics.JobStatus("web"), protocol.DecodeJobStatus, "stopped", func(s protocol.JobStatus) bool { return s.State == protocol.JobStopped })
	after := wait(f, f.topics.Desired("a"), protocol.DecodeDesired, "empty desired for a", func(d protocol.Desired) bool { return len(d.Allocations) == 0 })
	if after.Generation <= da.Generation {
		t.Errorf("generation went from %d to %d", da.Generation, after.Generation)
	}
}

func joinErrs(fe []protocol.FieldError) error {
	var errs []error
	for _, e := range fe {
		errs = append(errs, e)
	}
	if len(errs) == 0 {
		return nil
	}
	return errs[0]
}

func TestSystemJobReachesDevicesThatJoinLater(t *testing.T) {
	f := newFixture(t)
	f.device("s1", 1000, 512, map[string]string{"role": "sensor"})
	f.device("x1", 1000, 512, map[string]string{"role": "camera"})
	f.startPlanner()
	f.publish(f.topics.Job("sensor"), `{"id":"sensor","type":"system","groups":[{"name":"r","constraints":[{"attribute":"${device.labels.role}","value":"sensor"}],"tasks":[{"name":"p","driver":"exec","config":{"command":["/bin/true"]}}]}]}`)
	wait(f, f.topics.Desired("s1"), protocol.DecodeDesired, "system alloc on s1", func(d protocol.Desired) bool { return len(d.Allocations) == 1 })
	x := wait(f, f.topics.Desired("x1"), protocol.DecodeDesired, "desired on x1", func(protocol.Desired) bool { return true })
	if len(x.Allocations) != 0 {
		t.Fatalf("system job placed on a device that fails its constraint: %+v", x)
	}
	f.device("s2", 1000, 512, map[string]string{"role": "sensor"})
	wait(f, f.topics.Desired("s2"), protocol.DecodeDesired, "system alloc on the new device", func(d protocol.Desired) bool { return len(d.Allocations) == 1 })
	wait(f, f.topics.JobStatus("sensor"), protocol.DecodeJobStatus, "2 placements", func(s protocol.JobStatus) bool { return s.Counts.Placed == 2 })
}

func TestUnplaceableJobSaysWhy(t *testing.T) {
	f := newFixture(t)
	f.device("a", 1000, 512, nil)
	f.startPlanner()
	f.publish(f.topics.Job("arm"), `{"id":"arm","groups":[{"name":"g","count":2,"constraints":[{"attribute":"${device.arch}","value":"arm64"}],"tasks":[{"name":"t","driver":"podman","config":{"image":"i"}}]}]}`)
	st := wait(f, f.topics.JobStatus("arm"), protocol.DecodeJobStatus, "unplaced", func(s protocol.JobStatus) bool { return len(s.Groups) == 1 && s.Groups[0].Unplaced != "" })
	want := "2 of 2 instances unplaced: 0 of 1 devices feasible: 1 constraint ${device.arch} = arm64"
	if st.Groups[0].Unplaced != want || st.State != protocol.JobDegraded {
		t.Fatalf("got %q (%s), want %q", st.Groups[0].Unplaced, st.State, want)
	}
}

// TestPlannerReadsThousandsOfRetainedDevices: a planner that starts on a
// broker already holding the retained state of thousands of devices must
// see every one of them.
func TestPlannerReadsThousandsOfRetainedDevices(t *testing.T) {
	if testing.Short() {
		t.Skip("publishes 6,000 retained messages")
	}
	f := newFixture(t)
	const n = 3000
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	now := time.Now()
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("dev-%04d", i)
		facts, _ := protocol.Encode(protocol.Facts{Device: id, Arch: "arm64", OS: "linux", CPUMHz: 1000, MemoryMB: 512, Drivers: []string{"exec"}})
		pres, _ := protocol.Encode(protocol.Presence{Device: id, Status: protocol.Online, Since: &now})
		if err := f.obs.Publish(ctx, f.topics.Facts(id), facts, true, 0); err != nil {
			t.Fatal(err)
		}
		if err := f.obs.Publish(ctx, f.topics.Presence(id), pres, true, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.obs.Barrier(ctx, f.topics.Base()); err != nil {
		t.Fatal(err)
	}
	f.startPlanner()
	wait(f, f.topics.FleetSummary(), protocol.DecodeFleetSummary, "all devices online in the summary", func(s protocol.FleetSummary) bool {
		return s.Devices.Total == n && s.Devices.Online == n
	})
}

// TestDeviceResourcesFromFacts: GPUs and disk the devices report in their
// facts reach the scheduler, which never hands out more than there is.
func TestDeviceResourcesFromFacts(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	for _, d := range []struct {
		id   string
		gpus int
	}{{"gpu1", 1}, {"nogpu", 0}} {
		facts := protocol.Facts{Device: d.id, Arch: "arm64", OS: "linux", CPUMHz: 4000, MemoryMB: 4096, DiskMB: 1000, Drivers: []string{"podman"}}
		if d.gpus > 0 {
			facts.Devices = []protocol.DeviceResource{{Name: "nvidia/gpu", Count: d.gpus}}
		}
		f.publish(f.topics.Facts(d.id), facts)
		f.publish(f.topics.Presence(d.id), protocol.Presence{Device: d.id, Status: protocol.Online, Since: &now})
	}
	f.startPlanner()
	f.publish(f.topics.Job("infer"), `{"id":"infer","groups":[{"name":"g","count":2,"tasks":[{"name":"t","driver":"podman","config":{"image":"i"},"resources":{"cpu":100,"memory":64,"disk":100,"devices":[{"name":"nvidia/gpu"}]}}]}]}`)
	st := wait(f, f.topics.JobStatus("infer"), protocol.DecodeJobStatus, "one placement and a reason", func(s protocol.JobStatus) bool {
		return s.Counts.Placed == 1 && len(s.Groups) == 1 && s.Groups[0].Unplaced != ""
	})
	if st.Allocs[0].Device != "gpu1" || !strings.Contains(st.Groups[0].Unplaced, "nvidia/gpu") {
		t.Fatalf("status %+v", st)
	}
}

// TestLostDeviceIsReplacedAndReconciled: a device offline for longer than
// the group's lost_after has its allocation replaced elsewhere (the
// original stays in its desired document, so it keeps running there); when
// the device returns only one of the two survives.
func TestLostDeviceIsReplacedAndReconciled(t *testing.T) {
	f := newFixture(t)
	f.device("a", 2000, 1024, map[string]string{"pref": "yes"})
	f.device("b", 1000, 1024, nil)
	f.startPlanner()
	f.publish(f.topics.Job("svc"), `{"id":"svc","groups":[{"name":"g","count":1,"disconnect":{"lost_after":"1s","reconcile":"keep_original"},"constraints":[{"attribute":"${device.labels.pref}","operator":"is_set"}],"tasks":[{"name":"t","driver":"podman","config":{"image":"i"}}]}]}`)
	st := wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "placed on a", func(s protocol.JobStatus) bool { return s.Counts.Placed == 1 })
	if st.Allocs[0].Device != "a" {
		t.Fatalf("placed on %s, want a", st.Allocs[0].Device)
	}
	original := st.Allocs[0].ID
	// b may now run it too: relabel it.
	now := time.Now()
	f.publish(f.topics.Facts("b"), protocol.Facts{Device: "b", Arch: "amd64", OS: "linux", CPUMHz: 1000, MemoryMB: 1024, Drivers: []string{"exec", "podman"}, Labels: map[string]string{"pref": "too"}})
	f.publish(f.topics.Presence("a"), protocol.Presence{Device: "a", Status: protocol.Offline})
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "the allocation disconnected", func(s protocol.JobStatus) bool { return s.Counts.Disconnected == 1 })
	// After lost_after, with no other event, a replacement goes to b.
	st = wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "a replacement on b", func(s protocol.JobStatus) bool { return s.Counts.Lost == 1 && s.Counts.Placed == 2 })
	var repl protocol.AllocSummary
	for _, a := range st.Allocs {
		if a.Device == "b" {
			repl = a
		}
	}
	if repl.ID == "" || !strings.Contains(repl.Message, original) {
		t.Fatalf("no replacement naming %s: %+v", original, st.Allocs)
	}
	wait(f, f.topics.Desired("b"), protocol.DecodeDesired, "the replacement in b's desired state", func(d protocol.Desired) bool { return len(d.Allocations) == 1 })
	if d := wait(f, f.topics.Desired("a"), protocol.DecodeDesired, "a's desired state", func(protocol.Desired) bool { return true }); len(d.Allocations) != 1 {
		t.Fatalf("the original left a's desired state while a was away: %+v", d)
	}
	// a returns: keep_original stops the replacement.
	f.publish(f.topics.Presence("a"), protocol.Presence{Device: "a", Status: protocol.Online, Since: &now})
	st = wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "one allocation again", func(s protocol.JobStatus) bool { return s.Counts.Placed == 1 && s.Counts.Lost == 0 })
	if st.Allocs[0].ID != original {
		t.Fatalf("keep_original kept %s, want %s", st.Allocs[0].ID, original)
	}
	wait(f, f.topics.Desired("b"), protocol.DecodeDesired, "the replacement gone from b", func(d protocol.Desired) bool { return len(d.Allocations) == 0 })
}

// A failed allocation is replaced on the other device once its delay has
// passed, with no other event, counting from its task's finish time as the
// server's clock sees it (the device's clock is an hour ahead here), and
// the replacement keeps the history in the store.
func TestFailedAllocationIsRescheduled(t *testing.T) {
	f := newFixture(t)
	f.device("a", 2000, 1024, nil)
	f.device("b", 2000, 1024, nil)
	f.startPlanner()
	f.publish(f.topics.Job("svc"), `{"id":"svc","groups":[{"name":"g","count":1,"reschedule":{"attempts":1,"delay":"2s"},"tasks":[{"name":"t","driver":"podman","config":{"image":"i"}}]}]}`)
	st := wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "placed", func(s protocol.JobStatus) bool { return s.Counts.Placed == 1 })
	failed := st.Allocs[0]
	d := wait(f, f.topics.Desired(failed.Device), protocol.DecodeDesired, "desired state", func(d protocol.Desired) bool { return len(d.Allocations) == 1 })
	al := d.Allocations[0]
	deviceNow := time.Now().Add(time.Hour)
	rep := protocol.Reported{Device: d.Device, Epoch: "e1", Seq: 1, ObservedGeneration: d.Generation, Time: deviceNow,
		Allocations: []protocol.AllocStatus{{ID: al.ID, Job: al.Job, JobVersion: al.JobVersion, Group: al.Group, State: protocol.AllocFailed,
			Tasks: []protocol.TaskStatus{{Name: "t", State: protocol.TaskFailed, FinishedAt: &deviceNow}}}}}
	f.publish(f.topics.Reported(d.Device), rep)
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "the failed allocation waiting", func(s protocol.JobStatus) bool {
		return len(s.Allocs) == 1 && s.Allocs[0].State == protocol.AllocFailed && strings.HasPrefix(s.Allocs[0].Message, "rescheduling after ")
	})
	other := map[string]string{"a": "b", "b": "a"}[failed.Device]
	st = wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "a replacement on "+other, func(s protocol.JobStatus) bool {
		return len(s.Allocs) == 1 && s.Allocs[0].Device == other
	})
	allocs, err := f.store.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	if len(allocs) != 1 || allocs[0].ID != st.Allocs[0].ID || len(allocs[0].Reschedules) != 1 {
		t.Fatalf("stored allocations %+v, want the replacement with one reschedule", allocs)
	}
	wait(f, f.topics.Desired(failed.Device), protocol.DecodeDesired, "the failed allocation gone", func(d protocol.Desired) bool { return len(d.Allocations) == 0 })
}
