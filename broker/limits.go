package broker

import (
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// PublishLimit bounds how fast one client may publish: a burst, then Rate
// messages a second. A client over it is disconnected (MQTT 5: quota
// exceeded) and the message dropped; the flood is logged once per client
// and minute. The inline client (the server's planner) is not limited.
type PublishLimit struct {
	Rate  float64
	Burst int
}

// DefaultPublishLimit lets a device that comes back after a long time
// away flush its whole outbox at once, and stops a client that publishes
// without pause.
var DefaultPublishLimit = PublishLimit{Rate: 200, Burst: 2000}

type publishLimitHook struct {
	mqtt.HookBase
	limit PublishLimit
	log   zerolog.Logger

	mu      sync.Mutex
	clients map[string]*pubBucket
}

type pubBucket struct {
	tokens  float64
	at      time.Time
	flooded time.Time // last time a flood was logged
}

func (h *publishLimitHook) ID() string { return "tether-publish-limit" }

func (h *publishLimitHook) Provides(b byte) bool {
	return b == mqtt.OnPublish || b == mqtt.OnDisconnect
}

func (h *publishLimitHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline {
		return pk, nil
	}
	now := time.Now()
	key := bucketKey(cl)
	h.mu.Lock()
	b, ok := h.clients[key]
	if !ok {
		b = &pubBucket{tokens: float64(h.limit.Burst), at: now}
		h.clients[key] = b
	}
	b.tokens = min(float64(h.limit.Burst), b.tokens+now.Sub(b.at).Seconds()*h.limit.Rate)
	b.at = now
	over := b.tokens < 1
	logIt := false
	if over {
		logIt = now.Sub(b.flooded) > time.Minute
		if logIt {
			b.flooded = now
		}
	} else {
		b.tokens--
	}
	h.mu.Unlock()
	if !over {
		return pk, nil
	}
	if logIt {
		p := peerOf(cl)
		h.log.Warn().Str("client", p.ClientID).Str("username", p.Username).Str("remote", p.Remote).
			Str("topic", pk.TopicName).Float64("rate", h.limit.Rate).Int("burst", h.limit.Burst).
			Msg("publish flood: client disconnected")
	}
	cl.Stop(packets.ErrQuotaExceeded)
	return pk, packets.ErrRejectPacket
}

// bucketKey is one bucket per identity: a token may use many client ids.
func bucketKey(cl *mqtt.Client) string {
	if u := string(cl.Properties.Username); u != "" {
		return "user:" + u
	}
	return cl.ID
}

func (h *publishLimitHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	key := bucketKey(cl)
	h.mu.Lock()
	// Keep a flooding client's empty bucket a while, so reconnecting does
	// not refill it. (An identity's other connections keep theirs too.)
	if b, ok := h.clients[key]; ok && b.tokens+time.Since(b.at).Seconds()*h.limit.Rate >= float64(h.limit.Burst) {
		delete(h.clients, key)
	}
	h.mu.Unlock()
}

// retainHook drops the retain flag of publishes on topics that are not
// meant to be retained (Config.Retainable), so that no client can fill the
// broker's memory and storage with retained messages on topics it may
// write, such as its sync topics or request topics.
type retainHook struct {
	mqtt.HookBase
	allowed func(Peer, string) bool
	log     zerolog.Logger
}

func (h *retainHook) ID() string { return "tether-retain-policy" }

func (h *retainHook) Provides(b byte) bool { return b == mqtt.OnPublish }

func (h *retainHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Retain && !cl.Net.Inline && !h.allowed(peerOf(cl), pk.TopicName) {
		h.log.Debug().Str("client", cl.ID).Str("topic", pk.TopicName).Msg("retain flag dropped")
		pk.FixedHeader.Retain = false
	}
	return pk, nil
}
