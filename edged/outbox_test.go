package edged

import (
	"context"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/fake"
	"github.com/tether-edge/tether/protocol"
)

// TestOutboxSurvivesRestartAndDeliversInOrder: events and reports produced
// while no broker is reachable are kept in edged.db across an edged restart
// (a power cut), and delivered in order, without gaps, once the broker is
// there.
func TestOutboxSurvivesRestartAndDeliversInOrder(t *testing.T) {
	log := zerolog.New(zerolog.NewTestWriter(t))
	addr := laterPort(t)

	dir := t.TempDir()
	// A task that keeps crashing: every crash makes events.
	task := protocol.Task{Name: "flaky", Driver: "podman", Config: protocol.TaskConfig{Image: "img", Command: []string{"sh", "-c", "sleep 0.05; exit 1"}},
		Restart: &protocol.RestartPolicy{Attempts: 1000, Delay: protocol.Duration(10 * time.Millisecond), Interval: protocol.Duration(time.Hour), Mode: protocol.RestartFail}}
	seedDesired(t, dir, protocol.Desired{Device: "d1", Generation: 1, Allocations: []protocol.Allocation{{ID: "j.g.0-abcdef", Job: "j", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{task}}}})

	rt := fake.New(fake.Options{})
	cfg := Config{DeviceID: "d1", Brokers: []string{"mqtt://" + addr}, DataDir: dir, Drivers: []driver.Driver{rt}, Resync: 50 * time.Millisecond, PlannerKeys: testPlannerKeys(), Log: log}
	ra := startAgent(t, cfg)
	queued := func() int {
		e, _ := ra.a.state.pending(1 << 20)
		return len(e)
	}
	eventually(t, "events to queue up offline", func() bool { return queued() >= 20 })
	ra.stop() // power cut: nothing was sent

	// The broker appears; an observer listens; edged starts again (the task
	// keeps crashing, so events keep coming).
	startBroker(t, addr, log)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	obs, err := bus.Dial(ctx, bus.Config{Brokers: []string{"mqtt://" + addr}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	var mu sync.Mutex
	var events []protocol.Event
	var reports []protocol.Reported
	var topics protocol.Topics
	obs.Subscribe(ctx, topics.Events("d1"), 1, func(m bus.Message) {
		if e, err := protocol.DecodeEvent(m.Payload); err == nil {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}
	})
	obs.Subscribe(ctx, topics.Reported("d1"), 1, func(m bus.Message) {
		if r, err := protocol.DecodeReported(m.Payload); err == nil {
			mu.Lock()
			reports = append(reports, r)
			mu.Unlock()
		}
	})

	ra = startAgent(t, cfg)
	eventually(t, "the outbox to drain", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(events) >= 20 && len(reports) > 0
	})
	ra.stop()
	mu.Lock()
	defer mu.Unlock()
	// Every event arrives, in one epoch, with sequence numbers from 1 and
	// no gap; delivery is at least once, so a re-sent duplicate may come
	// too, which receivers drop by sequence.
	seen := map[uint64]bool{}
	for i, e := range events {
		if e.Epoch == "" || e.Epoch != events[0].Epoch {
			t.Fatalf("event %d has epoch %q, want %q", i, e.Epoch, events[0].Epoch)
		}
		seen[e.Seq] = true
	}
	seqs := make([]uint64, 0, len(seen))
	for s := range seen {
		seqs = append(seqs, s)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	for i, s := range seqs {
		if s != uint64(i+1) {
			t.Fatalf("gap at %d: seqs %v", i, seqs)
		}
	}
	for i := 1; i < len(reports); i++ {
		if reports[i].Seq <= reports[i-1].Seq {
			t.Fatalf("reports out of order: %d after %d", reports[i].Seq, reports[i-1].Seq)
		}
	}
}

// TestOutboxBoundsEventsNeverReports: beyond the bound the oldest events go,
// a report is never dropped, and a newer report replaces an unsent one.
func TestOutboxBoundsEventsNeverReports(t *testing.T) {
	st, err := openState(filepath.Join(t.TempDir(), "edged.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.close()
	item := func(kind outKind, tag string) outItem {
		return outItem{Kind: kind, Topic: tag, Build: func(seq uint64) ([]byte, error) { return []byte(tag), nil }}
	}
	if _, err := st.enqueue([]outItem{item(outReport, "r1")}, 3); err != nil {
		t.Fatal(err)
	}
	var items []outItem
	for _, tag := range []string{"e1", "e2", "e3", "e4", "e5"} {
		items = append(items, item(outEvent, tag))
	}
	dropped, err := st.enqueue(append(items, item(outReport, "r2")), 3)
	if err != nil {
		t.Fatal(err)
	}
	if dropped != 2 {
		t.Errorf("dropped %d, want 2", dropped)
	}
	got, _ := st.pending(100)
	var tags []string
	for _, e := range got {
		tags = append(tags, string(e.Payload))
	}
	want := []string{"r2", "e3", "e4", "e5"} // the report goes first
	if len(tags) != len(want) {
		t.Fatalf("outbox %v, want %v", tags, want)
	}
	for i := range want {
		if tags[i] != want[i] {
			t.Fatalf("outbox %v, want %v", tags, want)
		}
	}
}

// TestStopAfterDisconnect: an allocation with disconnect.stop_after stops
// once edged has been without the server that long, and starts again when
// the server is back; an allocation without it keeps running throughout.
func TestStopAfterDisconnect(t *testing.T) {
	log := zerolog.New(zerolog.NewTestWriter(t))
	addr := laterPort(t)
	dir := t.TempDir()
	task := protocol.Task{Name: "app", Driver: "podman", Config: protocol.TaskConfig{Image: "img", Command: []string{"sleep", "infinity"}}}
	seedDesired(t, dir, protocol.Desired{Device: "d1", Generation: 1, Allocations: []protocol.Allocation{
		{ID: "polite.g.0-abcdef", Job: "polite", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{task}, StopAfterDisconnect: protocol.Duration(500 * time.Millisecond)},
		{ID: "stubborn.g.0-abcdef", Job: "stubborn", JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{task}},
	}})
	rt := fake.New(fake.Options{})
	runningJobs := func() map[string]bool {
		out := map[string]bool{}
		for _, i := range runningOf(t, rt, "d1") {
			out[i.Labels[driver.LabelJob]] = true
		}
		return out
	}
	ra := startAgent(t, Config{DeviceID: "d1", Brokers: []string{"mqtt://" + addr}, DataDir: dir, Drivers: []driver.Driver{rt}, Resync: 50 * time.Millisecond, KeepAlive: time.Second, PlannerKeys: testPlannerKeys(), Log: log})
	eventually(t, "the polite workload to stop after stop_after", func() bool {
		r := runningJobs()
		return !r["polite"] && r["stubborn"]
	})
	startBroker(t, addr, log)
	eventually(t, "the polite workload to start again with the server back", func() bool {
		r := runningJobs()
		return r["polite"] && r["stubborn"]
	})
	ra.stop()
}

// TestOutboxEmptiesOnEcho: with the broker there, what edged queues comes
// back to it on its own subscription and leaves the outbox; an echo from
// another epoch (an earlier database) acknowledges nothing.
func TestOutboxEmptiesOnEcho(t *testing.T) {
	log := zerolog.New(zerolog.NewTestWriter(t))
	b := startBroker(t, "127.0.0.1:0", log)
	dir := t.TempDir()
	rt := fake.New(fake.Options{})
	ra := startAgent(t, Config{DeviceID: "e1", Brokers: []string{"mqtt://" + b.MQTTAddr()}, DataDir: dir, Drivers: []driver.Driver{rt}, Resync: 50 * time.Millisecond, PlannerKeys: testPlannerKeys(), Log: log})
	eventually(t, "the first report to be queued", func() bool {
		ra.a.mu.Lock()
		defer ra.a.mu.Unlock()
		return ra.a.lastRep != nil
	})
	eventually(t, "the outbox to empty", func() bool {
		e, _ := ra.a.state.pending(10)
		return len(e) == 0
	})
	// An entry acknowledged by an echo of another epoch stays.
	ra.a.state.enqueue([]outItem{{Kind: outEvent, Topic: "x/y", Build: func(uint64) ([]byte, error) { return []byte("{}"), nil }}}, 10)
	e, _ := ra.a.state.pending(10)
	if len(e) != 1 {
		t.Fatalf("pending %v", e)
	}
	ra.a.onEcho(outEvent, bus.Message{Payload: []byte(`{"epoch":"other","seq":` + strconv.FormatUint(e[0].MsgSeq, 10) + `}`)})
	if e2, _ := ra.a.state.pending(10); len(e2) != 1 {
		t.Fatal("an echo from another epoch acknowledged an entry")
	}
	ra.stop()
}

// laterPort returns a loopback address for a broker that starts later in
// the test (free when asked; nothing else in these tests binds ports by
// number).
func laterPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startBroker starts a real broker on addr, closed when the test ends.
func startBroker(t *testing.T, addr string, log zerolog.Logger) *broker.Broker {
	t.Helper()
	b, err := broker.New(broker.Config{MQTTAddr: addr, AllowAnonymousLoopback: true, Log: log.Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}
