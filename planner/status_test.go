package planner

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/planner/core"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

func allocIDs(allocs []protocol.AllocSummary) []string {
	var ids []string
	for _, a := range allocs {
		ids = append(ids, a.ID)
	}
	return ids
}

// mixedStatus is the status of a job with ten allocations, j.web.0 to
// j.web.9 on devices d0 to d9, in every state a status tells apart.
func mixedStatus() protocol.JobStatus {
	var allocs []core.Alloc
	reported := map[string]map[string]protocol.AllocStatus{}
	for i := range 10 {
		a := core.Alloc{ID: fmt.Sprintf("j.web.%d", i), Job: "j", JobVersion: 1, Group: "web", Index: i, Device: fmt.Sprintf("d%d", i)}
		allocs = append(allocs, a)
		reported[a.Device] = map[string]protocol.AllocStatus{a.ID: {ID: a.ID, Job: "j", JobVersion: 1, Group: "web", State: protocol.AllocRunning}}
	}
	set := func(i int, fn func(*protocol.AllocStatus)) {
		r := reported[allocs[i].Device][allocs[i].ID]
		fn(&r)
		reported[allocs[i].Device][allocs[i].ID] = r
	}
	set(0, func(r *protocol.AllocStatus) { r.Health = protocol.Healthy })
	set(2, func(r *protocol.AllocStatus) {
		r.State = protocol.AllocFailed
		r.Tasks = []protocol.TaskStatus{{Name: "t", State: protocol.TaskFailed, Message: "exited with code 1"}}
	})
	delete(reported[allocs[3].Device], allocs[3].ID) // not reported yet: pending
	set(4, func(r *protocol.AllocStatus) { r.Health = protocol.Unhealthy })
	allocs[7].Replaces = "j.web.7-gone"
	set(8, func(r *protocol.AllocStatus) { r.State = protocol.AllocComplete })
	set(9, func(r *protocol.AllocStatus) { r.State = protocol.AllocFailed })
	conn := map[string]protocol.AllocState{allocs[5].ID: protocol.AllocLost, allocs[6].ID: protocol.AllocDisconnected}
	groups := []protocol.GroupStatus{{Name: "web", Desired: 10, Placed: 10}}
	return BuildStatus(store.JobHead{ID: "j", Latest: 1}, groups, allocs, reported, conn)
}

// A status over the limit lists what an operator needs first — failed,
// lost, disconnected, unhealthy, pending, with a message — then running
// and complete allocations, each kind by id, and counts the rest; one
// within the limit is published as it is built.
func TestPublishedStatus(t *testing.T) {
	t.Parallel()
	st := mixedStatus()
	full, _ := json.Marshal(st)
	byID := []string{"j.web.0", "j.web.1", "j.web.2", "j.web.3", "j.web.4", "j.web.5", "j.web.6", "j.web.7", "j.web.8", "j.web.9"}
	if ids := allocIDs(st.Allocs); !slices.Equal(ids, byID) {
		t.Fatalf("BuildStatus lists %v, want id order", ids)
	}
	for _, c := range []struct {
		limit   int
		want    []string
		omitted int
	}{
		{6, []string{"j.web.2", "j.web.9", "j.web.5", "j.web.6", "j.web.4", "j.web.3"}, 4},
		{7, []string{"j.web.2", "j.web.9", "j.web.5", "j.web.6", "j.web.4", "j.web.3", "j.web.7"}, 3},
		{9, []string{"j.web.2", "j.web.9", "j.web.5", "j.web.6", "j.web.4", "j.web.3", "j.web.7", "j.web.0", "j.web.1"}, 1},
		{1, []string{"j.web.2"}, 9},
	} {
		pub := PublishedStatus(st, c.limit)
		if ids := allocIDs(pub.Allocs); !slices.Equal(ids, c.want) || pub.AllocsOmitted != c.omitted {
			t.Errorf("limit %d: lists %v and omits %d, want %v and %d", c.limit, ids, pub.AllocsOmitted, c.want, c.omitted)
		}
		if pub.Counts != st.Counts || pub.State != st.State {
			t.Errorf("limit %d: counts %+v and state %s, want %+v and %s", c.limit, pub.Counts, pub.State, st.Counts, st.State)
		}
		raw, _ := protocol.Encode(pub)
		if _, err := protocol.DecodeJobStatus(raw); err != nil || !strings.Contains(string(raw), fmt.Sprintf(`"allocations_omitted":%d`, c.omitted)) {
			t.Errorf("limit %d: %v\n%s", c.limit, err, raw)
		}
	}
	if after, _ := json.Marshal(st); string(after) != string(full) {
		t.Errorf("PublishedStatus changed the status it was given:\n%s\nwas\n%s", after, full)
	}
	for _, limit := range []int{10, protocol.MaxStatusAllocs} {
		raw, _ := json.Marshal(PublishedStatus(st, limit))
		if string(raw) != string(full) {
			t.Errorf("limit %d: published\n%s\nwant it as built\n%s", limit, raw, full)
		}
	}
}

// A status listing MaxStatusAllocs allocations with long ids and messages
// stays well below the 1 MiB packet limit of the embedded broker and of
// Mosquitto.
func TestPublishedStatusFitsAPacket(t *testing.T) {
	t.Parallel()
	st := protocol.JobStatus{Job: "sensor-gateway-collector", State: protocol.JobDegraded, Version: 12, Type: protocol.JobService,
		Groups: []protocol.GroupStatus{{Name: "collector", Desired: 180000, Placed: 180000}}}
	for i := range 180000 {
		a := protocol.AllocSummary{ID: fmt.Sprintf("sensor-gateway-collector.collector.%d-%012x", i, i*7919), Group: "collector",
			Device: fmt.Sprintf("edge-gw-berlin-kreuzberg-%06d", i), Version: 12, State: protocol.AllocRunning, Health: protocol.Healthy}
		if i%100 == 0 {
			a.State, a.Health = protocol.AllocFailed, ""
			a.Message = "collector: exited with code 1; rescheduling after 2026-01-02T03:04:05Z"
		}
		st.Allocs = append(st.Allocs, a)
	}
	pub := PublishedStatus(st, protocol.MaxStatusAllocs)
	pub.UpdatedAt = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	raw, err := protocol.Encode(pub)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a status of %d allocations listing %d: %d bytes", len(st.Allocs), len(pub.Allocs), len(raw))
	if len(pub.Allocs) != protocol.MaxStatusAllocs || pub.AllocsOmitted != len(st.Allocs)-protocol.MaxStatusAllocs {
		t.Errorf("lists %d and omits %d", len(pub.Allocs), pub.AllocsOmitted)
	}
	if len(raw) > 512<<10 {
		t.Errorf("the status is %d bytes: more than half of the 1 MiB packet limit", len(raw))
	}
}

// statusBus is a Bus that keeps the job statuses published.
type statusBus struct {
	topics protocol.Topics

	mu   sync.Mutex
	sent []protocol.JobStatus
}

func (b *statusBus) Subscribe(context.Context, string, byte, bus.Handler) error { return nil }
func (b *statusBus) Barrier(context.Context, string) error                      { return nil }

func (b *statusBus) Publish(_ context.Context, topic string, payload []byte, retain bool, qos byte) error {
	if kind, _, err := b.topics.Parse(topic); err != nil || kind != protocol.KindJobStatus || !retain || qos != 1 {
		return fmt.Errorf("unexpected publish on %s (retain %v, qos %d)", topic, retain, qos)
	}
	st, err := protocol.DecodeJobStatus(payload)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sent = append(b.sent, st)
	return nil
}

func (b *statusBus) take() []protocol.JobStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	sent := b.sent
	b.sent = nil
	return sent
}

// Only the published status is cut short: the planner goes on judging the
// job by every allocation (an allocation left out still keeps its version
// from being marked stable), and a change among those left out that
// leaves the published status as it was publishes nothing.
func TestPublishStatusCutsOnlyWhatIsPublished(t *testing.T) {
	t.Parallel()
	st, err := store.Open(filepath.Join(t.TempDir(), "planner.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var job protocol.Job
	for _, cmd := range []string{"/bin/true", "/bin/false"} {
		job, err = protocol.ParseJob([]byte(`{"id":"j","groups":[{"name":"web","count":5,"tasks":[{"name":"t","driver":"exec","config":{"command":["` + cmd + `"]},"resources":{"cpu":100,"memory":64}}]}]}`))
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.SubmitJob(job, cmd, now); err != nil {
			t.Fatal(err)
		}
	}
	b := &statusBus{}
	p := New(Config{Bus: b, Store: st, Log: testLog(t), StatusAllocs: 3})

	// Every allocation runs, the last (by id) still at version 1.
	pass := func(lastVersion uint64) ([]protocol.JobStatus, store.JobHead) {
		t.Helper()
		snap := core.Snapshot{Jobs: []core.Job{{Job: job, Version: 2}}}
		plan := core.Plan{Groups: map[string][]protocol.GroupStatus{"j": {{Name: "web", Desired: 5, Placed: 5}}}}
		for i := range 5 {
			a := core.Alloc{ID: fmt.Sprintf("j.web.%d", i), Job: "j", JobVersion: 2, Group: "web", Index: i, Device: fmt.Sprintf("d%d", i)}
			if i == 4 {
				a.JobVersion = lastVersion
			}
			plan.Allocations = append(plan.Allocations, a)
			snap.Devices = append(snap.Devices, core.Device{ID: a.Device, Presence: protocol.Online,
				Reported: map[string]protocol.AllocStatus{a.ID: {ID: a.ID, Job: "j", JobVersion: a.JobVersion, Group: "web", State: protocol.AllocRunning}}})
		}
		heads, err := st.Jobs()
		if err != nil {
			t.Fatal(err)
		}
		all, err := p.publishStatus(context.Background(), snap, heads, plan, now)
		if err != nil {
			t.Fatal(err)
		}
		if heads, err = st.Jobs(); err != nil || len(heads) != 1 {
			t.Fatalf("jobs %v, %v", heads, err)
		}
		return all, heads[0]
	}

	all, head := pass(1)
	if len(all) != 1 || len(all[0].Allocs) != 5 {
		t.Fatalf("publishStatus returned %+v, want one status with all 5 allocations", all)
	}
	sent := b.take()
	if len(sent) != 1 {
		t.Fatalf("published %d statuses, want 1", len(sent))
	}
	if pub := sent[0]; !slices.Equal(allocIDs(pub.Allocs), []string{"j.web.0", "j.web.1", "j.web.2"}) || pub.AllocsOmitted != 2 ||
		pub.Counts.Running != 5 || pub.State != protocol.JobRunning {
		t.Errorf("published %+v, want j.web.0 to 2 listed, 2 omitted, 5 running", pub)
	}
	if head.Stable != 0 {
		t.Errorf("version %d marked stable while j.web.4 runs version 1", head.Stable)
	}

	// j.web.4, left out, moves to version 2: the published status stays
	// the same, and now the version is stable.
	_, head = pass(2)
	if sent := b.take(); len(sent) != 0 {
		t.Errorf("republished %+v: nothing published changed", sent)
	}
	if head.Stable != 2 {
		t.Errorf("stable version %d, want 2: every allocation runs it", head.Stable)
	}
}
