package bus

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/internal/pki"
)

func startBroker(t *testing.T) string {
	t.Helper()
	b, err := broker.New(broker.Config{MQTTAddr: "127.0.0.1:0", AllowAnonymousLoopback: true, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return "mqtt://" + b.MQTTAddr()
}

func dial(t *testing.T, url string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, Config{Brokers: []string{url}, CleanSession: true, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestSubscribeWhileRetainedInFlight subscribes to many filters one after the
// other while the broker is still delivering QoS 1 retained messages of the
// first: the packet ids collide on mochi's side, and every subscription must
// still exist in the end (each filter's retained message arrives).
func TestSubscribeWhileRetainedInFlight(t *testing.T) {
	url := startBroker(t)
	pub := dial(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 200; i++ {
		if err := pub.Publish(ctx, fmt.Sprintf("t/bulk/%d", i), []byte("x"), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	const filters = 20
	for i := 0; i < filters; i++ {
		if err := pub.Publish(ctx, fmt.Sprintf("t/f%d/x", i), []byte("y"), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	sub := dial(t, url)
	var mu sync.Mutex
	got := map[string]bool{}
	h := func(m Message) {
		mu.Lock()
		got[m.Topic] = true
		mu.Unlock()
	}
	if err := sub.Subscribe(ctx, "t/bulk/+", 1, h); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < filters; i++ {
		if err := sub.Subscribe(ctx, fmt.Sprintf("t/f%d/+", i), 1, h); err != nil {
			t.Fatalf("filter %d: %v", i, err)
		}
	}
	if err := sub.Barrier(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 0; i < filters; i++ {
		if !got[fmt.Sprintf("t/f%d/x", i)] {
			t.Errorf("retained message of filter %d never arrived: its subscription was lost", i)
		}
	}
	if len(got) != 200+filters {
		t.Errorf("got %d distinct retained messages, want %d", len(got), 200+filters)
	}
}

func TestNormalizeURL(t *testing.T) {
	good := map[string]string{
		"mqtt://127.0.0.1:1883": "tcp://127.0.0.1:1883",
		"127.0.0.1:1883":        "tcp://127.0.0.1:1883",
		"mqtts://h:8883":        "ssl://h:8883",
		"ws://h:1884/mqtt":      "ws://h:1884/mqtt",
	}
	for in, want := range good {
		if got, err := NormalizeURL(in); err != nil || got != want {
			t.Errorf("NormalizeURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"http://h:1", "mqtt://", "ftp://h:21"} {
		if _, err := NormalizeURL(in); err == nil {
			t.Errorf("NormalizeURL(%q) accepted", in)
		}
	}
}

// TestDialTLS connects over mqtts:// to a broker whose certificate only the
// given CA vouches for, and checks that TLS is really in use: without that
// CA the connection fails, and TLS settings for a plaintext URL are refused.
func TestDialTLS(t *testing.T) {
	files, err := pki.Init(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	serverTLS, err := pki.ServerConfig(files.ServerCert, files.ServerKey, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err := broker.New(broker.Config{MQTTAddr: "127.0.0.1:0", TLS: serverTLS, AllowAnonymousLoopback: true, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	clientTLS, err := pki.ClientConfig(files.CACert, "", "")
	if err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, Config{Brokers: []string{"mqtts://" + b.MQTTAddr()}, TLS: clientTLS, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	got := make(chan Message, 1)
	if err := c.Subscribe(ctx, "t/tls", 1, func(m Message) { got <- m }); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, "t/tls", []byte("secret"), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if string(m.Payload) != "secret" {
			t.Fatalf("got %q", m.Payload)
		}
	case <-ctx.Done():
		t.Fatal("message never arrived")
	}

	short, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c, err := Dial(short, Config{Brokers: []string{"mqtts://" + b.MQTTAddr()}, Log: log}); err == nil {
		c.Close()
		t.Error("connected over TLS without trusting the broker's CA")
	}
	_, err = Dial(ctx, Config{Brokers: []string{"mqtt://" + b.MQTTAddr()}, TLS: clientTLS, Log: log})
	if err == nil || !strings.Contains(err.Error(), "no broker URL uses TLS") {
		t.Errorf("TLS settings with a plaintext URL: %v, want a refusal", err)
	}
}
