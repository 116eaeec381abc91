package planner

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/planner/core"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// fleet is a store holding online devices that all fit a system job, and
// the plans that run the job on all of them and stop it.
type fleet struct {
	store             *store.Store
	ids               []string
	running, stopped  core.Snapshot
	runPlan, stopPlan core.Plan
}

func newFleet(tb testing.TB, devices int) fleet {
	tb.Helper()
	st, err := store.Open(filepath.Join(tb.TempDir(), "planner.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	now := time.Now()
	f := fleet{store: st}
	changes := map[string][]func(*store.DeviceRecord){}
	for i := 0; i < devices; i++ {
		id := fmt.Sprintf("dev-%05d", i)
		f.ids = append(f.ids, id)
		changes[id] = append(changes[id], func(d *store.DeviceRecord) {
			d.Facts = &protocol.Facts{Device: id, Arch: "arm64", OS: "linux", CPUCores: 4, CPUMHz: 1500, MemoryMB: 2048, Drivers: []string{"exec", "podman"}}
			d.Presence = &protocol.Presence{Device: id, Status: protocol.Online, Since: &now}
			d.PresenceChangedAt = now
		})
	}
	if err := st.UpdateDevices(changes); err != nil {
		tb.Fatal(err)
	}
	job, err := protocol.ParseJob([]byte(`{"id":"agent","type":"system","groups":[{"name":"a","tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]},"resources":{"cpu":100,"memory":64}}]}]}`))
	if err != nil {
		tb.Fatal(err)
	}
	snap, _, _, err := New(Config{Store: st}).snapshot()
	if err != nil {
		tb.Fatal(err)
	}
	f.running, f.stopped = snap, snap
	f.running.Jobs = []core.Job{{Job: job, Version: 1}}
	f.stopped.Jobs = []core.Job{{Job: job, Version: 1, Stopped: true}}
	f.runPlan = core.Compute(f.running, now)
	if len(f.runPlan.Allocations) != devices {
		tb.Fatalf("the system job placed %d allocations on %d devices", len(f.runPlan.Allocations), devices)
	}
	return f
}

// pass runs publishDesired on the fleet's records as stored, with the job
// running or stopped.
func (f fleet) pass(p *Planner, running bool, now time.Time) error {
	records, err := f.store.Devices()
	if err != nil {
		return err
	}
	if running {
		return p.publishDesired(context.Background(), f.running, records, f.runPlan, now)
	}
	return p.publishDesired(context.Background(), f.stopped, records, f.stopPlan, now)
}

// recordingBus is a Bus that records what is published, fails publishes
// to the devices in fail, and runs check (when set) on each publish before
// it succeeds.
type recordingBus struct {
	topics protocol.Topics
	check  func(id string, d protocol.Desired) error

	mu   sync.Mutex
	fail map[string]bool
	sent map[string][]protocol.Desired // by device
}

func (b *recordingBus) Subscribe(context.Context, string, byte, bus.Handler) error { return nil }
func (b *recordingBus) Barrier(context.Context, string) error                      { return nil }

func (b *recordingBus) Publish(_ context.Context, topic string, payload []byte, retain bool, qos byte) error {
	kind, id, err := b.topics.Parse(topic)
	if err != nil || kind != protocol.KindDesired || !retain || qos != 1 {
		return fmt.Errorf("unexpected publish on %s (kind %q, retain %v, qos %d, %v)", topic, kind, retain, qos, err)
	}
	d, err := protocol.DecodeDesired(payload)
	if err != nil {
		return err
	}
	if b.check != nil {
		if err := b.check(id, d); err != nil {
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.fail[id] {
		return errors.New("no PUBACK")
	}
	if b.sent == nil {
		b.sent = map[string][]protocol.Desired{}
	}
	b.sent[id] = append(b.sent[id], d)
	return nil
}

func (b *recordingBus) take() map[string][]protocol.Desired {
	b.mu.Lock()
	defer b.mu.Unlock()
	sent := b.sent
	b.sent = nil
	return sent
}

func testLog(t *testing.T) zerolog.Logger { return zerolog.New(zerolog.NewTestWriter(t)) }

// Every document reaches the bus only after its generation is in the
// store, unacknowledged; the acknowledged ones are marked afterwards.
func TestPublishDesiredPersistsGenerationsBeforePublishing(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3*publishers)
	b := &recordingBus{}
	b.check = func(id string, d protocol.Desired) error {
		r, err := f.store.Device(id)
		if err != nil {
			t.Error(err)
		} else if r.Desired == nil || r.Desired.Generation != d.Generation || r.Published || len(r.Desired.Allocations) != len(d.Allocations) {
			t.Errorf("published generation %d of %s while the store holds %+v (published %v)", d.Generation, id, r.Desired, r.Published)
		}
		return nil
	}
	p := New(Config{Bus: b, Store: f.store, Log: testLog(t)})
	for gen, running := range []bool{true, false, true} {
		if err := f.pass(p, running, time.Now()); err != nil {
			t.Fatal(err)
		}
		sent := b.take()
		if len(sent) != len(f.ids) {
			t.Fatalf("pass %d published to %d devices, want %d", gen+1, len(sent), len(f.ids))
		}
		for _, id := range f.ids {
			r, err := f.store.Device(id)
			if err != nil {
				t.Fatal(err)
			}
			if d := sent[id]; len(d) != 1 || d[0].Generation != uint64(gen+1) || !r.Published || r.Generation() != uint64(gen+1) {
				t.Fatalf("pass %d, %s: published %+v, stored generation %d published %v", gen+1, id, d, r.Generation(), r.Published)
			}
		}
	}
}

// A device whose document could not be signed or published stays
// unpublished, and the next pass re-sends exactly its document, unchanged;
// the devices that got theirs are neither written nor published again.
func TestPublishDesiredRetriesOnlyWhatFailed(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 2*publishers+5)
	key := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	unsignable := f.ids[7]
	var signFails atomic.Bool
	signFails.Store(true)
	b := &recordingBus{fail: map[string]bool{f.ids[0]: true, f.ids[publishers]: true, f.ids[len(f.ids)-1]: true}}
	failing := map[string]bool{unsignable: true}
	for id := range b.fail {
		failing[id] = true
	}
	p := New(Config{Bus: b, Store: f.store, Log: testLog(t), Sign: func(d protocol.Desired) (protocol.Desired, error) {
		if d.Device == unsignable && signFails.Load() {
			return d, errors.New("no key")
		}
		return protocol.SignDesired(d, key, nil)
	}})

	first := time.Now()
	err := f.pass(p, true, first)
	if err == nil {
		t.Fatal("no error for the failed devices")
	}
	if joined, ok := err.(interface{ Unwrap() []error }); !ok || len(joined.Unwrap()) != len(failing) {
		t.Errorf("want one error per failed device (%d): %v", len(failing), err)
	}
	if !strings.Contains(err.Error(), "sign desired for "+unsignable+": no key") {
		t.Errorf("error %v does not name the signing failure", err)
	}
	sent := b.take()
	for _, id := range f.ids {
		r, err := f.store.Device(id)
		if err != nil {
			t.Fatal(err)
		}
		if r.Generation() != 1 || r.Published == failing[id] || (len(sent[id]) == 1) == failing[id] {
			t.Errorf("%s (failing %v): stored generation %d, published %v; sent %d", id, failing[id], r.Generation(), r.Published, len(sent[id]))
		}
		if !failing[id] && len(sent[id]) == 1 && sent[id][0].Signature == nil {
			t.Errorf("%s: sent unsigned", id)
		}
	}
	for id := range failing {
		if !strings.Contains(err.Error(), " "+id+":") {
			t.Errorf("error %v does not name %s", err, id)
		}
	}

	b.mu.Lock()
	b.fail = nil
	b.mu.Unlock()
	signFails.Store(false)
	if err := f.pass(p, true, first.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	sent = b.take()
	if len(sent) != len(failing) {
		t.Errorf("the retry published to %d devices, want only the %d that failed", len(sent), len(failing))
	}
	for id := range failing {
		r, err := f.store.Device(id)
		if err != nil {
			t.Fatal(err)
		}
		if d := sent[id]; len(d) != 1 || d[0].Generation != 1 || !d[0].IssuedAt.Equal(first.UTC()) || d[0].Signature == nil || !r.Published {
			t.Errorf("%s: retry sent %+v (want generation 1 issued at %v, signed), published %v", id, d, first.UTC(), r.Published)
		}
	}

	if err := f.pass(p, true, first.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if sent := b.take(); len(sent) != 0 {
		t.Errorf("a pass with nothing changed published to %d devices", len(sent))
	}
}

// Documents go out up to publishers at once, never more.
func TestPublishDesiredPublishesConcurrently(t *testing.T) {
	t.Parallel()
	f := newFleet(t, 3*publishers)
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	inFlight, most := 0, 0
	open, gaveUp := false, false
	// Publishes wait until a full pool is in flight, then a moment more
	// in which a pool without a bound would send more. Done one at a time
	// they would wait forever, so they give up after a while.
	giveUp := time.AfterFunc(10*time.Second, func() {
		mu.Lock()
		gaveUp = true
		mu.Unlock()
		cond.Broadcast()
	})
	defer giveUp.Stop()
	b := &recordingBus{check: func(string, protocol.Desired) error {
		mu.Lock()
		defer mu.Unlock()
		inFlight++
		most = max(most, inFlight)
		if inFlight == publishers && !open {
			time.AfterFunc(50*time.Millisecond, func() {
				mu.Lock()
				open = true
				mu.Unlock()
				cond.Broadcast()
			})
		}
		for !open && !gaveUp {
			cond.Wait()
		}
		inFlight--
		return nil
	}}
	p := New(Config{Bus: b, Store: f.store, Log: testLog(t)})
	if err := f.pass(p, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	if len(b.take()) != len(f.ids) {
		t.Fatal("not every device got its document")
	}
	mu.Lock()
	defer mu.Unlock()
	if most != publishers {
		t.Errorf("at most %d publishes in flight at once, want %d", most, publishers)
	}
}
