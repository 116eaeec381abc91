package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tether-edge/tether/protocol"
	bolt "go.etcd.io/bbolt"
)

// SchemaVersion is the layout this code reads and writes.
const SchemaVersion = 1

var (
	bucketMeta    = []byte("meta")
	bucketJobs    = []byte("jobs")
	bucketDevices = []byte("devices")
	bucketAllocs  = []byte("allocations")
	keySchema     = []byte("schema")
	keyHead       = []byte("head")
)

// ErrNotFound is returned for a job, version or device that does not exist.
var ErrNotFound = errors.New("not found")

// Store is an open database.
type Store struct {
	db *bolt.DB
}

// Open opens or creates the database at path. It refuses a file written by a
// newer schema.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketJobs, bucketDevices, bucketAllocs} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := ensureIdentityBuckets(tx); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if v := meta.Get(keySchema); v != nil {
			n, err := strconv.Atoi(string(v))
			if err != nil {
				return fmt.Errorf("schema version %q is not a number", v)
			}
			if n > SchemaVersion {
				return fmt.Errorf("schema version %d is newer than this program's %d", n, SchemaVersion)
			}
			// Upgrades from older versions go here.
		}
		return meta.Put(keySchema, []byte(strconv.Itoa(SchemaVersion)))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Schema returns the schema version recorded in the file.
func (s *Store) Schema() (int, error) {
	var n int
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = strconv.Atoi(string(tx.Bucket(bucketMeta).Get(keySchema)))
		return err
	})
	return n, err
}

// Meta returns a small value the planner keeps between runs ("" if unset).
func (s *Store) Meta(key string) (string, error) {
	var v string
	err := s.db.View(func(tx *bolt.Tx) error {
		v = string(tx.Bucket(bucketMeta).Get([]byte("kv/" + key)))
		return nil
	})
	return v, err
}

// SetMeta stores a small value under key.
func (s *Store) SetMeta(key, value string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put([]byte("kv/"+key), []byte(value))
	})
}

// JobRecord is one accepted version of a job.
type JobRecord struct {
	Version     uint64       `json:"version"`
	Job         protocol.Job `json:"job"`
	Digest      string       `json:"digest"`
	SubmittedAt time.Time    `json:"submitted_at"`
	// Stable is set once this version ran everywhere it should: its
	// rollout succeeded, or, without an update block, every allocation ran
	// it. Auto-revert returns a job to its latest stable version.
	Stable bool `json:"stable,omitempty"`
	// Rollout is the last state of this version's rollout, kept once it
	// ended (successful or failed).
	Rollout *protocol.Rollout `json:"rollout,omitempty"`
}

// JobHead is the current state of a job: its latest accepted version and
// the fate of its last submission.
type JobHead struct {
	ID        string    `json:"id"`
	Latest    uint64    `json:"latest"` // 0: no version accepted yet
	Stopped   bool      `json:"stopped"`
	StoppedAt time.Time `json:"stopped_at,omitempty"`
	// LastDigest is the digest of the last payload received for the job,
	// LastErrors what was wrong with it if it was rejected.
	LastDigest string                `json:"last_digest,omitempty"`
	LastErrors []protocol.FieldError `json:"last_errors,omitempty"`
	// StatusHash is the content hash of the last job status published.
	StatusHash string `json:"status_hash,omitempty"`
	// Rollout is the state of the rollout of the latest version as the
	// last plan left it (nil without update blocks).
	Rollout *protocol.Rollout `json:"rollout,omitempty"`
	// Stable is the latest version marked stable, 0 if none.
	Stable uint64 `json:"stable,omitempty"`
	// HistoryKey identifies the job history last published.
	HistoryKey string `json:"history_key,omitempty"`
}

func versionKey(v uint64) []byte { return []byte(fmt.Sprintf("v/%020d", v)) }

func getJSON(b *bolt.Bucket, key []byte, v any) (bool, error) {
	raw := b.Get(key)
	if raw == nil {
		return false, nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

func putJSON(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}

// SubmitJob records a valid job document. A document equal to the latest
// version of a job that is not stopped creates no new version; anything else
// becomes version latest+1 and un-stops the job. It returns the version in
// force and whether it is new.
func (s *Store) SubmitJob(job protocol.Job, digest string, at time.Time) (JobRecord, bool, error) {
	var rec JobRecord
	var created bool
	err := s.db.Update(func(tx *bolt.Tx) error {
		jb, err := tx.Bucket(bucketJobs).CreateBucketIfNotExists([]byte(job.ID))
		if err != nil {
			return err
		}
		var head JobHead
		if _, err := getJSON(jb, keyHead, &head); err != nil {
			return err
		}
		head.ID = job.ID
		head.LastDigest = digest
		head.LastErrors = nil
		if head.Latest > 0 {
			var latest JobRecord
			if _, err := getJSON(jb, versionKey(head.Latest), &latest); err != nil {
				return err
			}
			if !head.Stopped && latest.Job.Equal(job) {
				rec = latest
				return putJSON(jb, keyHead, head)
			}
		}
		head.Latest++
		head.Rollout = nil // it was the previous version's
		head.Stopped = false
		head.StoppedAt = time.Time{}
		rec = JobRecord{Version: head.Latest, Job: job, Digest: digest, SubmittedAt: at.UTC()}
		created = true
		if err := putJSON(jb, versionKey(rec.Version), rec); err != nil {
			return err
		}
		return putJSON(jb, keyHead, head)
	})
	if err != nil {
		return JobRecord{}, false, fmt.Errorf("submit job %s: %w", job.ID, err)
	}
	return rec, created, nil
}

// RejectJob records that the last submission for a job was invalid. The
// version in force, if any, stays in force.
func (s *Store) RejectJob(id, digest string, errs []protocol.FieldError) error {
	return s.updateHead(id, true, func(h *JobHead) error {
		h.LastDigest = digest
		h.LastErrors = errs
		return nil
	})
}

// StopJob marks a job stopped (its operator deleted it). It reports whether
// the job existed and was running.
func (s *Store) StopJob(id string, at time.Time) (bool, error) {
	var changed bool
	err := s.updateHead(id, false, func(h *JobHead) error {
		if !h.Stopped {
			changed = true
		}
		h.Stopped = true
		h.StoppedAt = at.UTC()
		h.LastErrors = nil
		h.LastDigest = ""
		return nil
	})
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return changed, err
}

// SetRollout records the state of the rollout of the job's latest version.
// When the rollout ended, the version's record keeps it too, and a
// successful one marks the version stable.
func (s *Store) SetRollout(id string, r protocol.Rollout) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		jb := tx.Bucket(bucketJobs).Bucket([]byte(id))
		if jb == nil {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		var head JobHead
		if _, err := getJSON(jb, keyHead, &head); err != nil {
			return err
		}
		if r.Version != head.Latest {
			return fmt.Errorf("job %s: rollout of version %d, latest is %d", id, r.Version, head.Latest)
		}
		head.Rollout = &r
		if r.Done() {
			var rec JobRecord
			if ok, err := getJSON(jb, versionKey(r.Version), &rec); err != nil || !ok {
				return fmt.Errorf("job %s version %d: %w", id, r.Version, errors.Join(err, ErrNotFound))
			}
			rec.Rollout = &r
			if r.State == protocol.RolloutSuccessful {
				rec.Stable = true
				head.Stable = max(head.Stable, r.Version)
			}
			if err := putJSON(jb, versionKey(r.Version), rec); err != nil {
				return err
			}
		}
		return putJSON(jb, keyHead, head)
	})
}

// MarkStable marks a version of a job stable (it ran everywhere it should).
func (s *Store) MarkStable(id string, version uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		jb := tx.Bucket(bucketJobs).Bucket([]byte(id))
		if jb == nil {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		var rec JobRecord
		if ok, err := getJSON(jb, versionKey(version), &rec); err != nil || !ok {
			return fmt.Errorf("job %s version %d: %w", id, version, errors.Join(err, ErrNotFound))
		}
		rec.Stable = true
		if err := putJSON(jb, versionKey(version), rec); err != nil {
			return err
		}
		var head JobHead
		if _, err := getJSON(jb, keyHead, &head); err != nil {
			return err
		}
		head.Stable = max(head.Stable, version)
		return putJSON(jb, keyHead, head)
	})
}

// ErrNotPromotable is returned by Promote when the job has no rollout of
// that version waiting for promotion.
var ErrNotPromotable = errors.New("no rollout of that version to promote")

// Promote promotes the rollout of version of a job past its canaries.
func (s *Store) Promote(id string, version uint64) error {
	return s.updateHead(id, false, func(h *JobHead) error {
		r := h.Rollout
		if r == nil || r.Version != version || r.Done() {
			return ErrNotPromotable
		}
		promoted := false
		for i := range r.Groups {
			if r.Groups[i].Canaries > 0 && !r.Groups[i].Promoted {
				r.Groups[i].Promoted = true
				promoted = true
			}
		}
		if !promoted {
			return ErrNotPromotable
		}
		return nil
	})
}

// SetHistoryKey remembers which job history was last published.
func (s *Store) SetHistoryKey(id, key string) error {
	return s.updateHead(id, false, func(h *JobHead) error { h.HistoryKey = key; return nil })
}

// SetStatusHash remembers the hash of the job status last published.
func (s *Store) SetStatusHash(id, hash string) error {
	return s.updateHead(id, false, func(h *JobHead) error { h.StatusHash = hash; return nil })
}

func (s *Store) updateHead(id string, create bool, fn func(*JobHead) error) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		jb := jobs.Bucket([]byte(id))
		if jb == nil {
			if !create {
				return fmt.Errorf("job %s: %w", id, ErrNotFound)
			}
			var err error
			if jb, err = jobs.CreateBucket([]byte(id)); err != nil {
				return err
			}
		}
		head := JobHead{ID: id}
		if _, err := getJSON(jb, keyHead, &head); err != nil {
			return err
		}
		if err := fn(&head); err != nil {
			return err
		}
		return putJSON(jb, keyHead, head)
	})
}

// Jobs returns the head of every job ever submitted, in id order.
func (s *Store) Jobs() ([]JobHead, error) {
	var out []JobHead
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEachBucket(func(k []byte) error {
			var h JobHead
			if _, err := getJSON(tx.Bucket(bucketJobs).Bucket(k), keyHead, &h); err != nil {
				return err
			}
			h.ID = string(k)
			out = append(out, h)
			return nil
		})
	})
	return out, err
}

// JobVersion returns one accepted version of a job.
func (s *Store) JobVersion(id string, version uint64) (JobRecord, error) {
	var rec JobRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		jb := tx.Bucket(bucketJobs).Bucket([]byte(id))
		if jb == nil {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		ok, err := getJSON(jb, versionKey(version), &rec)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("job %s version %d: %w", id, version, ErrNotFound)
		}
		return nil
	})
	return rec, err
}

// JobVersions returns every accepted version of a job, oldest first.
func (s *Store) JobVersions(id string) ([]JobRecord, error) {
	var out []JobRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		jb := tx.Bucket(bucketJobs).Bucket([]byte(id))
		if jb == nil {
			return fmt.Errorf("job %s: %w", id, ErrNotFound)
		}
		c := jb.Cursor()
		prefix := []byte("v/")
		for k, v := c.Seek(prefix); k != nil && len(k) > 2 && string(k[:2]) == "v/"; k, v = c.Next() {
			var rec JobRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode %s: %w", k, err)
			}
			out = append(out, rec)
		}
		return nil
	})
	return out, err
}

// DeviceRecord is what the planner knows of a device.
type DeviceRecord struct {
	ID       string             `json:"id"`
	Facts    *protocol.Facts    `json:"facts,omitempty"`
	Presence *protocol.Presence `json:"presence,omitempty"`
	Reported *protocol.Reported `json:"reported,omitempty"`
	// Desired is the last desired document the planner decided on for the
	// device, DesiredHash the hash of its allocations, and Published whether
	// the broker acknowledged it. Generation is Desired.Generation; it is
	// stored before publishing so a restart never reuses one.
	Desired *protocol.Desired `json:"desired,omitempty"`
	// PresenceChangedAt is when the planner saw Presence change status, by
	// the server's clock (lost_after counts from it).
	PresenceChangedAt time.Time `json:"presence_changed_at,omitempty"`
	// ReportedAt is when Reported arrived, by the server's clock.
	ReportedAt  time.Time `json:"reported_at,omitempty"`
	DesiredHash string    `json:"desired_hash,omitempty"`
	Published   bool      `json:"published"`
	// Scheduling is the operator's eligibility and drain setting; nil
	// means eligible.
	Scheduling *protocol.Scheduling `json:"scheduling,omitempty"`
}

// Generation returns the generation of the last desired document (0 if none).
func (d DeviceRecord) Generation() uint64 {
	if d.Desired == nil {
		return 0
	}
	return d.Desired.Generation
}

// UpdateDevice reads a device record (a new one if absent), lets fn change
// it, and writes it back, all in one transaction. If fn returns an error
// nothing is written.
func (s *Store) UpdateDevice(id string, fn func(*DeviceRecord) error) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		rec := DeviceRecord{ID: id}
		if _, err := getJSON(b, []byte(id), &rec); err != nil {
			return err
		}
		if err := fn(&rec); err != nil {
			return err
		}
		rec.ID = id
		return putJSON(b, []byte(id), rec)
	})
	if err != nil {
		return fmt.Errorf("update device %s: %w", id, err)
	}
	return nil
}

// UpdateDevices applies queued changes to many device records (new ones
// where absent) in one transaction, in the order queued per device.
func (s *Store) UpdateDevices(changes map[string][]func(*DeviceRecord)) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		for id, fns := range changes {
			rec := DeviceRecord{ID: id}
			if _, err := getJSON(b, []byte(id), &rec); err != nil {
				// An unreadable record must not cost every other device its
				// update: start this one afresh from what just arrived.
				rec = DeviceRecord{ID: id}
			}
			for _, fn := range fns {
				fn(&rec)
			}
			rec.ID = id
			if err := putJSON(b, []byte(id), rec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("update %d devices: %w", len(changes), err)
	}
	return nil
}

// EditDevices reads the record of every device in edits (a new one where
// absent), lets its function change it, and writes it back, all in one
// transaction: one fsync for the lot, in device id order. A record its
// function leaves as it was is not rewritten. A record that cannot be read,
// or whose function returns an error, is left as it was and its error is
// returned under its id (the map is nil when there is none); the others are
// still written. An error of the transaction itself is returned on its own,
// and then nothing was written.
func (s *Store) EditDevices(edits map[string]func(*DeviceRecord) error) (map[string]error, error) {
	ids := make([]string, 0, len(edits))
	for id := range edits {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var failed map[string]error
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		for _, id := range ids {
			key := []byte(id)
			rec := DeviceRecord{ID: id}
			old := b.Get(key)
			var err error
			if old != nil {
				if err = json.Unmarshal(old, &rec); err != nil {
					err = fmt.Errorf("decode %s: %w", key, err)
				}
			}
			if err == nil {
				err = edits[id](&rec)
			}
			if err != nil {
				if failed == nil {
					failed = map[string]error{}
				}
				failed[id] = fmt.Errorf("update device %s: %w", id, err)
				continue
			}
			rec.ID = id
			raw, err := json.Marshal(rec)
			if err != nil {
				return fmt.Errorf("encode device %s: %w", id, err)
			}
			if bytes.Equal(raw, old) {
				continue
			}
			if err := b.Put(key, raw); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update %d devices: %w", len(edits), err)
	}
	return failed, nil
}

// Device returns one device record.
func (s *Store) Device(id string) (DeviceRecord, error) {
	var rec DeviceRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		ok, err := getJSON(tx.Bucket(bucketDevices), []byte(id), &rec)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("device %s: %w", id, ErrNotFound)
		}
		return nil
	})
	return rec, err
}

// Devices returns every device record in id order.
func (s *Store) Devices() ([]DeviceRecord, error) {
	var out []DeviceRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var rec DeviceRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decode device %s: %w", k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}

// Allocation is a placed allocation as the store keeps it.
type Allocation struct {
	protocol.Allocation
	Device   string `json:"device"`
	Index    int    `json:"index"`
	Replaces string `json:"replaces,omitempty"` // a lost allocation this one replaces
	// Reschedules holds when earlier allocations of the same slot failed
	// and were rescheduled, by the server's clock, oldest first.
	Reschedules []time.Time `json:"reschedules,omitempty"`
}

// Allocations returns the current allocations in id order.
func (s *Store) Allocations() ([]Allocation, error) {
	var out []Allocation
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocs).ForEach(func(k, v []byte) error {
			var a Allocation
			if err := json.Unmarshal(v, &a); err != nil {
				return fmt.Errorf("decode allocation %s: %w", k, err)
			}
			out = append(out, a)
			return nil
		})
	})
	return out, err
}

// ReplaceAllocations makes allocs the complete set of current allocations,
// atomically. Only what changed is written: a plan usually changes a few
// allocations of many (a rollout batch, a device that left), and rewriting
// all of them made every pass over a job of 180,000 instances write tens of
// MB.
func (s *Store) ReplaceAllocations(allocs []Allocation) error {
	// In key order: bbolt keeps a leaf's keys sorted in one slice until the
	// commit splits it, and a key put in the middle moves every key after
	// it. 180,000 new allocations put in plan order took 20 s of copying.
	sorted := slices.Clone(allocs)
	slices.SortFunc(sorted, func(a, b Allocation) int { return strings.Compare(a.ID, b.ID) })
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAllocs)
		keep := make(map[string]struct{}, len(sorted))
		for _, a := range sorted {
			keep[a.ID] = struct{}{}
			raw, err := json.Marshal(a)
			if err != nil {
				return err
			}
			if bytes.Equal(b.Get([]byte(a.ID)), raw) {
				continue
			}
			if err := b.Put([]byte(a.ID), raw); err != nil {
				return err
			}
		}
		c := b.Cursor()
		for k, _ := c.First(); k != nil; {
			if _, ok := keep[string(k)]; ok {
				k, _ = c.Next()
				continue
			}
			gone := append([]byte(nil), k...)
			if err := c.Delete(); err != nil {
				return err
			}
			k, _ = c.Seek(gone) // the key after it

		}
		return nil
	})
}
