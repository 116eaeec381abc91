package broker

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/rs/zerolog"
	"go.etcd.io/bbolt"
)

// boltStore is the broker's storage hook: mochi's records, in mochi's
// bolt hook's format (bucket "mochi", keys "CL_<client>",
// "SUB_<client>:<filter>", "RET_<topic>", "IFM_<client>:<packet id>", "SYS",
// values the JSON of mochi's storage types), so a database written by that
// hook opens here unchanged. What differs:
//
//   - Group commit. Every write goes through a committer: concurrent events
//     share one bbolt transaction and fsync instead of queueing for one
//     each (see committer). Each event still returns only once it is on
//     disk.
//   - Packet ids. mochi's hook stored a queued message without its PacketID.
//     Restored, every message of a client got id 0, they replaced one
//     another in the client's inflight map, and on reconnect mochi failed to
//     encode the survivor ("missing packet id") and dropped the client right
//     after CONNACK, on every attempt: the session never recovered. This
//     hook stores the id; StoredInflightMessages also restores it from the
//     key of records written without it, and drops those that lost it.
//   - Shutdown. mochi stops hooks while its event loop may still be running a
//     tick ($SYS, expiry sweeps). Every method holds the gate's read lock and
//     does nothing once Stop has run.
type boltStore struct {
	mqtt.HookBase
	path string
	log  zerolog.Logger

	db *bbolt.DB
	w  *committer

	gate    gate
	stopErr error // written under the gate's write lock
}

// storeBucket is the bucket mochi's bolt hook wrote its records to.
const storeBucket = "mochi"

func newBoltStore(path string, log zerolog.Logger) *boltStore {
	return &boltStore{path: path, log: log}
}

func (s *boltStore) ID() string { return "tether-storage" }

func (s *boltStore) Provides(b byte) bool {
	switch b {
	case mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage, mqtt.OnWillSent, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.OnSysInfoTick, mqtt.OnClientExpired, mqtt.OnRetainedExpired,
		mqtt.StoredClients, mqtt.StoredInflightMessages, mqtt.StoredRetainedMessages,
		mqtt.StoredSubscriptions, mqtt.StoredSysInfo:
		return true
	}
	return false
}

// Init opens the database. It fails at once, instead of waiting forever,
// when another broker holds the file's lock.
func (s *boltStore) Init(any) error {
	db, err := bbolt.Open(s.path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(storeBucket))
		return err
	}); err != nil {
		_ = db.Close()
		return err
	}
	s.db = db
	s.w = newCommitter(db, storeBucket, s.log)
	return nil
}

// live runs f unless the store has been stopped.
func (s *boltStore) live(f func()) { s.gate.do(f) }

func (s *boltStore) Stop() error {
	s.gate.closeWith(func() {
		if s.db == nil {
			return
		}
		s.w.close()
		s.stopErr = s.db.Close()
	})
	return s.closeErr()
}

// closeErr returns the error of closing the database, once Stop has run.
func (s *boltStore) closeErr() error {
	s.gate.mu.RLock()
	defer s.gate.mu.RUnlock()
	return s.stopErr
}

// put stores v under key; errors are logged by the committer.
func (s *boltStore) put(key string, v storage.Serializable) {
	data, err := v.MarshalBinary()
	if err != nil {
		s.log.Error().Err(err).Str("key", truncate(key, 200)).Msg("broker storage: encode record")
		return
	}
	s.live(func() { _ = s.w.write(record{key: key, value: data}) })
}

func (s *boltStore) del(keys ...string) {
	rs := make([]record, len(keys))
	for i, k := range keys {
		rs[i] = record{key: k}
	}
	s.live(func() { _ = s.w.write(rs...) })
}

func clientKey(id string) string { return storage.ClientKey + "_" + id }

func subscriptionKey(id, filter string) string {
	return storage.SubscriptionKey + "_" + id + ":" + filter
}

func retainedKey(topic string) string { return storage.RetainedKey + "_" + topic }

func inflightKey(id string, packetID uint16) string {
	return storage.InflightKey + "_" + id + ":" + strconv.Itoa(int(packetID))
}

func messageProperties(pk packets.Packet) storage.MessageProperties {
	props := pk.Properties.Copy(false)
	return storage.MessageProperties{
		PayloadFormat:          props.PayloadFormat,
		MessageExpiryInterval:  props.MessageExpiryInterval,
		ContentType:            props.ContentType,
		ResponseTopic:          props.ResponseTopic,
		CorrelationData:        props.CorrelationData,
		SubscriptionIdentifier: props.SubscriptionIdentifier,
		TopicAlias:             props.TopicAlias,
		User:                   props.User,
	}
}

func (s *boltStore) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) { s.putClient(cl) }

// OnWillSent stores the client again, now without its will.
func (s *boltStore) OnWillSent(cl *mqtt.Client, _ packets.Packet) { s.putClient(cl) }

func (s *boltStore) putClient(cl *mqtt.Client) {
	props := cl.Properties.Props.Copy(false)
	s.put(clientKey(cl.ID), &storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval:     props.SessionExpiryInterval,
			SessionExpiryIntervalFlag: props.SessionExpiryIntervalFlag,
			RequestProblemInfoFlag:    props.RequestProblemInfoFlag,
			AuthenticationMethod:      props.AuthenticationMethod,
			AuthenticationData:        props.AuthenticationData,
			RequestProblemInfo:        props.RequestProblemInfo,
			RequestResponseInfo:       props.RequestResponseInfo,
			ReceiveMaximum:            props.ReceiveMaximum,
			TopicAliasMaximum:         props.TopicAliasMaximum,
			User:                      props.User,
			MaximumPacketSize:         props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	})
}

// OnDisconnect forgets a client whose session ends with the connection
// (clean session), unless another connection took the session over.
func (s *boltStore) OnDisconnect(cl *mqtt.Client, _ error, expire bool) {
	if !expire || cl.StopCause() == packets.ErrSessionTakenOver {
		return
	}
	s.del(clientKey(cl.ID))
}

func (s *boltStore) OnClientExpired(cl *mqtt.Client) { s.del(clientKey(cl.ID)) }

func (s *boltStore) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	rs := make([]record, 0, len(pk.Filters))
	for i, f := range pk.Filters {
		if reasonCodes[i] >= packets.ErrUnspecifiedError.Code {
			continue // refused: restored, it would be live
		}
		sub := storage.Subscription{
			ID:                subscriptionKey(cl.ID, f.Filter),
			T:                 storage.SubscriptionKey,
			Client:            cl.ID,
			Qos:               reasonCodes[i],
			Filter:            f.Filter,
			Identifier:        f.Identifier,
			NoLocal:           f.NoLocal,
			RetainHandling:    f.RetainHandling,
			RetainAsPublished: f.RetainAsPublished,
		}
		data, err := sub.MarshalBinary()
		if err != nil {
			s.log.Error().Err(err).Str("key", truncate(sub.ID, 200)).Msg("broker storage: encode record")
			continue
		}
		rs = append(rs, record{key: sub.ID, value: data})
	}
	s.live(func() { _ = s.w.write(rs...) })
}

func (s *boltStore) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	keys := make([]string, len(pk.Filters))
	for i, f := range pk.Filters {
		keys[i] = subscriptionKey(cl.ID, f.Filter)
	}
	s.del(keys...)
}

// OnRetainMessage stores, or with r == -1 deletes, the retained message of
// pk's topic.
func (s *boltStore) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	key := retainedKey(pk.TopicName)
	if r == -1 {
		s.del(key)
		return
	}
	s.put(key, &storage.Message{
		ID:          key,
		T:           storage.RetainedKey,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Created:     pk.Created,
		Client:      cl.ID,
		Origin:      pk.Origin,
		Properties:  messageProperties(pk),
	})
}

func (s *boltStore) OnRetainedExpired(topic string) { s.del(retainedKey(topic)) }

// OnQosPublish stores a QoS 1/2 message in flight to, or queued for, cl.
func (s *boltStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, _ int) {
	key := inflightKey(cl.ID, pk.PacketID)
	s.put(key, &storage.Message{
		ID:          key,
		T:           storage.InflightKey,
		Client:      cl.ID,
		Origin:      pk.Origin,
		PacketID:    pk.PacketID,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Sent:        sent,
		Created:     pk.Created,
		Properties:  messageProperties(pk),
	})
}

func (s *boltStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	s.del(inflightKey(cl.ID, pk.PacketID))
}

func (s *boltStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	s.del(inflightKey(cl.ID, pk.PacketID))
}

func (s *boltStore) OnSysInfoTick(info *system.Info) {
	s.put(storage.SysInfoKey, &storage.SystemInfo{ID: storage.SysInfoKey, T: storage.SysInfoKey, Info: *info})
}

// each calls visit with every value whose key starts with prefix.
func (s *boltStore) each(prefix string, visit func([]byte) error) (err error) {
	err = storage.ErrDBFileNotOpen
	s.live(func() {
		err = s.db.View(func(tx *bbolt.Tx) error {
			c := tx.Bucket([]byte(storeBucket)).Cursor()
			p := []byte(prefix)
			for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
				if err := visit(v); err != nil {
					return fmt.Errorf("record %s: %w", truncate(string(k), 200), err)
				}
			}
			return nil
		})
	})
	return err
}

// loadAll decodes every record under prefix with decode.
func loadAll[T any](s *boltStore, prefix string) ([]T, error) {
	v := []T{}
	err := s.each(prefix, func(data []byte) error {
		var t T
		if err := any(&t).(storage.Serializable).UnmarshalBinary(data); err != nil {
			return err
		}
		v = append(v, t)
		return nil
	})
	return v, err
}

func (s *boltStore) StoredClients() ([]storage.Client, error) {
	return loadAll[storage.Client](s, storage.ClientKey+"_")
}

func (s *boltStore) StoredSubscriptions() ([]storage.Subscription, error) {
	return loadAll[storage.Subscription](s, storage.SubscriptionKey+"_")
}

func (s *boltStore) StoredRetainedMessages() ([]storage.Message, error) {
	return loadAll[storage.Message](s, storage.RetainedKey+"_")
}

func (s *boltStore) StoredSysInfo() (v storage.SystemInfo, err error) {
	err = storage.ErrDBFileNotOpen
	s.live(func() {
		err = s.db.View(func(tx *bbolt.Tx) error {
			data := tx.Bucket([]byte(storeBucket)).Get([]byte(storage.SysInfoKey))
			if data == nil {
				return nil // a fresh database
			}
			return v.UnmarshalBinary(data)
		})
	})
	return v, err
}

func (s *boltStore) StoredInflightMessages() ([]storage.Message, error) {
	v, err := loadAll[storage.Message](s, storage.InflightKey+"_")
	if err != nil {
		return nil, err
	}
	out := v[:0]
	for _, m := range v {
		if m.PacketID == 0 {
			id, err := packetIDFromKey(m.ID, m.Client)
			if err != nil {
				// A message with id 0 cannot be sent and would cost the
				// client its session; losing this one message is better.
				s.log.Warn().Err(err).Str("client", m.Client).Str("key", m.ID).
					Msg("dropping stored inflight message without packet id")
				if m.ID == inflightKey(m.Client, 0) {
					s.del(m.ID) // so that it is not reported on every start
				}
				continue
			}
			m.PacketID = id
		}
		out = append(out, m)
	}
	return out, nil
}

// packetIDFromKey parses the packet id from an inflight key,
// storage.InflightKey + "_" + client + ":" + decimal id.
func packetIDFromKey(key, client string) (uint16, error) {
	prefix := storage.InflightKey + "_" + client + ":"
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return 0, fmt.Errorf("inflight key %q does not start with %q", key, prefix)
	}
	id, err := strconv.ParseUint(rest, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("inflight key %q: packet id: %w", key, err)
	}
	if id == 0 {
		return 0, fmt.Errorf("inflight key %q: packet id 0 is invalid", key)
	}
	return uint16(id), nil
}

// expiryHook finishes what mochi starts when a persistent session expires
// (MaximumSessionExpiryInterval). mochi only forgets the client: its
// subscriptions stay in the topic index, where they receive nothing but
// cost memory, and its subscription and queued-message records stay in
// storage and are loaded again on every restart. Unsubscribing and clearing
// the inflights goes through mochi's own paths, which fire OnUnsubscribed and
// OnQosDropped, so the storage hook deletes the records.
//
// Runs on mochi's event loop goroutine.
type expiryHook struct {
	mqtt.HookBase
	srv  *mqtt.Server
	log  zerolog.Logger
	gate *gate // mochi's event loop may run a sweep after Broker.Close
}

func (h *expiryHook) ID() string { return "tether-session-expiry" }

func (h *expiryHook) Provides(b byte) bool { return b == mqtt.OnClientExpired }

func (h *expiryHook) OnClientExpired(cl *mqtt.Client) {
	h.gate.do(func() {
		queued := cl.State.Inflight.Len()
		h.srv.UnsubscribeClient(cl)
		cl.ClearInflights()
		h.log.Info().Str("client", cl.ID).Int("dropped_messages", queued).Msg("session expired")
	})
}

// takeoverHook keeps a session taken over from leaving a last will.
//
// When a client connects with the id of a connected client, mochi closes
// the old connection, whose goroutine then sends the old connection's will,
// at whatever moment it gets to it. Under load that is after the new
// connection's own first messages: a device that reconnected during a
// reconnect storm (its first CONNECT timed out on its side, its second took
// over the first) published "online", and then its old connection's will
// set its retained presence to "offline" for good — 15 of 18,000 devices
// after one server restart. The client is connected; the will is not its
// last word. Clearing the old connection's will before mochi closes it
// (OnSessionEstablish runs before the takeover) keeps it from being sent.
type takeoverHook struct {
	mqtt.HookBase
	srv *mqtt.Server
}

func (h *takeoverHook) ID() string { return "tether-takeover" }

func (h *takeoverHook) Provides(b byte) bool { return b == mqtt.OnSessionEstablish }

func (h *takeoverHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if old, ok := h.srv.Clients.Get(cl.ID); ok && old != cl {
		atomic.StoreUint32(&old.Properties.Will.Flag, 0)
	}
}
