package broker

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// retainedHook delivers retained state to network subscribers itself,
// where mochi would drop it.
//
// mochi puts every retained message a new subscription matches into the
// client's outbound queue at once, and drops without a word what does not
// fit (MaximumClientWritesPending) or would exceed the client's in-flight
// limit (MaximumInflight, for QoS 1). A dashboard or `tether device list`
// subscribing to every device's state on a fleet larger than the queue
// silently missed devices, and the queue, allocated in full for every
// client, was most of what a connected device cost (64 KiB of about 100 KB
// with 8,192 slots).
//
// For a wildcard filter of a network client this hook sets mochi's
// RetainHandling to "send none", and once mochi has written the SUBACK it
// writes the matching retained messages straight to the connection, one
// after the other, blocking while the socket is full: nothing is dropped,
// whatever their number, and the queue only has to absorb live traffic.
// They go with QoS 0, with the retain flag set: a snapshot of state that
// the subscriber gets again on its next subscription if the connection
// drops. Exact filters (a device's own desired state, QoS 1 into its
// persistent session) keep mochi's path. The writes run on the client's
// own reading goroutine, so the client's next packets (a barrier publish
// after the subscription, say) are read only after them: order is kept.
//
// A live message mochi drops for a full queue is state too when it was
// published retained: the hook writes that topic's retained message as it
// is then, a moment later, so a slow subscriber ends on the current state
// rather than on whatever it got last (see repair). Such a write does not
// wait for the queue, which may still hold older messages of the topic:
// while a client has had drops, every live message written to it is
// compared with its topic's retained message, and a topic that got an
// older one is repaired again.
//
// Every such write is followed by a look at the topic's retained message:
// a newer one may have been written to the client through its queue just
// before (live messages do not wait for this hook), and is then written
// again, so that the last word is never the older copy (see writeLatest).
type retainedHook struct {
	mqtt.HookBase
	srv     *mqtt.Server
	allowed func(cl *mqtt.Client, topic string) bool // the read ACL

	mu      sync.Mutex
	pending map[*mqtt.Client]map[uint16][]packets.Subscription // by SUBSCRIBE packet id
	dirty   map[*mqtt.Client]map[string]struct{}               // topics to repair; an entry: a repair is due
	watched sync.Map                                           // *mqtt.Client → *watch; stored and deleted under mu
}

// watch follows a client that had messages dropped until everything that
// was in its queue then has gone out.
type watch struct {
	sent atomic.Int64 // live messages written since its last drop
}

// ownWrite marks the packets this hook writes (Origin is never encoded),
// so that OnPacketSent tells them from live messages whatever their flags.
const ownWrite = "\x00tether-retained"

// repairDelay is how long the repair of dropped messages waits for a
// client's queue to drain before it writes their topics' current state.
const repairDelay = 200 * time.Millisecond

func (h *retainedHook) ID() string { return "tether-retained-delivery" }

func (h *retainedHook) Provides(b byte) bool {
	switch b {
	case mqtt.OnSubscribe, mqtt.OnPacketSent, mqtt.OnPublishDropped, mqtt.OnDisconnect:
		return true
	}
	return false
}

// wildcard reports whether a filter can match more than one topic.
func wildcard(filter string) bool { return strings.ContainsAny(filter, "+#") }

func (h *retainedHook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Inline {
		return pk // the planner reads retained messages without a queue
	}
	// Change a copy: the packet's slice is not this hook's.
	pk.Filters = append(packets.Subscriptions(nil), pk.Filters...)
	var subs []packets.Subscription
	for i, f := range pk.Filters {
		if !wildcard(f.Filter) || mqtt.IsSharedFilter(f.Filter) || f.RetainHandling == 2 {
			continue
		}
		if _, existed := cl.State.Subscriptions.Get(f.Filter); existed && f.RetainHandling == 1 {
			continue // [MQTT-3.3.1-10]: only for a new subscription
		}
		subs = append(subs, f)
		pk.Filters[i].RetainHandling = 2
	}
	if len(subs) == 0 {
		return pk
	}
	h.mu.Lock()
	if h.pending == nil {
		h.pending = map[*mqtt.Client]map[uint16][]packets.Subscription{}
	}
	if h.pending[cl] == nil {
		h.pending[cl] = map[uint16][]packets.Subscription{}
	}
	h.pending[cl][pk.PacketID] = subs
	h.mu.Unlock()
	return pk
}

func (h *retainedHook) OnPacketSent(cl *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Publish {
		// A live message to a client that has had drops: older than its
		// topic's retained message, it needs a repair after it. (A message
		// sent under a topic alias has no name here and is not checked.)
		if pk.Origin != ownWrite && pk.TopicName != "" {
			if w, ok := h.watched.Load(cl); ok {
				w.(*watch).sent.Add(1)
				if cur, ok := h.srv.Topics.Retained.Get(pk.TopicName); ok && !bytes.Equal(cur.Payload, pk.Payload) {
					h.markDirty(cl, pk.TopicName)
				}
			}
		}
		return
	}
	if pk.FixedHeader.Type != packets.Suback {
		return
	}
	h.mu.Lock()
	subs := h.pending[cl][pk.PacketID]
	delete(h.pending[cl], pk.PacketID)
	if len(h.pending[cl]) == 0 {
		delete(h.pending, cl)
	}
	h.mu.Unlock()
	for _, sub := range subs {
		if _, granted := cl.State.Subscriptions.Get(sub.Filter); !granted {
			continue // refused: the SUBACK said so
		}
		for _, m := range h.srv.Topics.Messages(sub.Filter) {
			if sub.NoLocal && m.Origin == cl.ID {
				continue // [MQTT-3.8.3-3]
			}
			if err := h.writeLatest(cl, m, sub.Identifier); err != nil {
				return // the connection is closed
			}
		}
	}
}

// OnPublishDropped notes the topic of a retained message mochi dropped for
// cl's full queue, for a repair.
func (h *retainedHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline || !pk.FixedHeader.Retain {
		return // only retained state has a current value to send instead
	}
	h.mu.Lock()
	w, ok := h.watched.Load(cl)
	if !ok {
		w = new(watch)
		h.watched.Store(cl, w)
	}
	w.(*watch).sent.Store(0)
	h.mu.Unlock()
	h.markDirty(cl, pk.TopicName)
}

// markDirty adds topic to cl's repair, and schedules one unless it is due.
func (h *retainedHook) markDirty(cl *mqtt.Client, topic string) {
	h.mu.Lock()
	if h.dirty == nil {
		h.dirty = map[*mqtt.Client]map[string]struct{}{}
	}
	topics, due := h.dirty[cl]
	if !due {
		topics = map[string]struct{}{}
		h.dirty[cl] = topics
	}
	topics[topic] = struct{}{}
	h.mu.Unlock()
	if !due {
		time.AfterFunc(repairDelay, func() { h.repair(cl) })
	}
}

// repair writes the current retained message of every topic noted for cl,
// or an empty one where the topic has none any more. It runs again a
// moment later, as long as it found something to do: the queue may still
// hold older messages that go out after these writes.
func (h *retainedHook) repair(cl *mqtt.Client) {
	h.mu.Lock()
	topics := h.dirty[cl]
	delete(h.dirty, cl)
	if cl.Closed() {
		h.watched.Delete(cl)
		h.mu.Unlock()
		return
	}
	if len(topics) == 0 {
		// Done once as many live messages went out since the last drop as
		// the queue holds: whatever was queued then is out.
		w, ok := h.watched.Load(cl)
		if !ok || w.(*watch).sent.Load() >= int64(h.srv.Options.Capabilities.MaximumClientWritesPending) {
			h.watched.Delete(cl)
			h.mu.Unlock()
			return
		}
		h.dirty[cl] = map[string]struct{}{} // look again
		h.mu.Unlock()
		time.AfterFunc(repairDelay, func() { h.repair(cl) })
		return
	}
	h.mu.Unlock()
	for topic := range topics {
		if cl.Closed() {
			return // OnDisconnect forgets it
		}
		if !h.stillSubscribed(cl, topic) {
			continue
		}
		if err := h.writeLatest(cl, h.retainedOrDeleted(topic), 0); err != nil {
			return // the connection is closed
		}
	}
	h.mu.Lock()
	if _, due := h.dirty[cl]; !due {
		h.dirty[cl] = map[string]struct{}{} // look once more
		time.AfterFunc(repairDelay, func() { h.repair(cl) })
	}
	h.mu.Unlock()
}

// stillSubscribed reports whether one of cl's subscriptions matches topic,
// by mochi's own topic index.
func (h *retainedHook) stillSubscribed(cl *mqtt.Client, topic string) bool {
	_, ok := h.srv.Topics.Subscribers(topic).Subscriptions[cl.ID]
	return ok
}

// writeLatest writes retained message m to cl, then writes the topic's
// retained message again while it is no longer the one just written: a
// newer one may have reached cl through its queue before m did, and m must
// not be the last word. A topic whose retained message was deleted
// meanwhile gets an empty one, as the deletion itself would.
func (h *retainedHook) writeLatest(cl *mqtt.Client, m packets.Packet, subID int) error {
	for range 4 { // a topic republished faster than this loop writes is current anyway
		if err := h.write(cl, m, subID); err != nil {
			return err
		}
		cur := h.retainedOrDeleted(m.TopicName)
		if bytes.Equal(cur.Payload, m.Payload) {
			return nil
		}
		m = cur
	}
	return nil
}

// retainedOrDeleted is topic's retained message, or an empty one, which
// tells a subscriber that there is none, when it has none.
func (h *retainedHook) retainedOrDeleted(topic string) packets.Packet {
	if m, ok := h.srv.Topics.Retained.Get(topic); ok {
		return m
	}
	return packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic}
}

// write sends retained message m to cl, as QoS 0 with the retain flag,
// unless the ACL keeps cl from reading its topic. A message larger than
// the client accepts is left out, as mochi would. Any other error closes
// the connection: a write cut short by its deadline leaves half a packet
// on it. The deadline is moved on before each write, as mochi's reader
// moves it before each read, so a long snapshot to a client that reads is
// not cut off by the deadline of the read before it.
func (h *retainedHook) write(cl *mqtt.Client, m packets.Packet, subID int) error {
	if !h.allowed(cl, m.TopicName) {
		return nil
	}
	if ka := cl.State.Keepalive; ka > 0 && cl.Net.Conn != nil {
		_ = cl.Net.Conn.SetWriteDeadline(time.Now().Add(time.Duration(ka) * 3 * time.Second / 2))
	}
	out := m.Copy(false)
	out.Origin = ownWrite
	out.FixedHeader.Type = packets.Publish
	out.FixedHeader.Qos = 0
	out.FixedHeader.Retain = true // [MQTT-3.3.1-8]
	out.FixedHeader.Dup = false
	out.PacketID = 0
	out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
	out.Properties.SubscriptionIdentifier = nil
	if subID > 0 {
		out.Properties.SubscriptionIdentifier = []int{subID} // [MQTT-3.3.4-3]
	}
	err := cl.WritePacket(out)
	if errors.Is(err, packets.ErrPacketTooLarge) {
		return nil
	}
	if err != nil {
		cl.Stop(err)
	}
	return err
}

// OnDisconnect forgets what was pending for cl.
func (h *retainedHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	delete(h.pending, cl)
	delete(h.dirty, cl)
	h.mu.Unlock()
	h.watched.Delete(cl)
}
