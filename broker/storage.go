package broker

import (
	"fmt"
	"strconv"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/rs/zerolog"
)

// boltStore is mochi's bbolt storage hook with the fixes a restart needs.
//
//   - Packet ids. bolt.Hook.OnQosPublish stores a queued message without its
//     PacketID. Restored, every message of a client gets id 0, they replace
//     one another in the client's inflight map, and on reconnect mochi fails
//     to encode the survivor ("missing packet id") and drops the client right
//     after CONNACK, on every attempt: the session never recovers. The id is
//     still in the record's key, "IFM_<client>:<id>" (bolt.inflightKey), which
//     is also the record's ID field; StoredInflightMessages restores it from
//     there. That also repairs databases written before this fix.
//   - Shutdown. mochi stops hooks while its event loop may still be running a
//     tick ($SYS, expiry sweeps), and bolt.Hook.Stop sets its db to nil with
//     no lock, so a tick at that moment would race or panic on a nil db. Every
//     method here holds a read lock and does nothing once Stop has run.
type boltStore struct {
	*bolt.Hook
	log zerolog.Logger

	gate    gate
	stopErr error // written under the gate's write lock
}

func newBoltStore(log zerolog.Logger) *boltStore {
	return &boltStore{Hook: new(bolt.Hook), log: log}
}

// live runs f unless the store has been stopped.
func (s *boltStore) live(f func()) { s.gate.do(f) }

func (s *boltStore) Stop() error {
	s.gate.closeWith(func() { s.stopErr = s.Hook.Stop() })
	return s.closeErr()
}

// closeErr returns the error of closing the database, once Stop has run.
func (s *boltStore) closeErr() error {
	s.gate.mu.RLock()
	defer s.gate.mu.RUnlock()
	return s.stopErr
}

func (s *boltStore) StoredInflightMessages() (v []storage.Message, err error) {
	s.live(func() { v, err = s.Hook.StoredInflightMessages() })
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
				s.deleteZeroIDRecord(m)
				continue
			}
			m.PacketID = id
		}
		out = append(out, m)
	}
	return out, nil
}

// deleteZeroIDRecord deletes m if its key is one the unfixed hook wrote for
// a message it had already lost the id of ("IFM_<client>:0", when mochi
// resent it), so that it is not reported again on every start.
func (s *boltStore) deleteZeroIDRecord(m storage.Message) {
	if m.ID != storage.InflightKey+"_"+m.Client+":0" {
		return
	}
	// bolt.Hook builds the key from the client's ID and the packet's id.
	s.live(func() { s.Hook.OnQosComplete(&mqtt.Client{ID: m.Client}, packets.Packet{}) })
}

// packetIDFromKey parses the packet id from an inflight key written by
// bolt.Hook, storage.InflightKey + "_" + client + ":" + decimal id.
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

func (s *boltStore) StoredClients() (v []storage.Client, err error) {
	s.live(func() { v, err = s.Hook.StoredClients() })
	return v, err
}

func (s *boltStore) StoredSubscriptions() (v []storage.Subscription, err error) {
	s.live(func() { v, err = s.Hook.StoredSubscriptions() })
	return v, err
}

func (s *boltStore) StoredRetainedMessages() (v []storage.Message, err error) {
	s.live(func() { v, err = s.Hook.StoredRetainedMessages() })
	return v, err
}

func (s *boltStore) StoredSysInfo() (v storage.SystemInfo, err error) {
	s.live(func() { v, err = s.Hook.StoredSysInfo() })
	return v, err
}

func (s *boltStore) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	s.live(func() { s.Hook.OnSessionEstablished(cl, pk) })
}

func (s *boltStore) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	s.live(func() { s.Hook.OnWillSent(cl, pk) })
}

func (s *boltStore) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	s.live(func() { s.Hook.OnDisconnect(cl, err, expire) })
}

func (s *boltStore) OnSubscribed(cl *mqtt.Client, pk packets.Packet, reasonCodes []byte) {
	s.live(func() { s.Hook.OnSubscribed(cl, pk, reasonCodes) })
}

func (s *boltStore) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	s.live(func() { s.Hook.OnUnsubscribed(cl, pk) })
}

func (s *boltStore) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	s.live(func() { s.Hook.OnRetainMessage(cl, pk, r) })
}

func (s *boltStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	s.live(func() { s.Hook.OnQosPublish(cl, pk, sent, resends) })
}

func (s *boltStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	s.live(func() { s.Hook.OnQosComplete(cl, pk) })
}

func (s *boltStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	s.live(func() { s.Hook.OnQosDropped(cl, pk) })
}

func (s *boltStore) OnSysInfoTick(info *system.Info) {
	s.live(func() { s.Hook.OnSysInfoTick(info) })
}

func (s *boltStore) OnRetainedExpired(filter string) {
	s.live(func() { s.Hook.OnRetainedExpired(filter) })
}

func (s *boltStore) OnClientExpired(cl *mqtt.Client) {
	s.live(func() { s.Hook.OnClientExpired(cl) })
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
