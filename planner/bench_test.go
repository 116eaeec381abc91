package planner

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/planner/core"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
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
	st, err := store.Open(filepath.Join(b.TempDir(), "planner.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })

	now := time.Now()
	changes := map[string][]func(*store.DeviceRecord){}
	for i := 0; i < devices; i++ {
		id := fmt.Sprintf("dev-%05d", i)
		changes[id] = append(changes[id], func(d *store.DeviceRecord) {
			d.Facts = &protocol.Facts{Device: id, Arch: "arm64", OS: "linux", CPUCores: 4, CPUMHz: 1500, MemoryMB: 2048, Drivers: []string{"exec", "podman"}}
			d.Presence = &protocol.Presence{Device: id, Status: protocol.Online, Since: &now}
			d.PresenceChangedAt = now
		})
	}
	if err := st.UpdateDevices(changes); err != nil {
		b.Fatal(err)
	}
	job, err := protocol.ParseJob([]byte(`{"id":"agent","type":"system","groups":[{"name":"a","tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]},"resources":{"cpu":100,"memory":64}}]}]}`))
	if err != nil {
		b.Fatal(err)
	}
	p := New(Config{Bus: client, Store: st, Log: zerolog.Nop()})
	snap, _, _, err := p.snapshot()
	if err != nil {
		b.Fatal(err)
	}
	running := snap
	running.Jobs = []core.Job{{Job: job, Version: 1}}
	runPlan := core.Compute(running, now)
	if len(runPlan.Allocations) != devices {
		b.Fatalf("the system job placed %d allocations on %d devices", len(runPlan.Allocations), devices)
	}
	stopped := snap
	stopped.Jobs = []core.Job{{Job: job, Version: 1, Stopped: true}}
	stopPlan := core.Plan{}

	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		records, err := st.Devices()
		if err != nil {
			b.Fatal(err)
		}
		s, plan := running, runPlan
		if i%2 == 1 {
			s, plan = stopped, stopPlan
		}
		b.StartTimer()
		if err := p.publishDesired(ctx, s, records, plan, now); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Every device holds the last pass's generation, acknowledged.
	records, err := st.Devices()
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range records {
		if r.Generation() != uint64(b.N) || !r.Published {
			b.Fatalf("device %s: generation %d published %v after %d passes", r.ID, r.Generation(), r.Published, b.N)
		}
	}
}
