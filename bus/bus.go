package bus

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/rs/zerolog"
)

// Message is one received MQTT message.
type Message struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// Handler receives messages. Handlers run one at a time on the client's
// dispatch goroutine, in arrival order.
type Handler func(Message)

// Will is the last-will message the broker publishes if the client
// disappears without disconnecting.
type Will struct {
	Topic   string
	Payload []byte
	Retain  bool
	QoS     byte
}

// Config of a client.
type Config struct {
	// Brokers are tried in order: mqtt://host:port, tcp://, ssl:// (or
	// mqtts://, tls://), ws://, wss://.
	Brokers []string
	// TLS is used for the ssl:// and wss:// brokers (see
	// internal/pki.ClientConfig); nil verifies them against the system's
	// roots. Setting it when no broker uses TLS is an error: the caller
	// asked for TLS and would not get it.
	TLS      *tls.Config
	ClientID string // "" picks a random one
	Username string
	Password string
	// CleanSession false keeps the session (subscriptions and queued QoS 1
	// messages) on the broker while the client is away.
	CleanSession bool
	Will         *Will
	// KeepAlive defaults to 30s; ConnectTimeout to 10s.
	KeepAlive      time.Duration
	ConnectTimeout time.Duration
	// OnConnect runs on the dispatch goroutine after every (re)connect; the
	// renewal of subscriptions runs concurrently with it.
	OnConnect func()
	// ReconnectJitter, when set, delays every reconnect attempt by a random
	// time up to it, so that a fleet that lost its broker at once does not
	// return at once.
	ReconnectJitter time.Duration
	// OnConnectionLost runs on the dispatch goroutine when the link drops.
	OnConnectionLost func(error)
	Log              zerolog.Logger
}

// ErrNotAuthorized is returned by Dial when the broker refused the
// credentials.
var ErrNotAuthorized = errors.New("the broker refused the credentials")

// ErrTimeout is returned when the broker did not answer in time.
var ErrTimeout = errors.New("mqtt: timed out waiting for the broker")

type subscription struct {
	filter string
	qos    byte
	h      Handler
}

// Client is a connected MQTT client. Methods are safe for concurrent use.
type Client struct {
	cfg   Config
	c     paho.Client
	log   zerolog.Logger
	mu    sync.Mutex
	subs  []subscription
	queue *queue
	done  chan struct{}
	once  sync.Once
}

// NormalizeURL turns mqtt://host:port into the tcp:// form paho wants and
// rejects schemes it cannot speak.
func NormalizeURL(raw string) (string, error) {
	if !strings.Contains(raw, "://") {
		raw = "tcp://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("broker URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "mqtt", "tcp":
		u.Scheme = "tcp"
	case "mqtts", "ssl", "tls":
		u.Scheme = "ssl"
	case "ws", "wss":
	default:
		return "", fmt.Errorf("broker URL %q: unknown scheme %q, want mqtt, mqtts, tcp, ssl, ws or wss", raw, u.Scheme)
	}
	if u.Host == "" {
		return "", fmt.Errorf("broker URL %q: missing host", raw)
	}
	return u.String(), nil
}

// RandomID returns a client id suffix that is unique enough for CLI runs.
func RandomID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Dial connects and returns once the first connection is up, or ctx ends.
// After that the client reconnects by itself.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("mqtt: no broker address given")
	}
	if cfg.ClientID == "" {
		cfg.ClientID = RandomID("tether-")
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	cl := &Client{cfg: cfg, log: cfg.Log, queue: newQueue(), done: make(chan struct{})}
	opts := paho.NewClientOptions()
	secure := false
	for _, b := range cfg.Brokers {
		u, err := NormalizeURL(b)
		if err != nil {
			return nil, err
		}
		secure = secure || strings.HasPrefix(u, "ssl://") || strings.HasPrefix(u, "wss://")
		opts.AddBroker(u)
	}
	if cfg.TLS != nil {
		if !secure {
			return nil, fmt.Errorf("mqtt: TLS settings given, but no broker URL uses TLS (mqtts://, ssl:// or wss://): %s", strings.Join(cfg.Brokers, ", "))
		}
		opts.SetTLSConfig(cfg.TLS)
	}
	opts.SetClientID(cfg.ClientID)
	// MQTT 3.1.1 explicitly: otherwise paho retries a refused CONNECT as
	// MQTT 3.1, and the broker's answer to that hides why it refused.
	opts.SetProtocolVersion(4)
	opts.SetUsername(cfg.Username)
	opts.SetPassword(cfg.Password)
	opts.SetCleanSession(cfg.CleanSession)
	opts.SetKeepAlive(cfg.KeepAlive)
	opts.SetConnectTimeout(cfg.ConnectTimeout)
	opts.SetPingTimeout(cfg.ConnectTimeout)
	opts.SetWriteTimeout(cfg.ConnectTimeout)
	opts.SetAutoReconnect(true)
	opts.SetConnectRetry(true)
	opts.SetConnectRetryInterval(time.Second)
	opts.SetMaxReconnectInterval(30 * time.Second)
	// Handlers only push onto our queue and never block, so keeping paho's
	// in-order delivery is safe and Barrier can rely on it.
	opts.SetOrderMatters(true)
	if cfg.Will != nil {
		opts.SetBinaryWill(cfg.Will.Topic, cfg.Will.Payload, cfg.Will.QoS, cfg.Will.Retain)
	}
	if j := cfg.ReconnectJitter; j > 0 {
		opts.SetReconnectingHandler(func(paho.Client, *paho.ClientOptions) {
			time.Sleep(mrand.N(j))
		})
	}
	connected := make(chan struct{})
	var connectedOnce sync.Once
	// With ConnectRetry paho hides why an attempt failed; keep the last
	// reason so that Dial can say "not authorized" rather than time out.
	refused := make(chan struct{})
	var refusedOnce sync.Once
	var lastErr struct {
		sync.Mutex
		err error
	}
	opts.SetConnectionNotificationHandler(func(_ paho.Client, n paho.ConnectionNotification) {
		var err error
		switch n := n.(type) {
		case paho.ConnectionNotificationBrokerFailed:
			err = n.Reason
		case paho.ConnectionNotificationFailed:
			err = n.Reason
		default:
			return
		}
		lastErr.Lock()
		lastErr.err = err
		lastErr.Unlock()
		if errors.Is(err, packets.ErrorRefusedNotAuthorised) || errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword) {
			refusedOnce.Do(func() { close(refused) })
		}
	})
	opts.SetOnConnectHandler(func(paho.Client) {
		// Runs on a paho goroutine: only enqueue.
		cl.queue.push(func() {
			cl.resubscribe()
			connectedOnce.Do(func() { close(connected) })
			if cfg.OnConnect != nil {
				cfg.OnConnect()
			}
		})
	})
	opts.SetConnectionLostHandler(func(_ paho.Client, err error) {
		cl.queue.push(func() {
			cl.log.Warn().Err(err).Msg("mqtt connection lost")
			if cfg.OnConnectionLost != nil {
				cfg.OnConnectionLost(err)
			}
		})
	})
	cl.c = paho.NewClient(opts)
	go cl.dispatch()
	cl.c.Connect() // with ConnectRetry the token completes only on success
	select {
	case <-connected:
		return cl, nil
	case <-refused:
		// Credentials do not get better by retrying: say so now.
		cl.Close()
		lastErr.Lock()
		why := lastErr.err
		lastErr.Unlock()
		return nil, fmt.Errorf("connect to %s: %w: %w", strings.Join(cfg.Brokers, ", "), ErrNotAuthorized, why)
	case <-ctx.Done():
		cl.Close()
		lastErr.Lock()
		why := lastErr.err
		lastErr.Unlock()
		if why != nil {
			if errors.Is(why, packets.ErrorRefusedNotAuthorised) || errors.Is(why, packets.ErrorRefusedBadUsernameOrPassword) {
				return nil, fmt.Errorf("connect to %s: %w: %w", strings.Join(cfg.Brokers, ", "), ErrNotAuthorized, why)
			}
			return nil, fmt.Errorf("connect to %s: %w (last attempt: %w)", strings.Join(cfg.Brokers, ", "), ctx.Err(), why)
		}
		return nil, fmt.Errorf("connect to %s: %w", strings.Join(cfg.Brokers, ", "), ctx.Err())
	}
}

func (c *Client) dispatch() {
	for {
		fn, ok := c.queue.pop(c.done)
		if !ok {
			return
		}
		fn()
	}
}

// resubscribe renews every subscription. It runs on the dispatch goroutine,
// which must not wait for a SUBACK, so each waits in a goroutine of its own.
func (c *Client) resubscribe() {
	c.mu.Lock()
	subs := append([]subscription(nil), c.subs...)
	c.mu.Unlock()
	for _, s := range subs {
		go func(s subscription) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*c.cfg.ConnectTimeout)
			defer cancel()
			if err := c.subscribe(ctx, s.filter, s.qos, c.wrap(s.h)); err != nil {
				c.log.Warn().Err(err).Str("filter", s.filter).Msg("re-subscribe failed")
			}
		}(s)
	}
}

func (c *Client) wrap(h Handler) paho.MessageHandler {
	return func(_ paho.Client, m paho.Message) {
		msg := Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained()}
		c.queue.push(func() { h(msg) })
	}
}

// Subscribe subscribes now and after every reconnect. It waits for the
// broker's SUBACK up to ctx's deadline and fails if the broker refused the
// filter. Do not call it from a handler with a ctx that never ends.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte, h Handler) error {
	c.mu.Lock()
	c.subs = append(c.subs, subscription{filter: filter, qos: qos, h: h})
	c.mu.Unlock()
	if err := c.subscribe(ctx, filter, qos, c.wrap(h)); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	return nil
}

// ErrRefused is returned when the broker answered a SUBSCRIBE with a failure
// code.
var ErrRefused = errors.New("mqtt: the broker refused the subscription")

// subscribe sends one SUBSCRIBE and checks the SUBACK's return code,
// retrying a refusal a few times. mochi-mqtt keeps one packet-id space per
// client for both directions: a SUBSCRIBE whose id equals that of a QoS 1
// message the broker is still delivering (a retained message of an earlier
// subscription, say) is refused with 0x80. paho reports that only in the
// token's result, not as an error, so a subscription could silently not
// exist. A retry goes out with a fresh packet id.
func (c *Client) subscribe(ctx context.Context, filter string, qos byte, h paho.MessageHandler) error {
	var err error
	for attempt := 0; attempt < 8; attempt++ {
		tok := c.c.Subscribe(filter, qos, h)
		if err = wait(ctx, tok); err != nil {
			return err
		}
		st, ok := tok.(*paho.SubscribeToken)
		if !ok {
			return nil
		}
		code, found := st.Result()[filter]
		if !found || code <= 2 {
			return nil
		}
		err = fmt.Errorf("%w (return code 0x%02x)", ErrRefused, code)
		c.log.Debug().Str("filter", filter).Int("attempt", attempt+1).Msg("subscription refused; retrying")
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(attempt+1) * 20 * time.Millisecond):
		}
	}
	return err
}

// Publish sends a message and, for QoS 1, waits for the broker's PUBACK up
// to ctx's deadline. A nil error after a reconnect does not prove delivery
// (paho #563); callers that must not lose a message keep their own outbox.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, retain bool, qos byte) error {
	tok := c.c.Publish(topic, qos, retain, payload)
	if err := wait(ctx, tok); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Barrier returns once every message the broker queued for this client
// before the call has been handed to the handlers, in particular the retained
// messages of earlier subscriptions. It works by a round trip through a
// private topic under root, as the broker delivers in order per client.
func (c *Client) Barrier(ctx context.Context, root string) error {
	topic := root + "/sync/" + c.cfg.ClientID + "/" + RandomID("")
	got := make(chan struct{})
	var once sync.Once
	if err := c.subscribe(ctx, topic, 1, c.wrap(func(Message) { once.Do(func() { close(got) }) })); err != nil {
		return fmt.Errorf("barrier subscribe: %w", err)
	}
	defer c.c.Unsubscribe(topic)
	if err := c.Publish(ctx, topic, []byte("sync"), false, 1); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	select {
	case <-got:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("barrier: %w", ErrTimeout)
	}
}

// IsConnected reports whether the link is up now.
func (c *Client) IsConnected() bool { return c.c.IsConnectionOpen() }

// Close disconnects cleanly (no last will) and stops the dispatch goroutine.
func (c *Client) Close() {
	c.once.Do(func() {
		c.c.Disconnect(250)
		close(c.done)
	})
}

func wait(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.Canceled) {
			return ctx.Err()
		}
		return ErrTimeout
	}
}

// queue is an unbounded FIFO of functions: paho's goroutines push without
// ever blocking, the dispatch goroutine pops.
type queue struct {
	mu     sync.Mutex
	items  []func()
	signal chan struct{}
}

func newQueue() *queue { return &queue{signal: make(chan struct{}, 1)} }

func (q *queue) push(fn func()) {
	q.mu.Lock()
	q.items = append(q.items, fn)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *queue) pop(done <-chan struct{}) (func(), bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			fn := q.items[0]
			q.items[0] = nil
			q.items = q.items[1:]
			q.mu.Unlock()
			return fn, true
		}
		q.mu.Unlock()
		select {
		case <-q.signal:
		case <-done:
			return nil, false
		}
	}
}
