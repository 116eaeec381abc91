package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// InlineBroker is what a broker in the same process offers an Inline
// client: publishing and subscribing without a network connection.
// InlineSubscribe delivers the retained messages matching filter before it
// returns, then every later message, each by a call of fn that must not
// block (Inline only queues).
type InlineBroker interface {
	InlinePublish(topic string, payload []byte, retain bool, qos byte) error
	InlineSubscribe(filter string, fn func(topic string, payload []byte, retained bool)) error
}

// Inline is a client of a broker in the same process. It has no connection
// to lose and no per-client queue in the broker to overflow: messages go
// straight from the broker into an unbounded queue of its own, handed to
// handlers one at a time, in order, on one goroutine. The server's planner
// uses it, so that thousands of retained device messages that match one of
// its filters at once are all read. Methods are safe for concurrent use.
type Inline struct {
	b     InlineBroker
	queue *queue
	done  chan struct{}
	once  sync.Once
}

// NewInline returns a client of b; Close it to stop its dispatch goroutine.
func NewInline(b InlineBroker) *Inline {
	c := &Inline{b: b, queue: newQueue(), done: make(chan struct{})}
	go func() {
		for {
			fn, ok := c.queue.pop(c.done)
			if !ok {
				return
			}
			fn()
		}
	}()
	return c
}

var errInlineClosed = errors.New("inline client closed")

// Subscribe adds a subscription; the retained messages it matches are
// queued before it returns. qos is irrelevant in process.
func (c *Inline) Subscribe(_ context.Context, filter string, _ byte, h Handler) error {
	if c.closed() {
		return errInlineClosed
	}
	err := c.b.InlineSubscribe(filter, func(topic string, payload []byte, retained bool) {
		if c.closed() {
			return
		}
		m := Message{Topic: topic, Payload: append([]byte(nil), payload...), Retained: retained}
		c.queue.push(func() { h(m) })
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	return nil
}

// Publish hands a message to the broker; a retained one is stored before
// Publish returns.
func (c *Inline) Publish(_ context.Context, topic string, payload []byte, retain bool, qos byte) error {
	if c.closed() {
		return errInlineClosed
	}
	if err := c.b.InlinePublish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Barrier returns once every message queued before it was called has been
// handed to its handler.
func (c *Inline) Barrier(ctx context.Context, _ string) error {
	reached := make(chan struct{})
	c.queue.push(func() { close(reached) })
	select {
	case <-reached:
		return nil
	case <-c.done:
		return errInlineClosed
	case <-ctx.Done():
		return fmt.Errorf("barrier: %w", ErrTimeout)
	}
}

// IsConnected is true until Close: there is no link to lose.
func (c *Inline) IsConnected() bool { return !c.closed() }

// Close stops delivering messages. The broker's subscriptions stay until the
// broker closes.
func (c *Inline) Close() { c.once.Do(func() { close(c.done) }) }

func (c *Inline) closed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}
