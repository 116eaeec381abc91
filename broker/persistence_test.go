package broker

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// queueForOfflineClient leaves a persistent session for id, subscribed to
// topic with QoS 1, with payloads queued for it, and closes the broker.
func queueForOfflineClient(t *testing.T, dataDir, id, topic string, payloads ...string) {
	t.Helper()
	b := startBroker(t, Config{DataDir: dataDir, AllowAnonymousLoopback: true})
	url := "tcp://" + b.MQTTAddr()

	sub := mustConnect(t, url, persistent(id))
	wait(t, "subscribe", sub.Subscribe(topic, 1, nil))
	sub.Disconnect(250)
	waitFor(t, id+" offline", func() bool {
		cl, ok := b.srv.Clients.Get(id)
		return ok && cl.Closed()
	})

	pub := mustConnect(t, url, clientID("publisher"))
	for _, p := range payloads {
		wait(t, "publish "+p, pub.Publish(topic, 1, false, p))
	}
	waitFor(t, fmt.Sprintf("%d messages queued for %s", len(payloads), id), func() bool {
		cl, ok := b.srv.Clients.Get(id)
		return ok && cl.State.Inflight.Len() == len(payloads)
	})
	pub.Disconnect(250)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// A device's persistent session, with QoS 1 messages queued while it was
// offline, survives a broker restart. Unfixed, mochi's bolt hook loses the
// packet ids and the broker drops the client after every CONNACK.
func TestQueuedMessagesSurviveRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const id, topic = "device-1", "tether/test/queue"
	want := []string{"m1", "m2", "m3"}
	queueForOfflineClient(t, dir, id, topic, want...)

	b := startBroker(t, Config{DataDir: dir, AllowAnonymousLoopback: true})
	msgs := make(chan paho.Message, 16)
	mustConnect(t, "tcp://"+b.MQTTAddr(), persistent(id), deliverTo(msgs))

	var got []string
	for _, m := range receive(t, msgs, len(want)) {
		if m.Topic() != topic {
			t.Errorf("message on %q, want %q", m.Topic(), topic)
		}
		got = append(got, string(m.Payload()))
	}
	slices.Sort(got) // mochi resends in no particular order
	if !slices.Equal(got, want) {
		t.Fatalf("received %q, want %q", got, want)
	}
	waitFor(t, "queue drained", func() bool {
		cl, ok := b.srv.Clients.Get(id)
		return ok && cl.State.Inflight.Len() == 0
	})
}

func TestRetainedSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const topic = "tether/test/desired/dev-1"

	b1 := startBroker(t, Config{DataDir: dir, AllowAnonymousLoopback: true})
	pub := mustConnect(t, "tcp://"+b1.MQTTAddr(), clientID("planner"))
	// mochi stores a retained message before it acknowledges the publish.
	wait(t, "publish", pub.Publish(topic, 1, true, "generation-7"))
	pub.Disconnect(250)
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}

	b2 := startBroker(t, Config{DataDir: dir, AllowAnonymousLoopback: true})
	msgs := make(chan paho.Message, 4)
	sub := mustConnect(t, "tcp://"+b2.MQTTAddr(), clientID("device-1"), deliverTo(msgs))
	wait(t, "subscribe", sub.Subscribe("tether/test/desired/+", 1, nil))
	m := receive(t, msgs, 1)[0]
	if m.Topic() != topic || string(m.Payload()) != "generation-7" || !m.Retained() {
		t.Fatalf("got topic %q payload %q retained %v, want %q %q true", m.Topic(), m.Payload(), m.Retained(), topic, "generation-7")
	}
}

// Desired state older than mochi's default MaximumMessageExpiryInterval
// (24 h) is still delivered. The message is aged in place rather than
// waited for; two already-expired control messages, the second added once
// the sweep has removed the first, prove that a complete sweep has looked at
// it.
func TestRetainedOlderThanADayIsKept(t *testing.T) {
	t.Parallel()
	b := startBroker(t, Config{AllowAnonymousLoopback: true})
	url := "tcp://" + b.MQTTAddr()
	const topic = "tether/test/desired/old"

	pub := mustConnect(t, url, clientID("planner"))
	wait(t, "publish", pub.Publish(topic, 1, true, "old-but-current"))
	pk, ok := b.srv.Topics.Retained.Get(topic)
	if !ok {
		t.Fatal("retained message missing")
	}
	pk.Created -= 2 * 24 * 60 * 60 // twice the default limit
	b.srv.Topics.RetainMessage(pk)

	for i := range 2 {
		ctl := fmt.Sprintf("tether/test/control/%d", i)
		now := time.Now().Unix()
		b.srv.Topics.RetainMessage(packets.Packet{
			FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true},
			ProtocolVersion: 5, // mochi honours an expiry only on MQTT 5 messages
			TopicName:       ctl,
			Payload:         []byte("expired"),
			Created:         now - 10,
			Expiry:          now - 5,
		})
		waitFor(t, "expiry sweep to remove "+ctl, func() bool {
			_, ok := b.srv.Topics.Retained.Get(ctl)
			return !ok
		})
	}

	msgs := make(chan paho.Message, 4)
	sub := mustConnect(t, url, clientID("device-1"), deliverTo(msgs))
	wait(t, "subscribe", sub.Subscribe(topic, 1, nil))
	m := receive(t, msgs, 1)[0]
	if string(m.Payload()) != "old-but-current" || !m.Retained() {
		t.Fatalf("got payload %q retained %v", m.Payload(), m.Retained())
	}
}

// An expired session leaves nothing behind, neither in the topic index nor
// in storage, including a session restored from storage after a restart.
func TestExpiredSessionIsDeleted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const id, topic = "device-gone", "tether/test/expiry"
	queueForOfflineClient(t, dir, id, topic, "m1")

	b := newBroker(t, Config{DataDir: dir, AllowAnonymousLoopback: true})
	b.srv.Options.Capabilities.MaximumSessionExpiryInterval = 0 // before Start: no race with the sweep
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "session to expire", func() bool {
		_, ok := b.srv.Clients.Get(id)
		return !ok
	})
	if _, ok := b.srv.Topics.Subscribers(topic).Subscriptions[id]; ok {
		t.Error("expired client is still subscribed in the topic index")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := bbolt.Open(filepath.Join(dir, DBFile), 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte("mochi")).ForEach(func(k, _ []byte) error {
			for _, kind := range []string{storage.ClientKey, storage.SubscriptionKey, storage.InflightKey} {
				if strings.HasPrefix(string(k), kind+"_"+id) {
					t.Errorf("storage still holds %s", k)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestPacketIDFromKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key, client string
		want        uint16 // 0 = error
	}{
		{"IFM_device-1:7", "device-1", 7},
		{"IFM_a:b:65535", "a:b", 65535}, // client ids may contain ':'
		{"IFM_device-1:0", "device-1", 0},
		{"IFM_device-1:65536", "device-1", 0},
		{"IFM_device-1:x", "device-1", 0},
		{"IFM_device-1:", "device-1", 0},
		{"IFM_other:7", "device-1", 0},
		{"RET_device-1:7", "device-1", 0},
	}
	for _, tt := range tests {
		got, err := packetIDFromKey(tt.key, tt.client)
		if tt.want == 0 {
			if err == nil {
				t.Errorf("packetIDFromKey(%q, %q) = %d, want an error", tt.key, tt.client, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("packetIDFromKey(%q, %q) = %d, %v, want %d", tt.key, tt.client, got, err, tt.want)
		}
	}
}

// openStore opens a boltStore on path, as the broker would.
func openStore(t *testing.T, path string) *boltStore {
	t.Helper()
	s := newBoltStore(path, testLog(t))
	s.SetOpts(newMochiLogger(testLog(t), new(gate)), nil)
	if err := s.Init(nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}

// The loader restores packet ids from the keys of records written without
// them (by mochi's bolt hook, which this store replaces) and drops, for
// good, the records that lost theirs.
func TestStoredInflightPacketIDs(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), DBFile)
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(storeBucket))
		if err != nil {
			return err
		}
		for _, id := range []uint16{5, 0, 65535} {
			key := fmt.Sprintf("IFM_device-1:%d", id)
			m := storage.Message{ID: key, T: storage.InflightKey, Client: "device-1", TopicName: "t",
				FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, Payload: []byte{byte(id)}}
			data, _ := m.MarshalBinary()
			if err := b.Put([]byte(key), data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s := openStore(t, path)
	for round := range 2 {
		msgs, err := s.StoredInflightMessages()
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint16
		for _, m := range msgs {
			if m.Client != "device-1" || m.ToPacket().PacketID != m.PacketID {
				t.Errorf("round %d: bad message %+v", round, m)
			}
			ids = append(ids, m.PacketID)
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []uint16{5, 65535}) {
			t.Fatalf("round %d: packet ids %v, want [5 65535]", round, ids)
		}
	}
	stored, err := loadAll[storage.Message](s, "IFM_")
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, m := range stored {
		left = append(left, m.ID)
	}
	if !slices.Equal(left, []string{"IFM_device-1:5", "IFM_device-1:65535"}) {
		t.Errorf("records left %v, want the id-0 record deleted", left)
	}
}

// Records written by this store come back as they went in, packet ids
// included, and deletes of one commit happen after its puts.
func TestStoreRoundTrip(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), DBFile)
	s := openStore(t, path)
	cl := &mqtt.Client{ID: "device-1"}
	for _, id := range []uint16{1, 2, 3} {
		s.OnQosPublish(cl, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			PacketID:    id, TopicName: "t", Payload: []byte{byte(id)},
		}, 0, 0)
	}
	s.OnQosComplete(cl, packets.Packet{PacketID: 2})
	s.OnRetainMessage(cl, packets.Packet{TopicName: "r/1", Payload: []byte("one")}, 1)
	s.OnRetainMessage(cl, packets.Packet{TopicName: "r/2", Payload: []byte("two")}, 1)
	s.OnRetainMessage(cl, packets.Packet{TopicName: "r/2"}, -1)
	s.OnSubscribed(cl, packets.Packet{Filters: packets.Subscriptions{{Filter: "a/#"}, {Filter: "b"}}}, []byte{1, 0})
	s.OnUnsubscribed(cl, packets.Packet{Filters: packets.Subscriptions{{Filter: "b"}}})

	msgs, err := s.StoredInflightMessages()
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint16
	for _, m := range msgs {
		ids = append(ids, m.PacketID)
	}
	if !slices.Equal(ids, []uint16{1, 3}) {
		t.Errorf("inflight ids %v, want [1 3]", ids)
	}
	ret, err := s.StoredRetainedMessages()
	if err != nil || len(ret) != 1 || ret[0].TopicName != "r/1" || string(ret[0].Payload) != "one" {
		t.Errorf("retained = %+v, %v; want r/1 only", ret, err)
	}
	subs, err := s.StoredSubscriptions()
	if err != nil || len(subs) != 1 || subs[0].Filter != "a/#" || subs[0].Qos != 1 {
		t.Errorf("subscriptions = %+v, %v; want a/# at QoS 1 only", subs, err)
	}
	if info, err := s.StoredSysInfo(); err != nil || info.ID != "" {
		t.Errorf("sys info on a fresh database = %+v, %v; want none, no error", info, err)
	}
}

// Concurrent writers share transactions, and every write is on disk when
// it returns: reopened, the database holds all of them.
func TestStoreGroupCommit(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), DBFile)
	s := openStore(t, path)
	const writers, each = 50, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			cl := &mqtt.Client{ID: fmt.Sprintf("device-%d", w)}
			for i := range each {
				s.OnRetainMessage(cl, packets.Packet{TopicName: fmt.Sprintf("r/%d/%d", w, i), Payload: []byte("x")}, 1)
			}
		})
	}
	wg.Wait()
	commits, records := s.w.commits.Load(), s.w.records.Load()
	if records != writers*each {
		t.Errorf("%d records committed, want %d", records, writers*each)
	}
	if commits >= records {
		t.Errorf("%d commits for %d records from %d concurrent writers: nothing was shared", commits, records, writers)
	}
	t.Logf("%d records in %d commits", records, commits)
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}

	s = openStore(t, path)
	ret, err := s.StoredRetainedMessages()
	if err != nil || len(ret) != writers*each {
		t.Fatalf("reopened: %d retained messages, %v; want %d", len(ret), err, writers*each)
	}
}

// A record bbolt refuses (a key over its 32 KiB limit) is lost alone: the
// records committed with it are stored.
func TestStoreRefusedRecord(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), DBFile))
	long := strings.Repeat("x", 40000)
	err := s.w.write(
		record{key: "RET_ok/1", value: []byte(`{"topic_name":"ok/1"}`)},
		record{key: "RET_" + long, value: []byte(`{}`)},
		record{key: "RET_ok/2", value: []byte(`{"topic_name":"ok/2"}`)},
	)
	if !errors.Is(err, bbolt.ErrKeyTooLarge) {
		t.Errorf("write error = %v, want ErrKeyTooLarge", err)
	}
	stored, err := s.StoredRetainedMessages()
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, m := range stored {
		keys = append(keys, m.TopicName)
	}
	if !slices.Equal(keys, []string{"ok/1", "ok/2"}) {
		t.Errorf("stored %v, want [ok/1 ok/2]", keys)
	}
}

// Writes after Stop are dropped, not a panic or a hang (mochi's event loop
// may still tick after it stopped the hooks).
func TestStoreAfterStop(t *testing.T) {
	t.Parallel()
	s := openStore(t, filepath.Join(t.TempDir(), DBFile))
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	s.OnRetainMessage(&mqtt.Client{ID: "c"}, packets.Packet{TopicName: "t", Payload: []byte("x")}, 1)
	if _, err := s.StoredRetainedMessages(); err == nil {
		t.Error("StoredRetainedMessages after Stop: no error")
	}
	if err := s.w.write(record{key: "k", value: []byte("v")}); !errors.Is(err, errStoreClosed) {
		t.Errorf("write after close = %v, want errStoreClosed", err)
	}
}

// BenchmarkStoreRetained measures retained messages stored per second by
// one writer and by many at once (as many devices publishing their state
// after a restart): each write returns once it is on disk.
func BenchmarkStoreRetained(b *testing.B) {
	for _, writers := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			s := newBoltStore(filepath.Join(b.TempDir(), DBFile), zerolog.Nop())
			s.SetOpts(newMochiLogger(zerolog.Nop(), new(gate)), nil)
			if err := s.Init(nil); err != nil {
				b.Fatal(err)
			}
			defer s.Stop()
			payload := []byte(strings.Repeat("r", 400)) // a device's report
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := range writers {
				wg.Go(func() {
					cl := &mqtt.Client{ID: fmt.Sprintf("device-%d", w)}
					for next.Add(1) <= int64(b.N) {
						s.OnRetainMessage(cl, packets.Packet{TopicName: "tether/v1/devices/" + cl.ID + "/reported", Payload: payload}, 1)
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(s.w.records.Load())/float64(max(s.w.commits.Load(), 1)), "records/commit")
		})
	}
}

// A connection taken over by a new one with the same client id leaves no
// will: the client is connected, and a will sent by the old connection's
// goroutine after the new connection's first messages would leave its
// retained presence "offline" while it is online.
func TestTakenOverSessionSendsNoWill(t *testing.T) {
	t.Parallel()
	b := startBroker(t, Config{DataDir: t.TempDir(), AllowAnonymousLoopback: true})
	url := "tcp://" + b.MQTTAddr()
	const id, topic = "device-1", "t/v1/devices/device-1/presence"
	withWill := func(o *paho.ClientOptions) { o.SetBinaryWill(topic, []byte("offline"), 1, true) }

	msgs := make(chan paho.Message, 16)
	watcher := mustConnect(t, url, clientID("watcher"), deliverTo(msgs))
	wait(t, "subscribe", watcher.Subscribe(topic, 1, nil))

	lost := make(chan struct{})
	old := mustConnect(t, url, persistent(id), withWill, func(o *paho.ClientOptions) {
		o.SetConnectionLostHandler(func(paho.Client, error) { close(lost) })
	})
	wait(t, "online", old.Publish(topic, 1, true, "online-1"))
	if got := string(receive(t, msgs, 1)[0].Payload()); got != "online-1" {
		t.Fatalf("got %q, want online-1", got)
	}

	cur := mustConnect(t, url, persistent(id), withWill)
	select {
	case <-lost:
	case <-time.After(waitTimeout):
		t.Fatal("the old connection was not closed")
	}
	wait(t, "online again", cur.Publish(topic, 1, true, "online-2"))
	for {
		select {
		case m := <-msgs:
			if string(m.Payload()) == "offline" {
				t.Fatal("the taken-over connection sent its will")
			}
			if string(m.Payload()) != "online-2" {
				t.Fatalf("unexpected %q", m.Payload())
			}
			continue
		case <-time.After(500 * time.Millisecond):
			// mochi sends an old connection's will as soon as its reader
			// ends, well within this.
		}
		break
	}
	if got := b.srv.Topics.Messages(topic); len(got) != 1 || string(got[0].Payload) != "online-2" {
		t.Errorf("retained presence = %v, want online-2", got)
	}

	// A connection that ends otherwise still sends its will.
	cl, ok := b.srv.Clients.Get(id)
	if !ok {
		t.Fatal("device-1 is not connected")
	}
	_ = b.srv.DisconnectClient(cl, packets.ErrUnspecifiedError)
	if got := string(receive(t, msgs, 1)[0].Payload()); got != "offline" {
		t.Errorf("after a dropped connection got %q, want its will", got)
	}
}
