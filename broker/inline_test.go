package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-edge/tether/bus"
)

// The inline client reads every retained message a filter matches, far
// more than a network client's queue holds (MaximumClientWritesPending),
// and exchanges messages with network clients both ways.
func TestInlineClient(t *testing.T) {
	t.Parallel()
	b := startBroker(t, Config{AllowAnonymousLoopback: true})
	const n = 12000 // many times a network client's queue
	for i := range n {
		if err := b.InlinePublish(fmt.Sprintf("t/v1/devices/d%05d/presence", i), []byte("x"), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	c := bus.NewInline(b)
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var retained, live atomic.Int64
	err := c.Subscribe(ctx, "t/v1/devices/+/presence", 1, func(m bus.Message) {
		if m.Retained {
			retained.Add(1)
		} else {
			live.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Barrier(ctx, "t/v1"); err != nil {
		t.Fatal(err)
	}
	if got := retained.Load(); got != n {
		t.Fatalf("inline subscriber read %d of %d retained messages", got, n)
	}

	// A network client's publish reaches the inline subscriber, and an
	// inline publish reaches a network subscriber.
	net, err := bus.Dial(ctx, bus.Config{Brokers: []string{"mqtt://" + b.MQTTAddr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(net.Close)
	got := make(chan string, 1)
	if err := net.Subscribe(ctx, "t/v1/jobs/+", 1, func(m bus.Message) { got <- string(m.Payload) }); err != nil {
		t.Fatal(err)
	}
	if err := net.Publish(ctx, "t/v1/devices/new/presence", []byte("y"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, "t/v1/jobs/j", []byte("doc"), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "doc" {
			t.Errorf("network subscriber got %q", p)
		}
	case <-ctx.Done():
		t.Fatal("the inline publish never reached the network subscriber")
	}
	for live.Load() != 1 {
		if ctx.Err() != nil {
			t.Fatal("the network publish never reached the inline subscriber")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Messages published while an inline subscription's retained messages are
// handed over are never overtaken by the older retained copy of their
// topic: the last message the subscriber gets for every topic is the one
// the broker retains in the end.
func TestInlineSubscribeKeepsOrderWithLivePublishes(t *testing.T) {
	if raceDetector {
		t.Skip("subscribes while publishing retained messages: a data race inside mochi (see raceDetector)")
	}
	t.Parallel()
	b := startBroker(t, Config{AllowAnonymousLoopback: true})
	const n = 5000
	topic := func(i int) string { return fmt.Sprintf("t/v1/devices/d%05d/presence", i) }
	for i := range n {
		if err := b.InlinePublish(topic(i), []byte("offline"), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	last := map[string]string{}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			<-start
			for i := w; i < n; i += 4 {
				if err := b.InlinePublish(topic(i), []byte("online"), true, 1); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	close(start)
	err := b.InlineSubscribe("t/v1/devices/+/presence", func(topic string, payload []byte, _ bool) {
		mu.Lock()
		last[topic] = string(payload)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	stale := 0
	for i := range n {
		if last[topic(i)] != "online" {
			stale++
		}
	}
	if stale > 0 {
		t.Fatalf("%d of %d topics ended on their old retained value after the new one was delivered", stale, n)
	}
}
