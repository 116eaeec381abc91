package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
)

// dial connects a short-lived operator client.
func (g *globals) dial(ctx context.Context) (*bus.Client, error) {
	user, pass, prefix, _, err := g.credentials()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := g.tlsConfig()
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := bus.Dial(dctx, bus.Config{
		TLS:          tlsCfg,
		Brokers:      []string{g.broker},
		ClientID:     bus.RandomID(prefix),
		Username:     user,
		Password:     pass,
		CleanSession: true,
		Log:          zerolog.Nop(),
	})
	if errors.Is(err, bus.ErrNotAuthorized) && user == "" {
		return nil, fmt.Errorf("the broker at %s refused this client: a tether server needs a token (--token, --token-file or TETHER_TOKEN): %w", g.broker, err)
	}
	if errors.Is(err, bus.ErrNotAuthorized) {
		return nil, fmt.Errorf("the broker at %s refused these credentials (revoked, expired, mistyped, or from another server?): %w", g.broker, err)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot reach the broker at %s (set --broker or TETHER_BROKER; is `tether dev` or `tether server` running?): %w", g.broker, err)
	}
	return c, nil
}

// connect connects a short-lived operator client under the topic root the
// flags name.
func (g *globals) connect(ctx context.Context) (*bus.Client, protocol.Topics, error) {
	topics, err := g.topics()
	if err != nil {
		return nil, topics, err
	}
	c, err := g.dial(ctx)
	return c, topics, err
}

// collect subscribes to filters and returns every message (retained ones
// first) delivered before a barrier round trip: the current retained state.
func collect(ctx context.Context, c *bus.Client, base string, filters ...string) ([]bus.Message, error) {
	ch := make(chan bus.Message, 1024)
	var msgs []bus.Message
	for _, f := range filters {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.Subscribe(sctx, f, 1, func(m bus.Message) { ch <- m })
		cancel()
		if err != nil {
			return nil, err
		}
	}
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Barrier(bctx, base) }()
	for {
		select {
		case m := <-ch:
			msgs = append(msgs, m)
		case err := <-done:
			// Everything before the barrier is in ch now.
			for {
				select {
				case m := <-ch:
					msgs = append(msgs, m)
				default:
					return msgs, err
				}
			}
		}
	}
}
