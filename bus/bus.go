package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
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
	// Brokers are tried in order: mqtt://host:port, tcp://, ssl://, ws://.
	Brokers  []string
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
	// OnConnect runs on the dispatch goroutine after every (re)connect,
	// after subscriptions were renewed.
	OnConnect func()
	// OnConnectionLost runs on the dispatch goroutine when the link drops.
	OnConnectionLost func(error)
	Log              zerolog.Logger
}

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
	for _, b := range cfg.Brokers {
		u, err := NormalizeURL(b)
		if err != nil {
			return nil, err
		}
		opts.AddBroker(u)
	}
	opts.SetClientID(cfg.ClientID)
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
	connected := make(chan struct{})
	var connectedOnce sync.Once
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
	case <-ctx.Done():
		cl.Close()
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

// resubscribe renews every subscription; it runs on the dispatch goroutine
// and must not wait for the SUBACK there, so it waits in a goroutine.
func (c *Client) resubscribe() {
	c.mu.Lock()
	subs := append([]subscription(nil), c.subs...)
	c.mu.Unlock()
	for _, s := range subs {
		tok := c.c.Subscribe(s.filter, s.qos, c.wrap(s.h))
		go func(filter string) {
			if !tok.WaitTimeout(c.cfg.ConnectTimeout) {
				c.log.Warn().Str("filter", filter).Msg("re-subscribe timed out")
			} else if err := tok.Error(); err != nil {
				c.log.Warn().Err(err).Str("filter", filter).Msg("re-subscribe failed")
			}
		}(s.filter)
	}
}

func (c *Client) wrap(h Handler) paho.MessageHandler {
	return func(_ paho.Client, m paho.Message) {
		msg := Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), Retained: m.Retained()}
		c.queue.push(func() { h(msg) })
	}
}

// Subscribe subscribes now and after every reconnect. It waits for the
// broker's SUBACK up to ctx's deadline. Do not call it from a handler with a
// ctx that never ends.
func (c *Client) Subscribe(ctx context.Context, filter string, qos byte, h Handler) error {
	c.mu.Lock()
	c.subs = append(c.subs, subscription{filter: filter, qos: qos, h: h})
	c.mu.Unlock()
	tok := c.c.Subscribe(filter, qos, c.wrap(h))
	if err := wait(ctx, tok); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	return nil
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
	tok := c.c.Subscribe(topic, 1, c.wrap(func(Message) { once.Do(func() { close(got) }) }))
	if err := wait(ctx, tok); err != nil {
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
