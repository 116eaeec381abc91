package planner

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// indexRecord is a device record as the planner keeps it for a device that
// published its facts and presence.
func indexRecord(id string, status protocol.PresenceStatus, at time.Time) store.DeviceRecord {
	return store.DeviceRecord{ID: id,
		Facts:    &protocol.Facts{Device: id, Arch: "arm64", OS: "linux", CPUCores: 4, CPUMHz: 6000, MemoryMB: 3900, Drivers: []string{"exec"}, Labels: map[string]string{"site": "berlin"}},
		Presence: &protocol.Presence{Device: id, Status: status, Since: &at}, PresenceChangedAt: at}
}

func indexRecords(at time.Time, ids ...string) []store.DeviceRecord {
	var out []store.DeviceRecord
	for _, id := range ids {
		out = append(out, indexRecord(id, protocol.Online, at))
	}
	return out
}

func TestBuildDeviceIndex(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	changed := at.Add(time.Minute)
	no := false
	reported := indexRecord("b", protocol.Online, at)
	reported.Reported = &protocol.Reported{Device: "b", Allocations: []protocol.AllocStatus{
		{ID: "x.g.0", State: protocol.AllocRunning}, {ID: "y.g.0", State: protocol.AllocPending}, {ID: "z.g.0", State: protocol.AllocRunning}}}
	reported.ReportedAt = changed
	records := []store.DeviceRecord{
		indexRecord("c", protocol.Online, at),
		reported,
		// A last will carries no time: the planner's is used.
		{ID: "a", Presence: &protocol.Presence{Device: "a", Status: protocol.Offline}, PresenceChangedAt: changed},
		// Only an operator's setting: listed, as the per-device topics
		// show it.
		{ID: "d", Scheduling: &protocol.Scheduling{Device: "d", Eligible: &no, Drain: true}},
		// Nothing left to show.
		{ID: "e"},
	}
	pages := BuildDeviceIndex(records, 3)
	if len(pages) != 2 || pages[0].Pages != 2 || pages[1].Pages != 2 || pages[1].Page != 1 {
		t.Fatalf("pages %+v", pages)
	}
	var ids []string
	for _, pg := range pages {
		for _, d := range pg.Devices {
			ids = append(ids, d.ID)
		}
	}
	if !slices.Equal(ids, []string{"a", "b", "c", "d"}) {
		t.Errorf("devices %v, want a b c d in order, e left out", ids)
	}
	a, b, d := pages[0].Devices[0], pages[0].Devices[1], pages[1].Devices[0]
	if a.Presence == nil || a.Presence.Status != protocol.Offline || a.Presence.Since == nil || !a.Presence.Since.Equal(changed) || a.Facts != nil {
		t.Errorf("a: %+v", a)
	}
	if b.AllocationsTotal != 3 || b.AllocationsRunning != 2 || b.ReportedAt == nil || !b.ReportedAt.Equal(changed) ||
		b.Facts == nil || b.Facts.CPUMHz != 6000 || b.Facts.Labels["site"] != "berlin" || !b.Presence.Since.Equal(at) {
		t.Errorf("b: %+v", b)
	}
	if d.Scheduling == nil || !d.Scheduling.Drain || d.Scheduling.IsEligible() || d.Presence != nil || d.ReportedAt != nil {
		t.Errorf("d: %+v", d)
	}
	for _, pg := range pages {
		raw, _ := protocol.Encode(pg)
		if _, err := protocol.DecodeDeviceIndexPage(raw); err != nil {
			t.Errorf("page %d does not decode: %v", pg.Page, err)
		}
	}

	empty := BuildDeviceIndex(nil, 3)
	if len(empty) != 1 || empty[0].Pages != 1 || len(empty[0].Devices) != 0 {
		t.Errorf("an empty fleet: %+v, want one empty page", empty)
	}
	if raw, _ := protocol.Encode(empty[0]); !strings.Contains(string(raw), `"devices":[]`) {
		t.Errorf("an empty page encodes as %s", raw)
	}
}

// indexBus records the device index pages published to it, and fails
// publishes to the topics in fail.
type indexBus struct {
	topics protocol.Topics
	mu     sync.Mutex
	fail   map[string]bool
	sent   map[string][]byte // by topic, the last payload
	order  []string          // every topic published to since take
}

func (b *indexBus) Subscribe(context.Context, string, byte, bus.Handler) error { return nil }
func (b *indexBus) Barrier(context.Context, string) error                      { return nil }

func (b *indexBus) Publish(_ context.Context, topic string, payload []byte, retain bool, qos byte) error {
	if kind, _, err := b.topics.Parse(topic); err != nil || kind != protocol.KindDeviceIndex || !retain || qos != 1 {
		return fmt.Errorf("unexpected publish on %s (retain %v, qos %d)", topic, retain, qos)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail[topic] {
		return errors.New("no PUBACK")
	}
	if b.sent == nil {
		b.sent = map[string][]byte{}
	}
	b.sent[topic] = payload
	b.order = append(b.order, topic)
	return nil
}

// take returns the pages published since the last take, by page number
// (nil: deleted), in the order they were published.
func (b *indexBus) take(t *testing.T) (map[int]*protocol.DeviceIndexPage, []int) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	got := map[int]*protocol.DeviceIndexPage{}
	var order []int
	for _, topic := range b.order {
		_, id, _ := b.topics.Parse(topic)
		n, _ := protocol.ParsePage(id)
		order = append(order, n)
		if len(b.sent[topic]) == 0 {
			got[n] = nil
			continue
		}
		pg, err := protocol.DecodeDeviceIndexPage(b.sent[topic])
		if err != nil {
			t.Fatalf("%s: %v", topic, err)
		}
		got[n] = &pg
	}
	b.order, b.sent = nil, nil
	return got, order
}

func pageIDs(pg *protocol.DeviceIndexPage) string {
	var ids []string
	for _, d := range pg.Devices {
		ids = append(ids, d.ID)
	}
	return fmt.Sprintf("%d/%d [%s]", pg.Page, pg.Pages, strings.Join(ids, " "))
}

func describePages(got map[int]*protocol.DeviceIndexPage) string {
	var ns []int
	for n := range got {
		ns = append(ns, n)
	}
	sort.Ints(ns)
	var out []string
	for _, n := range ns {
		if got[n] == nil {
			out = append(out, fmt.Sprintf("%d deleted", n))
			continue
		}
		out = append(out, pageIDs(got[n]))
	}
	return strings.Join(out, ", ")
}

// Each pass publishes exactly the pages whose devices changed, deletes the
// pages a shrinking fleet no longer fills, and retries what failed.
func TestPublishDeviceIndex(t *testing.T) {
	t.Parallel()
	st, err := store.Open(filepath.Join(t.TempDir(), "planner.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	b := &indexBus{}
	p := New(Config{Bus: b, Store: st, Log: testLog(t), IndexPageSize: 2})
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now := at
	pass := func(records []store.DeviceRecord, want string) {
		t.Helper()
		now = now.Add(time.Minute)
		if err := p.publishDeviceIndex(context.Background(), records, now); err != nil {
			t.Fatal(err)
		}
		got, order := b.take(t)
		if s := describePages(got); s != want {
			t.Errorf("published %s\nwant      %s", s, want)
		}
		if !sort.IntsAreSorted(order) {
			t.Errorf("pages published in order %v", order)
		}
		for _, pg := range got {
			if pg != nil && !pg.UpdatedAt.Equal(now) {
				t.Errorf("page %d: updated_at %v, want %v", pg.Page, pg.UpdatedAt, now)
			}
		}
	}

	fleet := indexRecords(at, "a", "b", "c", "d", "e")
	pass(fleet, "0/3 [a b], 1/3 [c d], 2/3 [e]")
	pass(fleet, "") // nothing changed: nothing published, whatever the time

	// One device changes: only its page.
	fleet[3] = indexRecord("d", protocol.Offline, at.Add(time.Hour))
	pass(fleet, "1/3 [c d]")
	// A device that sorts last fills the last page: only that page.
	fleet = append(fleet, indexRecord("f", protocol.Online, at))
	pass(fleet, "2/3 [e f]")
	// One removed from the middle shifts the pages after it, not before.
	fleet = slices.Delete(fleet, 2, 3) // c
	pass(fleet, "1/3 [d e], 2/3 [f]")
	// The fleet shrinks to two pages: every page says so, the third goes.
	fleet = fleet[:4] // a b d e
	pass(fleet, "0/2 [a b], 1/2 [d e], 2 deleted")
	pass(fleet, "")

	// A page the broker did not take, and a page it did not delete, are
	// tried again on the next pass, and only they.
	b.fail = map[string]bool{p.cfg.Topics.DeviceIndex(0): true, p.cfg.Topics.DeviceIndex(1): true}
	fleet[0] = indexRecord("a", protocol.Offline, at.Add(2*time.Hour))
	err = p.publishDeviceIndex(context.Background(), fleet[:2], now.Add(time.Minute)) // a b
	if err == nil || !strings.Contains(err.Error(), "publish device index page 0: no PUBACK") || !strings.Contains(err.Error(), "delete device index page 1: no PUBACK") {
		t.Errorf("error %v, want one naming page 0 and page 1", err)
	}
	b.take(t)
	b.fail = nil
	pass(fleet[:2], "0/1 [a b], 1 deleted")
	pass(fleet[:2], "")

	// The hashes live in the store: a new planner on it publishes nothing
	// unchanged.
	p = New(Config{Bus: b, Store: st, Log: testLog(t), IndexPageSize: 2})
	pass(fleet[:2], "")
	// An empty fleet still has an index: one empty page.
	pass(nil, "0/1 []")
}

// A full page of devices with realistic labels is far below the 1 MiB
// packet limit of the embedded broker.
func TestDeviceIndexPageFitsAPacket(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	no := false
	records := make([]store.DeviceRecord, DeviceIndexPageSize)
	for i := range records {
		id := fmt.Sprintf("edge-gw-berlin-kreuzberg-%06d", i)
		r := indexRecord(id, protocol.Online, at)
		r.Facts.Drivers = []string{"exec", "podman"}
		r.Facts.Labels = map[string]string{
			"site": "berlin-kreuzberg-03", "region": "eu-central", "zone": "eu-central-1a", "rack": "r12-u07",
			"role": "sensor-gateway", "customer": "acme-industrial-automation", "hardware": "raspberry-pi-4b-8gb",
			"channel": "stable", "owner": "team-field-ops", "tier": "production", "network": "lte-backup", "building": "hall-b",
		}
		r.Scheduling = &protocol.Scheduling{Device: id, Eligible: &no}
		r.Reported = &protocol.Reported{Device: id, Allocations: make([]protocol.AllocStatus, 12)}
		r.ReportedAt = at
		records[i] = r
	}
	pages := BuildDeviceIndex(records, 0)
	if len(pages) != 1 || len(pages[0].Devices) != DeviceIndexPageSize {
		t.Fatalf("%d devices made %d pages", len(records), len(pages))
	}
	pages[0].UpdatedAt = at
	raw, err := protocol.Encode(pages[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a full page of %d devices: %d bytes, %d per device", DeviceIndexPageSize, len(raw), len(raw)/DeviceIndexPageSize)
	if len(raw) > 512<<10 {
		t.Errorf("a full page is %d bytes: more than half of the 1 MiB packet limit", len(raw))
	}
}

// The planner publishes the index from a real broker's retained messages,
// in pages a new subscriber reads back retained.
func TestPlannerPublishesDeviceIndex(t *testing.T) {
	f := newFixture(t)
	f.indexPageSize = 2
	for _, id := range []string{"d1", "d2", "d3", "d4", "d5"} {
		f.device(id, 1000, 512, map[string]string{"site": "berlin"})
	}
	f.startPlanner()
	wait(f, f.topics.FleetSummary(), protocol.DecodeFleetSummary, "five devices online", func(s protocol.FleetSummary) bool {
		return s.Devices.Online == 5
	})
	reader := f.dial()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	pages := map[string]protocol.DeviceIndexPage{}
	if err := reader.Subscribe(ctx, f.topics.DeviceIndexFilter(), 1, func(m bus.Message) {
		pg, err := protocol.DecodeDeviceIndexPage(m.Payload)
		if err != nil || !m.Retained {
			t.Errorf("%s (retained %v): %v", m.Topic, m.Retained, err)
			return
		}
		mu.Lock()
		pages[m.Topic] = pg
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := reader.Barrier(ctx, f.topics.Base()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	var ids []string
	for i := 0; i < 3; i++ {
		pg, ok := pages[f.topics.DeviceIndex(i)]
		if !ok || pg.Pages != 3 || pg.Page != i {
			t.Fatalf("page %d: %+v (have %d pages)", i, pg, len(pages))
		}
		for _, d := range pg.Devices {
			if d.Presence == nil || d.Presence.Status != protocol.Online || d.Facts == nil || d.Facts.Labels["site"] != "berlin" {
				t.Errorf("%s: %+v", d.ID, d)
			}
			ids = append(ids, d.ID)
		}
	}
	if len(pages) != 3 || !slices.Equal(ids, []string{"d1", "d2", "d3", "d4", "d5"}) {
		t.Errorf("%d pages with %v", len(pages), ids)
	}
}
