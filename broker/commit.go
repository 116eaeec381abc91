package broker

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// errStoreClosed is returned for writes offered after the committer closed.
var errStoreClosed = errors.New("broker storage is closed")

// committer writes records to one bbolt bucket with group commit.
//
// bbolt has a single writer and syncs every transaction to disk. One
// transaction per MQTT event — what mochi's bolt hook does — makes every
// connect, retained publish and QoS 1 delivery of every client wait in line
// for its own fsync: with 18,000 devices connecting, clients gave up and
// published again faster than the disk committed, and the broker never
// caught up. Here a caller adds its records to the next commit and waits
// for it; one goroutine commits whatever has gathered in one transaction
// as soon as the previous one is on disk. A lone writer pays one fsync, as
// before, and never waits for a timer (bbolt's own Batch waits up to
// MaxBatchDelay for company); a thousand concurrent writers share a few.
//
// Durability is unchanged: write returns only once its records are synced,
// so mochi still acknowledges a publish after its retained copy is on disk.
type committer struct {
	db     *bbolt.DB
	bucket []byte
	log    zerolog.Logger

	mu     sync.Mutex
	next   *commit // gathering; swapped out by the loop
	closed bool

	wake    chan struct{} // capacity 1: "next has records"
	quit    chan struct{}
	stopped chan struct{}

	// Transactions and records committed, for tests and benchmarks.
	commits, records atomic.Int64
}

// record is one key to put, or to delete when value is nil.
type record struct {
	key   string
	value []byte
}

type commit struct {
	records []record
	done    chan struct{} // closed once records are committed (or failed)
	err     error
}

func newCommit() *commit { return &commit{done: make(chan struct{})} }

func newCommitter(db *bbolt.DB, bucket string, log zerolog.Logger) *committer {
	c := &committer{
		db:      db,
		bucket:  []byte(bucket),
		log:     log,
		next:    newCommit(),
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go c.loop()
	return c
}

// write commits rs and returns once they are on disk. Records of one call
// are applied in order, in one transaction.
func (c *committer) write(rs ...record) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errStoreClosed
	}
	cm := c.next
	cm.records = append(cm.records, rs...)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default: // the loop is already due to look
	}
	<-cm.done
	return cm.err
}

func (c *committer) loop() {
	defer close(c.stopped)
	for {
		select {
		case <-c.wake:
			c.flush()
		case <-c.quit:
			c.flush() // whatever was offered before close
			return
		}
	}
}

// flush commits the gathered records in one transaction. A record bbolt
// refuses (a key over its 32 KiB limit: MQTT allows 64 KiB topics) would fail
// the whole transaction, so then each record is tried on its own, and only
// the refused ones are lost — and logged.
func (c *committer) flush() {
	c.mu.Lock()
	cm := c.next
	c.next = newCommit()
	c.mu.Unlock()
	defer close(cm.done)
	if len(cm.records) == 0 {
		return
	}
	c.commits.Add(1)
	c.records.Add(int64(len(cm.records)))
	cm.err = c.apply(cm.records)
	if cm.err == nil || len(cm.records) == 1 {
		c.logFailure(cm.records, cm.err)
		return
	}
	var errs []error
	for _, r := range cm.records {
		if err := c.apply([]record{r}); err != nil {
			c.logFailure([]record{r}, err)
			errs = append(errs, err)
		}
	}
	cm.err = errors.Join(errs...)
}

func (c *committer) apply(rs []record) error {
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(c.bucket)
		for _, r := range rs {
			var err error
			if r.value == nil {
				err = b.Delete([]byte(r.key))
			} else {
				err = b.Put([]byte(r.key), r.value)
			}
			if err != nil {
				return &keyError{key: r.key, err: err}
			}
		}
		return nil
	})
}

func (c *committer) logFailure(rs []record, err error) {
	if err == nil {
		return
	}
	key := ""
	if len(rs) == 1 {
		key = rs[0].key
	}
	c.log.Error().Err(err).Str("key", truncate(key, 200)).Int("records", len(rs)).Msg("broker storage write failed")
}

// close commits what was offered before it and stops the loop. Writes
// offered after it fail with errStoreClosed.
func (c *committer) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	close(c.quit)
	<-c.stopped
}

// keyError names the record a transaction failed on.
type keyError struct {
	key string
	err error
}

func (e *keyError) Error() string { return "record " + truncate(e.key, 200) + ": " + e.err.Error() }
func (e *keyError) Unwrap() error { return e.err }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
