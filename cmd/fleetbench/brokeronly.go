package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/protocol"
)

// serveBroker runs the embedded broker alone, as tether server configures
// it for anonymous clients but without the planner, until ctx ends. It is
// fleetbench's child process in -broker-impl broker-only, which measures
// what the broker costs per connected device apart from the planner.
func serveBroker(ctx context.Context, addr, dir string) error {
	topics, _ := protocol.NewTopics(protocol.DefaultRoot)
	log := zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, NoColor: true, TimeFormat: "15:04:05"}).
		Level(zerolog.WarnLevel).With().Timestamp().Str("part", "broker").Logger()
	b, err := broker.New(broker.Config{
		DataDir: dir, MQTTAddr: addr, AllowAnonymous: true, Log: log,
		Retainable: func(_ broker.Peer, topic string) bool { return topics.Retainable(topic) },
	})
	if err != nil {
		return err
	}
	if err := b.Start(); err != nil {
		_ = b.Close()
		return err
	}
	fmt.Printf("broker ready on %s\n", b.MQTTAddr())
	<-ctx.Done()
	return b.Close()
}

// startBrokerOnly starts fleetbench itself as the broker, and writes a
// planner key file the simulators can pin (nothing signs with it: without
// a planner no desired state is published).
func (b *bench) startBrokerOnly(ctx context.Context, addr string) error {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(b.dir, "server"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.dir, "server", "planner-key.pub"), []byte(protocol.EncodeKey(pub)+"\n"), 0o644); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	b.serverRuns++
	p, err := start("broker", filepath.Join(b.dir, fmt.Sprintf("server-%d.log", b.serverRuns)), self,
		"-serve-broker", addr, "-serve-broker-dir", filepath.Join(b.dir, "broker"))
	if err != nil {
		return err
	}
	b.server = p
	return p.waitLog(ctx, "broker ready", time.Minute)
}
