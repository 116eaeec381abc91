package edged

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/tether-edge/tether/protocol"
	bolt "go.etcd.io/bbolt"
)

// stateSchema is the layout of edged's local database.
const stateSchema = 1

var (
	bkMeta  = []byte("meta")
	bkTasks = []byte("tasks")
	kSchema = []byte("schema")
	kDesire = []byte("desired")
	kSeq    = []byte("event_seq")
)

// taskRecord is what edged remembers of one task between passes and across
// restarts: the restart budget and the terminal outcome. Whether the task
// runs is never remembered; the driver is asked.
type taskRecord struct {
	SpecHash   string `json:"spec_hash"`
	JobVersion uint64 `json:"job_version"`
	// Seen is the id of the exited instance whose exit was last charged to
	// the restart budget, so that an instance whose removal failed is not
	// charged again on the next pass.
	Seen        string    `json:"seen,omitempty"`
	Restarts    int       `json:"restarts"`     // within the current window
	Total       int       `json:"total"`        // since the task was created
	WindowStart time.Time `json:"window_start"` // zero until the first restart
	NextStart   time.Time `json:"next_start"`   // zero: start as soon as possible
	Complete    bool      `json:"complete"`     // batch: exited 0, never run again
	Failed      bool      `json:"failed"`       // restart policy used up
	ExitCode    *int      `json:"exit_code,omitempty"`
	Message     string    `json:"message,omitempty"`
	StartedAt   time.Time `json:"started_at,omitempty"`
	FinishedAt  time.Time `json:"finished_at,omitempty"`
}

// localState is edged's bbolt file.
type localState struct {
	db *bolt.DB
}

func openState(path string) (*localState, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open local state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bkMeta, bkTasks} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bkMeta)
		if v := m.Get(kSchema); v != nil {
			if n, err := strconv.Atoi(string(v)); err != nil || n > stateSchema {
				return fmt.Errorf("schema version %q not supported by this edged (max %d)", v, stateSchema)
			}
		}
		return m.Put(kSchema, []byte(strconv.Itoa(stateSchema)))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open local state %s: %w", path, err)
	}
	return &localState{db: db}, nil
}

func (s *localState) close() error { return s.db.Close() }

// desired returns the stored desired document, or nil.
func (s *localState) desired() (*protocol.Desired, error) {
	var d *protocol.Desired
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bkMeta).Get(kDesire)
		if raw == nil {
			return nil
		}
		d = new(protocol.Desired)
		return json.Unmarshal(raw, d)
	})
	return d, err
}

func (s *localState) putDesired(d protocol.Desired) error {
	raw, err := json.Marshal(d)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bkMeta).Put(kDesire, raw) })
}

func (s *localState) tasks() (map[string]taskRecord, error) {
	out := map[string]taskRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bkTasks).ForEach(func(k, v []byte) error {
			var r taskRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode task %s: %w", k, err)
			}
			out[string(k)] = r
			return nil
		})
	})
	return out, err
}

// putTasks replaces the task records with recs in one transaction.
func (s *localState) putTasks(recs map[string]taskRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bkTasks); err != nil {
			return err
		}
		b, err := tx.CreateBucket(bkTasks)
		if err != nil {
			return err
		}
		for k, r := range recs {
			raw, err := json.Marshal(r)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(k), raw); err != nil {
				return err
			}
		}
		return nil
	})
}

// nextSeq reserves n event sequence numbers and returns the first.
func (s *localState) nextSeq(n int) (uint64, error) {
	var first uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bkMeta)
		var cur uint64
		if v := m.Get(kSeq); v != nil {
			cur, _ = strconv.ParseUint(string(v), 10, 64)
		}
		first = cur + 1
		return m.Put(kSeq, []byte(strconv.FormatUint(cur+uint64(n), 10)))
	})
	return first, err
}
