package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// Config of the embedded broker.
type Config struct {
	DataDir  string // broker.db (bbolt) lives here; "" = in-memory only (no persistence)
	MQTTAddr string // TCP listener, e.g. "127.0.0.1:1883" or "127.0.0.1:0"
	WSAddr   string // WebSocket listener for dashboards; "" = none
	// TLS, when set, secures both listeners: MQTT over TLS on MQTTAddr and
	// wss:// on WSAddr. nil = plaintext. With ClientCAs and a ClientAuth that
	// verifies, a client's verified certificate shows in
	// Peer.CertCommonName (see internal/pki.ServerConfig).
	TLS *tls.Config

	// AllowAnonymousLoopback lets clients without credentials in when their
	// remote address is loopback (dev mode). A WebSocket client that sends an
	// Origin header (a browser) must also come from a loopback origin, so
	// that a web page cannot use a developer's browser to get in.
	AllowAnonymousLoopback bool
	// AllowAnonymous lets any client in without credentials (explicit
	// insecure opt-in, logs a warning at start).
	AllowAnonymous bool
	// Users are fixed username/password pairs that may connect (used for the
	// planner's own internal connection).
	Users map[string]string
	// Authenticator replaces the policy built from the three fields above,
	// which must then be left empty. nil uses that policy.
	Authenticator Authenticator
	// PublishLimit, when set, bounds every client's publish rate.
	PublishLimit *PublishLimit
	// Retainable, when set, says which retained publishes keep their retain
	// flag; the others are delivered but not retained.
	Retainable func(p Peer, topic string) bool

	Log zerolog.Logger
}

// Listener ids, also reported to Authenticator as Peer.Listener; the same
// with TLS (Peer.TLS tells).
const (
	ListenerTCP = "tcp"
	ListenerWS  = "ws"
)

// DBFile is the name of the broker's database inside Config.DataDir.
const DBFile = "broker.db"

// Broker is an embedded mochi MQTT broker. Its methods are safe for
// concurrent use.
type Broker struct {
	cfg   Config
	log   zerolog.Logger
	srv   *mqtt.Server
	tcp   listeners.Listener
	ws    listeners.Listener // nil without Config.WSAddr
	store *boltStore         // nil without Config.DataDir
	// Shut by Close, see gate. Hooks may log, so they have their own gate
	// and it closes first: gates nest only as hooks, then log.
	hooksGate gate
	logGate   gate

	inlineSubs atomic.Int32 // inline subscription ids

	mu      sync.Mutex
	started bool
	closed  bool
}

// New validates cfg, opens the database and binds the listeners (so
// MQTTAddr and WSAddr are known), but accepts no connection until Start.
// The caller must Close the Broker.
func New(cfg Config) (*Broker, error) {
	auth, err := cfg.validate()
	if err != nil {
		return nil, fmt.Errorf("broker config: %w", err)
	}

	b := &Broker{cfg: cfg, log: cfg.Log}
	b.srv = mqtt.New(serverOptions(newMochiLogger(cfg.Log, &b.logGate)))
	if err := b.setup(auth); err != nil {
		// Releases whatever setup got to: bound ports, the bbolt file.
		_ = b.srv.Close()
		b.hooksGate.closeWith(func() {})
		b.logGate.closeWith(func() {})
		return nil, err
	}
	return b, nil
}

func (cfg Config) validate() (Authenticator, error) {
	var errs []error
	if cfg.MQTTAddr == "" {
		errs = append(errs, errors.New("MQTTAddr is empty"))
	}
	for u, pw := range cfg.Users {
		if u == "" {
			errs = append(errs, errors.New("Users: empty username"))
		}
		if pw == "" {
			errs = append(errs, fmt.Errorf("Users: user %q has an empty password", u))
		}
	}
	if t := cfg.TLS; t != nil && len(t.Certificates) == 0 && t.GetCertificate == nil && t.GetConfigForClient == nil {
		errs = append(errs, errors.New("TLS has no server certificate"))
	}
	custom := cfg.Authenticator != nil
	builtin := cfg.AllowAnonymous || cfg.AllowAnonymousLoopback || len(cfg.Users) > 0
	switch {
	case custom && builtin:
		errs = append(errs, errors.New("Authenticator is set: leave AllowAnonymous, AllowAnonymousLoopback and Users empty"))
	case !custom && !builtin:
		errs = append(errs, errors.New("no client could connect: set Users, AllowAnonymousLoopback or AllowAnonymous"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if custom {
		return cfg.Authenticator, nil
	}
	return newStaticPolicy(cfg), nil
}

// serverOptions are mochi's options, each set on purpose.
func serverOptions(log *slog.Logger) *mqtt.Options {
	caps := mqtt.NewDefaultServerCapabilities()

	// Desired state is published retained and must stay until the planner
	// replaces it, however old it is. With a value > 0 (default 86400 s)
	// mochi's once-a-second sweep deletes every retained message, and every
	// message queued for an offline client, whose age exceeds it, whatever
	// the publisher asked (mochi #444). 0 disables that sweep; an MQTT 5
	// publisher can still set a message expiry of its own.
	caps.MaximumMessageExpiryInterval = 0

	// The default, MaxUint32 seconds, keeps an MQTT 3.1.1 persistent session
	// and its queue forever. A device away for over a week loses its queued
	// messages, which costs nothing: it re-subscribes on connect and
	// reads its retained desired state. mochi counts from the disconnect,
	// or from the last broker start for sessions restored from storage.
	caps.MaximumSessionExpiryInterval = 7 * 24 * 60 * 60

	// QoS>0 messages held per client, in flight or queued while it is
	// offline, each one a bbolt record (default 8192). Beyond it mochi drops
	// new messages for that client and logs a warning; desired state is
	// retained, so a device loses nothing it cannot read again.
	caps.MaximumInflight = 1024

	// mochi allocates a packet's full length before parsing it, CONNECT
	// included, i.e. before authentication; the default is no limit (up to
	// 256 MB per connection). Documents here are kilobytes.
	caps.MaximumPacketSize = 1 << 20

	// Every client, connected or offline with a persistent session, gets
	// an outbound queue of this capacity, allocated in full, 8 bytes a
	// slot; mochi drops, without a log line, what does not fit. mochi's
	// default, 8,192 slots, was 64 KiB of the 99 KB of heap and stack an
	// idle edged cost (BenchmarkIdleDevices), and was needed only because
	// mochi queues all the retained messages a subscription matches at
	// once: retainedHook now writes those of wildcard subscriptions at the
	// subscriber's pace, past any queue, and the queue holds live traffic
	// alone. A device receives a handful of messages at a time; 1,024
	// slots give a dashboard watching every device a burst of as many
	// messages in the time it takes its connection to drain them.
	caps.MaximumClientWritesPending = 1024

	return &mqtt.Options{
		Capabilities: caps,
		// mochi reads through a bufio.Reader of this size that lives as long
		// as the connection (default 2 KiB). It only batches reads: a packet
		// longer than the buffer is read into its own slice, so the size
		// limits nothing. 512 bytes saved 1.5 KB per device and still take
		// a hundred PUBACKs in one read.
		ClientNetReadBufferSize: 512,
		// Not a buffer kept per client: mochi allocates its write buffer only
		// while packets are queued and frees it after flushing, and flushes
		// when it holds this much. Larger sizes did not drain a burst of
		// retained messages faster. mochi's default.
		ClientNetWriteBufferSize: 2048,
		// $SYS counters are republished, and with storage written to bbolt
		// with an fsync, every interval; the default is every second.
		SysTopicResendInterval: 60,
		// The server's planner is the inline client (see InlineSubscribe):
		// it reads the retained state of every device at start and the
		// whole fleet's traffic afterwards without a queue that could
		// overflow, and without a network login. Every other client
		// connects over the network, through authentication and ACLs.
		InlineClient: true,
		Logger:       log,
	}
}

func (b *Broker) setup(auth Authenticator) error {
	if b.cfg.DataDir != "" {
		path := filepath.Join(b.cfg.DataDir, DBFile)
		if err := os.MkdirAll(b.cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("broker storage %s: %w", path, err)
		}
		b.store = newBoltStore(path, b.log)
		if err := b.srv.AddHook(b.store, nil); err != nil {
			b.store = nil
			return fmt.Errorf("broker storage %s: %w", path, err)
		}
	}
	if err := b.srv.AddHook(&expiryHook{srv: b.srv, log: b.log, gate: &b.hooksGate}, nil); err != nil {
		return fmt.Errorf("add session expiry hook: %w", err)
	}
	if err := b.srv.AddHook(&takeoverHook{srv: b.srv}, nil); err != nil {
		return fmt.Errorf("add takeover hook: %w", err)
	}
	if err := b.srv.AddHook(&retainedHook{srv: b.srv, allowed: func(cl *mqtt.Client, topic string) bool {
		return auth.Authorize(peerOf(cl), topic, false)
	}}, nil); err != nil {
		return fmt.Errorf("add retained delivery hook: %w", err)
	}
	if err := b.srv.AddHook(&authHook{auth: auth, log: b.log, gate: &b.hooksGate}, nil); err != nil {
		return fmt.Errorf("add auth hook: %w", err)
	}
	if r := b.cfg.Retainable; r != nil {
		if err := b.srv.AddHook(&retainHook{allowed: r, log: b.log}, nil); err != nil {
			return fmt.Errorf("add retain hook: %w", err)
		}
	}
	if l := b.cfg.PublishLimit; l != nil {
		if err := b.srv.AddHook(&publishLimitHook{limit: *l, log: b.log, clients: map[string]*pubBucket{}}, nil); err != nil {
			return fmt.Errorf("add publish limit hook: %w", err)
		}
	}

	b.tcp = connectDeadline{
		Listener: listeners.NewTCP(listeners.Config{Type: listeners.TypeTCP, ID: ListenerTCP, Address: b.cfg.MQTTAddr, TLSConfig: b.cfg.TLS}),
		timeout:  connectTimeout,
	}
	if err := b.srv.AddListener(b.tcp); err != nil {
		return fmt.Errorf("mqtt listener %s: %w", b.cfg.MQTTAddr, err)
	}
	if b.cfg.WSAddr != "" {
		b.ws = connectDeadline{Listener: newWSListener(ListenerWS, b.cfg.WSAddr, wsTLS(b.cfg.TLS)), timeout: connectTimeout}
		if err := b.srv.AddListener(b.ws); err != nil {
			return fmt.Errorf("websocket listener %s: %w", b.cfg.WSAddr, err)
		}
	}
	return nil
}

// wsTLS is the WebSocket listener's TLS: the same certificate, but no
// request for a client certificate. Chromium cannot answer such a request,
// even an optional one, during a WebSocket handshake and cancels it, so a
// dashboard could never connect; devices with certificates use MQTT over
// TCP.
func wsTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	c = c.Clone()
	c.ClientAuth = tls.NoClientCert
	c.ClientCAs = nil
	return c
}

// Start loads persisted sessions and retained messages and starts accepting
// connections. It does not block. It may be called once; after an error,
// Close the broker.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return errors.New("broker: start after close")
	case b.started:
		return errors.New("broker: already started")
	}
	b.started = true // mochi's Serve is not safe to repeat, even after an error
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("start broker: %w", err)
	}

	if b.cfg.AllowAnonymous {
		b.log.Warn().Msg("anonymous clients are allowed from any address")
	}
	b.log.Info().
		Str("mqtt_addr", b.MQTTAddr()).Str("ws_addr", b.WSAddr()).Bool("tls", b.cfg.TLS != nil).
		Str("data_dir", b.cfg.DataDir).Bool("persistent", b.store != nil).
		Msg("broker started")
	return nil
}

// InlinePublish publishes as the broker's own inline client: no network, no
// ACL (it is the server itself). A retained message is stored before it
// returns.
func (b *Broker) InlinePublish(topic string, payload []byte, retain bool, qos byte) error {
	return b.srv.Publish(topic, payload, retain, qos)
}

// InlineSubscribe subscribes the broker's own inline client to filter: fn
// gets the retained messages that match before InlineSubscribe returns,
// then every later message, on the publisher's goroutine, so it must not
// block (bus.Inline queues). No message is dropped for a slow reader.
//
// A message published while the retained ones are handed over may reach fn
// before the older retained copy of its topic does; that copy is then left
// out. Handing both over in the wrong order, as mochi's own Subscribe does,
// left the planner with a device's stale presence ("offline", from the
// last will its old connection left at shutdown) after the device had
// reconnected during a restart: 189 of 18,000 devices.
func (b *Broker) InlineSubscribe(filter string, fn func(topic string, payload []byte, retained bool)) error {
	if !mqtt.IsValidFilter(filter, false) {
		return fmt.Errorf("filter %q: %w", filter, packets.ErrTopicFilterInvalid)
	}
	var (
		mu       sync.Mutex
		catching atomic.Bool // retained messages are being handed over
		live     = map[string]struct{}{}
	)
	catching.Store(true)
	b.srv.Topics.InlineSubscribe(mqtt.InlineSubscription{
		Subscription: packets.Subscription{Identifier: int(b.inlineSubs.Add(1)), Filter: filter},
		Handler: func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
			if !catching.Load() {
				fn(pk.TopicName, pk.Payload, pk.FixedHeader.Retain)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if live != nil && pk.FixedHeader.Retain {
				// Only a retained publish replaces the retained copy.
				live[pk.TopicName] = struct{}{}
			}
			fn(pk.TopicName, pk.Payload, pk.FixedHeader.Retain)
		},
	})
	for _, pk := range b.srv.Topics.Messages(filter) {
		mu.Lock()
		if _, newer := live[pk.TopicName]; !newer {
			fn(pk.TopicName, pk.Payload, true)
		}
		mu.Unlock()
	}
	mu.Lock()
	live = nil
	catching.Store(false)
	mu.Unlock()
	return nil
}

// Disconnect closes the connection of every client for which match returns
// true, at once, and returns how many it closed. Their sessions stay; what
// they may do next is the Authenticator's call when they reconnect.
func (b *Broker) Disconnect(match func(Peer) bool) int {
	n := 0
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() || !match(peerOf(cl)) {
			continue
		}
		// A client cut off must not get a last word: its will was
		// allowed when it connected, as whom it no longer is.
		atomic.StoreUint32(&cl.Properties.Will.Flag, 0)
		_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		n++
	}
	return n
}

// MQTTAddr is the address the TCP listener is bound to, with the real port
// when Config.MQTTAddr asked for port 0.
func (b *Broker) MQTTAddr() string { return b.tcp.Address() }

// WSAddr is the address the WebSocket listener is bound to, or "".
func (b *Broker) WSAddr() string {
	if b.ws == nil {
		return ""
	}
	return b.ws.Address()
}

// Close disconnects all clients, stops the listeners and closes the
// database; bbolt has synced every write already. Calling it again does
// nothing.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	_ = b.srv.Close() // always nil; mochi only logs hook errors
	b.hooksGate.closeWith(func() {})
	b.logGate.closeWith(func() {})
	if b.started {
		b.log.Info().Msg("broker stopped")
	}
	if b.store != nil {
		if err := b.store.closeErr(); err != nil {
			return fmt.Errorf("close broker storage: %w", err)
		}
	}
	return nil
}

// gate lets work run until it is closed; closing waits for the work in
// progress. mochi's Close returns while its event loop may still be in a
// tick and a listener goroutine may still log, so everything of ours those
// goroutines reach goes through a gate.
type gate struct {
	mu     sync.RWMutex
	closed bool
}

// do runs f unless the gate is closed. f must not enter the same gate again:
// a read lock taken twice deadlocks once Close waits for the write lock.
func (g *gate) do(f func()) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if !g.closed {
		f()
	}
}

// closeWith waits for the work in progress, closes the gate and, if it was
// open, runs f while no work can start.
func (g *gate) closeWith(f func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.closed = true
		f()
	}
}
