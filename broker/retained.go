package broker

import (
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// retainedHook delivers the retained messages of a wildcard subscription
// itself, at the pace the subscriber reads them, instead of mochi.
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
// persistent session) keep mochi's path.
//
// The writes run on the client's own reading goroutine, so the client's
// next packets (a barrier publish after the subscription, say) are read
// only after its retained messages are out: order is kept.
type retainedHook struct {
	mqtt.HookBase
	srv     *mqtt.Server
	allowed func(cl *mqtt.Client, topic string) bool // the read ACL

	mu      sync.Mutex
	pending map[*mqtt.Client]map[uint16][]packets.Subscription // by SUBSCRIBE packet id
}

func (h *retainedHook) ID() string { return "tether-retained-delivery" }

func (h *retainedHook) Provides(b byte) bool {
	return b == mqtt.OnSubscribe || b == mqtt.OnPacketSent || b == mqtt.OnDisconnect
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
		if !h.granted(cl, sub.Filter) {
			continue
		}
		if err := h.deliver(cl, sub); err != nil {
			return // the connection is gone; its reader ends it
		}
	}
}

// granted reports whether mochi accepted the subscription: it is in the
// client's subscriptions (the SUBACK's reason codes are by position, and
// the hook saw only some of the filters).
func (h *retainedHook) granted(cl *mqtt.Client, filter string) bool {
	_, ok := cl.State.Subscriptions.Get(filter)
	return ok
}

func (h *retainedHook) deliver(cl *mqtt.Client, sub packets.Subscription) error {
	for _, m := range h.srv.Topics.Messages(sub.Filter) {
		if sub.NoLocal && m.Origin == cl.ID {
			continue // [MQTT-3.8.3-3]
		}
		if !h.allowed(cl, m.TopicName) {
			continue
		}
		out := m.Copy(false)
		out.FixedHeader.Qos = 0
		out.FixedHeader.Retain = true // [MQTT-3.3.1-8]
		out.FixedHeader.Dup = false
		out.PacketID = 0
		out.Properties.TopicAlias, out.Properties.TopicAliasFlag = 0, false
		out.Properties.SubscriptionIdentifier = nil
		if sub.Identifier > 0 {
			out.Properties.SubscriptionIdentifier = []int{sub.Identifier} // [MQTT-3.3.4-3]
		}
		if err := cl.WritePacket(out); err != nil {
			return err
		}
	}
	return nil
}

// OnDisconnect forgets subscriptions whose SUBACK was never sent.
func (h *retainedHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	h.mu.Lock()
	delete(h.pending, cl)
	h.mu.Unlock()
}
