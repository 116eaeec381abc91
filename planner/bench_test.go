package planner

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
)

// BenchmarkPublishDesired measures one pass of publishDesired in which
// every device's desired document changes, as when a system job is
// submitted or stopped on a whole fleet: the real bbolt store and the real
// embedded broker, through the inline client the server's planner uses.
// Each iteration alternates between the job running and stopped, so each
// one writes and publishes a new generation for every device. With the
// broker persisting to disk as the server's does, and without persistence,
// which shows what the planner's own part costs.
func BenchmarkPublishDesired(b *testing.B) {
	b.Run("broker=disk", func(b *testing.B) { benchPublishDesired(b, b.TempDir()) })
	b.Run("broker=memory", func(b *testing.B) { benchPublishDesired(b, "") })
}

func benchPublishDesired(b *testing.B, brokerDir string) {
	const devices = 2000
	brk, err := broker.New(broker.Config{DataDir: brokerDir, MQTTAddr: "127.0.0.1:0", AllowAnonymousLoopback: true, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	if err := brk.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { brk.Close() })
	client := bus.NewInline(brk)
	b.Cleanup(client.Close)
	f := newFleet(b, devices)
	p := New(Config{Bus: client, Store: f.store, Log: zerolog.Nop()})

	ctx := context.Background()
	now := time.Now()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		records, err := f.store.Devices()
		if err != nil {
			b.Fatal(err)
		}
		s, plan := f.running, f.runPlan
		if i%2 == 1 {
			s, plan = f.stopped, f.stopPlan
		}
		b.StartTimer()
		if err := p.publishDesired(ctx, s, records, plan, now); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Every device holds the last pass's generation, acknowledged.
	records, err := f.store.Devices()
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range records {
		if r.Generation() != uint64(b.N) || !r.Published {
			b.Fatalf("device %s: generation %d published %v after %d passes", r.ID, r.Generation(), r.Published, b.N)
		}
	}
}

// BenchmarkDeviceIndexUnchanged measures what the device index adds to
// every pass of an 18,000-device fleet when no page changed: every entry is
// built, encoded and hashed, and nothing is published.
func BenchmarkDeviceIndexUnchanged(b *testing.B) {
	const devices = 18000
	f := newFleet(b, devices)
	records, err := f.store.Devices()
	if err != nil {
		b.Fatal(err)
	}
	p := New(Config{Bus: &indexBus{}, Store: f.store, Log: zerolog.Nop()})
	ctx := context.Background()
	if err := p.publishDeviceIndex(ctx, records, time.Now()); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := p.publishDeviceIndex(ctx, records, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}
