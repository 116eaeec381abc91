package edged

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
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
	bkMeta   = []byte("meta")
	bkTasks  = []byte("tasks")
	bkHealth = []byte("health") // healthRecord by alloc id; added without a schema bump: created on open
	bkOutbox = []byte("outbox")
	bkOutIdx = []byte("outbox_index")
	kSchema  = []byte("schema")
	kDesire  = []byte("desired")
	kSeq     = []byte("outbox_seq") // order of entries in the outbox
	kEvSeq   = []byte("event_seq")  // Event.Seq: contiguous unless dropped
	kRepSeq  = []byte("report_seq") // Reported.Seq
	kEpoch   = []byte("epoch")
	kLink    = []byte("link_seen") // last time edged knew it was connected
	kDropped = []byte("events_dropped")
)

// Added without a schema bump (created on open): an older edged.db has
// neither, which means "not enrolled, no planner key learned".
var (
	bkIdentity = []byte("identity")     // credentials and labels from enrollment
	bkKeys     = []byte("planner_keys") // trusted planner keys by KeyID
)

// taskRecord is what edged remembers of one task between passes and across
// restarts: the restart budget and the terminal outcome. Whether the task
// runs is never remembered; the driver is asked.
type taskRecord struct {
	SpecHash   string `json:"spec_hash"`
	JobVersion uint64 `json:"job_version"`
	// Seen names the exited incarnation (see incarnation) whose exit was
	// last charged to the restart budget, so that an instance whose removal
	// failed is not charged again on the next pass.
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
		for _, b := range [][]byte{bkMeta, bkTasks, bkHealth, bkOutbox, bkOutIdx, bkIdentity, bkKeys} {
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
		if m.Get(kEpoch) == nil {
			// The epoch names this database: sequence numbers restart at
			// 1 only with a new epoch, so receivers can tell a new stream
			// from a replay.
			b := make([]byte, 8)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			if err := m.Put(kEpoch, []byte(hex.EncodeToString(b))); err != nil {
				return err
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

// putTasks replaces the task records with recs and the health judgements
// with health, in one transaction.
func (s *localState) putTasks(recs map[string]taskRecord, health map[string]healthRecord) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := replaceBucket(tx, bkTasks, recs); err != nil {
			return err
		}
		return replaceBucket(tx, bkHealth, health)
	})
}

// replaceBucket replaces the content of the named bucket with recs, as JSON.
func replaceBucket[V any](tx *bolt.Tx, name []byte, recs map[string]V) error {
	if err := tx.DeleteBucket(name); err != nil {
		return err
	}
	b, err := tx.CreateBucket(name)
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
}

// health returns the stored health judgements by allocation id. Their
// Began is the wall-clock time stored.
func (s *localState) health() (map[string]healthRecord, error) {
	out := map[string]healthRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bkHealth).ForEach(func(k, v []byte) error {
			var h healthRecord
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("decode health of %s: %w", k, err)
			}
			out[string(k)] = h
			return nil
		})
	})
	return out, err
}

// linkSeen returns the last time edged knew it had its broker connection
// (zero if never), and setLinkSeen records it, so that stop_after counts
// offline time across restarts and reboots.
func (s *localState) linkSeen() time.Time {
	var t time.Time
	_ = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bkMeta).Get(kLink); v != nil {
			_ = t.UnmarshalText(v)
		}
		return nil
	})
	return t
}

func (s *localState) setLinkSeen(t time.Time) error {
	v, _ := t.UTC().MarshalText()
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bkMeta).Put(kLink, v) })
}

// epoch returns the random name of this database's sequence stream.
func (s *localState) epoch() (string, error) {
	var e string
	err := s.db.View(func(tx *bolt.Tx) error {
		e = string(tx.Bucket(bkMeta).Get(kEpoch))
		return nil
	})
	return e, err
}

// outKind says what an outbox entry is.
type outKind string

const (
	outEvent   outKind = "event"
	outReport  outKind = "report"  // coalesced: only the newest unsent one is kept
	outDropped outKind = "dropped" // the events_dropped notice, coalesced like reports
)

// coalesced kinds keep only their newest unsent entry.
func (k outKind) coalesced() bool { return k == outReport || k == outDropped }

// outEntry is one message in the outbox, in outbox order (Seq).
type outEntry struct {
	Seq     uint64  `json:"seq"`     // outbox order
	MsgSeq  uint64  `json:"msg_seq"` // the sequence number inside the message
	Kind    outKind `json:"kind"`
	Topic   string  `json:"topic"`
	Retain  bool    `json:"retain"`
	Payload []byte  `json:"payload"`
}

// outItem is what a caller adds: Build makes the payload once the message's
// sequence number is known. Events (and the dropped notice) share one
// sequence, reports have their own, so a report replaced before it was sent
// leaves no gap among events.
type outItem struct {
	Kind   outKind
	Topic  string
	Retain bool
	Build  func(seq uint64) ([]byte, error)
}

func seqKey(seq uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return k
}

// idxKey indexes an entry by what its message carries, for acknowledgement
// by echo: "event/SEQ" or "report/SEQ".
func idxKey(k outKind, msgSeq uint64) []byte {
	if k == outDropped {
		k = outEvent // the notice is an event on the wire
	}
	return append([]byte(string(k)+"/"), seqKey(msgSeq)...)
}

// enqueue adds items to the outbox in one transaction, so they survive a
// power cut before they are sent. A new report (or dropped notice) replaces
// the one not yet sent. Beyond maxEvents queued events the oldest are
// dropped; enqueue returns how many.
func (s *localState) enqueue(items []outItem, maxEvents int) (dropped int, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		m, ob, ix := tx.Bucket(bkMeta), tx.Bucket(bkOutbox), tx.Bucket(bkOutIdx)
		counter := func(k []byte) uint64 {
			n, _ := strconv.ParseUint(string(m.Get(k)), 10, 64)
			return n
		}
		cur, evSeq, repSeq := counter(kSeq), counter(kEvSeq), counter(kRepSeq)
		del := func(e outEntry) error {
			if err := ix.Delete(idxKey(e.Kind, e.MsgSeq)); err != nil {
				return err
			}
			return ob.Delete(seqKey(e.Seq))
		}
		var events []outEntry
		latest := map[outKind]*outEntry{}
		c := ob.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var e outEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode outbox entry: %w", err)
			}
			if e.Kind.coalesced() {
				latest[e.Kind] = &e
			} else {
				events = append(events, e)
			}
		}
		for _, it := range items {
			if it.Kind.coalesced() {
				if old := latest[it.Kind]; old != nil {
					if err := del(*old); err != nil {
						return err
					}
				}
			}
			cur++
			msgSeq := &evSeq
			if it.Kind == outReport {
				msgSeq = &repSeq
			}
			*msgSeq++
			payload, err := it.Build(*msgSeq)
			if err != nil {
				return err
			}
			e := outEntry{Seq: cur, MsgSeq: *msgSeq, Kind: it.Kind, Topic: it.Topic, Retain: it.Retain, Payload: payload}
			raw, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if err := ob.Put(seqKey(cur), raw); err != nil {
				return err
			}
			if err := ix.Put(idxKey(e.Kind, e.MsgSeq), seqKey(cur)); err != nil {
				return err
			}
			if it.Kind.coalesced() {
				latest[it.Kind] = &e
			} else {
				events = append(events, e)
			}
		}
		for len(events) > maxEvents {
			if err := del(events[0]); err != nil {
				return err
			}
			events = events[1:]
			dropped++
		}
		for k, v := range map[string]uint64{string(kSeq): cur, string(kEvSeq): evSeq, string(kRepSeq): repSeq} {
			if err := m.Put([]byte(k), []byte(strconv.FormatUint(v, 10))); err != nil {
				return err
			}
		}
		if dropped > 0 {
			total := counter(kDropped) + uint64(dropped)
			return m.Put(kDropped, []byte(strconv.FormatUint(total, 10)))
		}
		return nil
	})
	return dropped, err
}

// droppedTotal is how many events the outbox has dropped in this epoch.
func (s *localState) droppedTotal() uint64 {
	var n uint64
	_ = s.db.View(func(tx *bolt.Tx) error {
		n, _ = strconv.ParseUint(string(tx.Bucket(bkMeta).Get(kDropped)), 10, 64)
		return nil
	})
	return n
}

// pending returns up to limit outbox entries: the unsent report first (the
// newest state matters most), then everything else in order.
func (s *localState) pending(limit int) ([]outEntry, error) {
	var out, rest []outEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bkOutbox).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var e outEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode outbox entry: %w", err)
			}
			if e.Kind == outReport {
				out = append(out, e)
			} else if len(rest) < limit {
				rest = append(rest, e)
			}
		}
		return nil
	})
	out = append(out, rest...)
	if len(out) > limit {
		out = out[:limit]
	}
	return out, err
}

// ackMessage removes the entry whose message (kind, sequence number) came
// back from the broker; it reports whether there was one.
func (s *localState) ackMessage(k outKind, msgSeq uint64) (bool, error) {
	found := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		ix := tx.Bucket(bkOutIdx)
		key := idxKey(k, msgSeq)
		v := ix.Get(key)
		if v == nil {
			return nil
		}
		found = true
		if err := tx.Bucket(bkOutbox).Delete(v); err != nil {
			return err
		}
		return ix.Delete(key)
	})
	return found, err
}

// identity is what enrollment gave this device: the broker credentials it
// connects with and the labels of its enrollment token.
type identity struct {
	Username   string            `json:"username"`
	Password   string            `json:"password"`
	Labels     map[string]string `json:"labels,omitempty"`
	EnrolledBy string            `json:"enrolled_by,omitempty"` // enrollment token id
	EnrolledAt time.Time         `json:"enrolled_at"`
}

var (
	kIdentity     = []byte("identity")
	kEnrollSecret = []byte("enroll_secret") // chosen, not yet confirmed by the planner
)

// identity returns the stored identity, or nil if edged is not enrolled.
func (s *localState) identity() (*identity, error) {
	var id *identity
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bkIdentity).Get(kIdentity)
		if raw == nil {
			return nil
		}
		id = new(identity)
		if err := json.Unmarshal(raw, id); err != nil {
			return fmt.Errorf("decode stored identity: %w", err)
		}
		return nil
	})
	return id, err
}

// enrollSecret returns the secret chosen for enrollment, choosing and
// storing one first if there is none. The same secret is sent on every
// attempt, across restarts too, so that an answer lost on the way does not
// leave the planner with a secret the device no longer knows.
func (s *localState) enrollSecret() (string, error) {
	var secret string
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bkIdentity)
		if v := b.Get(kEnrollSecret); v != nil {
			secret = string(v)
			return nil
		}
		raw := make([]byte, protocol.MinSecretBytes)
		if _, err := rand.Read(raw); err != nil {
			return err
		}
		secret = base64.RawURLEncoding.EncodeToString(raw)
		return b.Put(kEnrollSecret, []byte(secret))
	})
	return secret, err
}

// putIdentity stores what enrollment gave, and the planner keys it named,
// in one transaction, and forgets the pending secret.
func (s *localState) putIdentity(id identity, keys []ed25519.PublicKey, now time.Time) error {
	raw, err := json.Marshal(id)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bkIdentity)
		if err := b.Put(kIdentity, raw); err != nil {
			return err
		}
		if err := b.Delete(kEnrollSecret); err != nil {
			return err
		}
		return putKeys(tx, keys, keyEnrolled, now)
	})
}

// storedKey is a trusted planner key edged learned: from its enrollment
// answer, or endorsed by a key it already trusted (rotation).
type storedKey struct {
	Key    string    `json:"key"` // standard base64
	Source string    `json:"source"`
	Added  time.Time `json:"added"`
}

const (
	keyEnrolled = "enrollment"
	keyEndorsed = "endorsement"
)

// plannerKeys returns the stored trusted planner keys.
func (s *localState) plannerKeys() ([]ed25519.PublicKey, error) {
	var out []ed25519.PublicKey
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bkKeys).ForEach(func(k, v []byte) error {
			var sk storedKey
			if err := json.Unmarshal(v, &sk); err != nil {
				return fmt.Errorf("decode planner key %s: %w", k, err)
			}
			pub, err := protocol.ParseKey(sk.Key)
			if err != nil {
				return fmt.Errorf("planner key %s: %w", k, err)
			}
			out = append(out, pub)
			return nil
		})
	})
	return out, err
}

// addPlannerKeys stores keys learned from endorsements.
func (s *localState) addPlannerKeys(keys []ed25519.PublicKey, now time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error { return putKeys(tx, keys, keyEndorsed, now) })
}

func putKeys(tx *bolt.Tx, keys []ed25519.PublicKey, source string, now time.Time) error {
	b := tx.Bucket(bkKeys)
	for _, k := range keys {
		id := []byte(protocol.KeyID(k))
		if b.Get(id) != nil {
			continue
		}
		raw, err := json.Marshal(storedKey{Key: protocol.EncodeKey(k), Source: source, Added: now.UTC()})
		if err != nil {
			return err
		}
		if err := b.Put(id, raw); err != nil {
			return err
		}
	}
	return nil
}
