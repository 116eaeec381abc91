package store

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
	bolt "go.etcd.io/bbolt"
)

func testJob(id, image string) protocol.Job {
	j := protocol.Job{ID: id, Groups: []protocol.Group{{Name: "g", Tasks: []protocol.Task{{Name: "t", Driver: "podman", Config: protocol.TaskConfig{Image: image}}}}}}
	j.Normalize()
	return j
}

func open(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJobVersionsSurviveRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "planner.db")
	s := open(t, path)
	now := time.Now()

	r1, created, err := s.SubmitJob(testJob("web", "a:1"), "d1", now)
	if err != nil || !created || r1.Version != 1 {
		t.Fatalf("first submit: %+v %v %v", r1, created, err)
	}
	// Same content again: no new version, but the digest is recorded.
	r, created, err := s.SubmitJob(testJob("web", "a:1"), "d1b", now)
	if err != nil || created || r.Version != 1 {
		t.Fatalf("unchanged submit: %+v %v %v", r, created, err)
	}
	r2, created, err := s.SubmitJob(testJob("web", "a:2"), "d2", now)
	if err != nil || !created || r2.Version != 2 {
		t.Fatalf("changed submit: %+v %v %v", r2, created, err)
	}
	if err := s.RejectJob("web", "bad", []protocol.FieldError{{Path: "id", Message: "x"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path)
	defer s.Close()
	heads, err := s.Jobs()
	if err != nil || len(heads) != 1 {
		t.Fatalf("jobs: %+v %v", heads, err)
	}
	h := heads[0]
	if h.Latest != 2 || h.LastDigest != "bad" || len(h.LastErrors) != 1 || h.Stopped {
		t.Errorf("head after restart: %+v", h)
	}
	versions, err := s.JobVersions("web")
	if err != nil || len(versions) != 2 || versions[0].Job.Groups[0].Tasks[0].Config.Image != "a:1" || versions[1].Version != 2 {
		t.Errorf("versions: %+v %v", versions, err)
	}
	// Stopping, then submitting the same content again makes a new version.
	if changed, err := s.StopJob("web", now); err != nil || !changed {
		t.Fatalf("stop: %v %v", changed, err)
	}
	if changed, _ := s.StopJob("web", now); changed {
		t.Error("second stop reported a change")
	}
	r3, created, err := s.SubmitJob(testJob("web", "a:2"), "d3", now)
	if err != nil || !created || r3.Version != 3 {
		t.Fatalf("resubmit after stop: %+v %v %v", r3, created, err)
	}
	if _, err := s.JobVersion("web", 9); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing version: %v", err)
	}
	if changed, err := s.StopJob("nope", now); err != nil || changed {
		t.Errorf("stop of unknown job: %v %v", changed, err)
	}
}

func TestRejectedFirstSubmission(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "p.db"))
	defer s.Close()
	if err := s.RejectJob("x", "d", []protocol.FieldError{{Path: "groups", Message: "want at least one group"}}); err != nil {
		t.Fatal(err)
	}
	heads, _ := s.Jobs()
	if len(heads) != 1 || heads[0].Latest != 0 || heads[0].LastErrors[0].Path != "groups" {
		t.Errorf("%+v", heads)
	}
}

func TestDevicesAndAllocations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	s := open(t, path)
	err := s.UpdateDevice("pi", func(d *DeviceRecord) error {
		d.Facts = &protocol.Facts{Device: "pi", Arch: "arm64", MemoryMB: 512}
		d.Desired = &protocol.Desired{Device: "pi", Generation: 3}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// A failing update writes nothing.
	boom := errors.New("boom")
	if err := s.UpdateDevice("pi", func(d *DeviceRecord) error { d.Facts = nil; return boom }); !errors.Is(err, boom) {
		t.Fatalf("want boom, got %v", err)
	}
	allocs := []Allocation{{Allocation: protocol.Allocation{ID: "a1", Job: "j"}, Device: "pi"}, {Allocation: protocol.Allocation{ID: "a2", Job: "j"}, Device: "pi", Index: 1}}
	if err := s.ReplaceAllocations(allocs); err != nil {
		t.Fatal(err)
	}
	if err := s.ReplaceAllocations(allocs[1:]); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = open(t, path)
	defer s.Close()
	d, err := s.Device("pi")
	if err != nil || d.Facts == nil || d.Facts.Arch != "arm64" || d.Generation() != 3 {
		t.Errorf("device after restart: %+v %v", d, err)
	}
	got, err := s.Allocations()
	if err != nil || len(got) != 1 || got[0].ID != "a2" || got[0].Index != 1 {
		t.Errorf("allocations: %+v %v", got, err)
	}
	if _, err := s.Device("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	if n, _ := s.Schema(); n != SchemaVersion {
		t.Errorf("schema %d", n)
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error {
		b, _ := tx.CreateBucketIfNotExists(bucketMeta)
		return b.Put(keySchema, []byte("99"))
	})
	db.Close()
	_, err = Open(path)
	if err == nil || !strings.Contains(err.Error(), "schema version 99 is newer") {
		t.Fatalf("got %v", err)
	}
}

func TestUpdateDevicesInOneTransaction(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "p.db"))
	defer s.Close()
	err := s.UpdateDevices(map[string][]func(*DeviceRecord){
		"a": {func(d *DeviceRecord) { d.Facts = &protocol.Facts{Device: "a", Arch: "arm"} }, func(d *DeviceRecord) { d.Facts.Arch = "arm64" }},
		"b": {func(d *DeviceRecord) { d.Presence = &protocol.Presence{Device: "b", Status: protocol.Online} }},
	})
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := s.Devices()
	if len(devs) != 2 || devs[0].Facts.Arch != "arm64" || devs[1].Presence.Status != protocol.Online {
		t.Fatalf("%+v", devs)
	}
}

func TestUpdateDevicesSurvivesABadRecord(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "p.db"))
	defer s.Close()
	s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketDevices).Put([]byte("bad"), []byte("{not json")) })
	err := s.UpdateDevices(map[string][]func(*DeviceRecord){
		"bad":  {func(d *DeviceRecord) { d.Facts = &protocol.Facts{Device: "bad", Arch: "arm"} }},
		"good": {func(d *DeviceRecord) { d.Facts = &protocol.Facts{Device: "good", Arch: "amd64"} }},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"bad", "good"} {
		if d, err := s.Device(id); err != nil || d.Facts == nil {
			t.Errorf("%s: %+v %v", id, d, err)
		}
	}
}

func TestEditDevicesReportsEachFailureAndWritesTheRest(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "p.db"))
	defer s.Close()
	err := s.UpdateDevices(map[string][]func(*DeviceRecord){
		"a": {func(d *DeviceRecord) { d.Desired = &protocol.Desired{Device: "a", Generation: 1} }},
		"b": {func(d *DeviceRecord) { d.Desired = &protocol.Desired{Device: "b", Generation: 7} }},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketDevices).Put([]byte("bad"), []byte("{not json")) })
	boom := errors.New("boom")
	var seen []string
	failed, err := s.EditDevices(map[string]func(*DeviceRecord) error{
		"a":   func(d *DeviceRecord) error { seen = append(seen, d.ID); d.Desired.Generation++; return nil },
		"b":   func(d *DeviceRecord) error { seen = append(seen, d.ID); d.Desired = nil; return boom },
		"bad": func(d *DeviceRecord) error { seen = append(seen, d.ID); return nil },
		"new": func(d *DeviceRecord) error { seen = append(seen, d.ID); d.Published = true; return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(seen, ",") != "a,b,new" {
		t.Errorf("functions ran for %v, want a, b and new in id order (not the unreadable one)", seen)
	}
	if len(failed) != 2 || !errors.Is(failed["b"], boom) || failed["bad"] == nil || !strings.Contains(failed["bad"].Error(), "bad") {
		t.Fatalf("failures %v, want b's boom and bad's decoding error", failed)
	}
	if d, err := s.Device("a"); err != nil || d.Generation() != 2 {
		t.Errorf("a: %+v %v, want generation 2", d, err)
	}
	if d, err := s.Device("b"); err != nil || d.Generation() != 7 {
		t.Errorf("b: %+v %v, want it untouched at generation 7", d, err)
	}
	if d, err := s.Device("new"); err != nil || !d.Published || d.ID != "new" {
		t.Errorf("new: %+v %v", d, err)
	}
	s.db.View(func(tx *bolt.Tx) error {
		if raw := tx.Bucket(bucketDevices).Get([]byte("bad")); string(raw) != "{not json" {
			t.Errorf("the unreadable record became %q", raw)
		}
		return nil
	})
	if failed, err := s.EditDevices(map[string]func(*DeviceRecord) error{"a": func(*DeviceRecord) error { return nil }}); failed != nil || err != nil {
		t.Errorf("an edit without failures: %v %v", failed, err)
	}
}

// ReplaceAllocations leaves exactly the new set, whatever it keeps, changes
// or drops (runs of neighbours, the first and the last key included), and
// rewrites only what changed.
func TestReplaceAllocationsWritesTheDifference(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "p.db"))
	defer s.Close()
	alloc := func(i int, image string) Allocation {
		return Allocation{Allocation: protocol.Allocation{ID: fmt.Sprintf("a%03d", i), Job: "j",
			Tasks: []protocol.Task{{Name: "t", Driver: "podman", Config: protocol.TaskConfig{Image: image}}}}, Device: "pi", Index: i}
	}
	var all []Allocation
	for i := range 100 {
		all = append(all, alloc(i, "img:1"))
	}
	if err := s.ReplaceAllocations(all); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		var next []Allocation
		for i := range 120 {
			switch rng.IntN(4) {
			case 0: // dropped (or never there)
			case 1:
				next = append(next, alloc(i, fmt.Sprintf("img:%d", round+2)))
			default:
				next = append(next, alloc(i, "img:1"))
			}
		}
		if err := s.ReplaceAllocations(next); err != nil {
			t.Fatal(err)
		}
		got, err := s.Allocations()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(next) {
			t.Fatalf("round %d: %d allocations stored, want %d", round, len(got), len(next))
		}
		for i := range got {
			if got[i].ID != next[i].ID || got[i].Tasks[0].Config.Image != next[i].Tasks[0].Config.Image {
				t.Fatalf("round %d: stored %s %s, want %s %s", round, got[i].ID, got[i].Tasks[0].Config.Image, next[i].ID, next[i].Tasks[0].Config.Image)
			}
		}
		// The same set again writes no allocation: only the commit's own
		// meta and freelist pages.
		st := s.db.Stats()
		before := st.TxStats.GetWrite()
		if err := s.ReplaceAllocations(next); err != nil {
			t.Fatal(err)
		}
		st = s.db.Stats()
		if w := st.TxStats.GetWrite() - before; w > 2 {
			t.Fatalf("round %d: an unchanged set wrote %d pages", round, w)
		}
	}
}

// BenchmarkReplaceAllocations measures the first plan of a large service
// job: 100,000 new allocations, in the order a plan lists them (not by
// id), written to an empty store.
func BenchmarkReplaceAllocations(b *testing.B) {
	allocs := make([]Allocation, 100000)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range allocs {
		allocs[i] = Allocation{Allocation: protocol.Allocation{ID: fmt.Sprintf("%016x", rng.Uint64()), Job: "svc", Group: "g",
			Tasks: []protocol.Task{{Name: "w", Driver: "podman", Config: protocol.TaskConfig{Image: "localhost/busybox:latest"}}}}, Device: fmt.Sprintf("dev-%05d", i%18000), Index: i}
	}
	for b.Loop() {
		b.StopTimer()
		s := open(b, filepath.Join(b.TempDir(), "p.db"))
		b.StartTimer()
		if err := s.ReplaceAllocations(allocs); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.Close()
		b.StartTimer()
	}
}
