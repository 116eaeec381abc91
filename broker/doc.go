// Package broker owns Tether's embedded MQTT broker: a mochi-mqtt server
// with a TCP listener, an optional WebSocket listener for dashboards, who may
// connect (Authenticator), and what survives a restart.
//
// Persistence lives in one bbolt file, DataDir/broker.db, written by mochi's
// bolt storage hook with this package's fixes (see boltStore): retained
// messages, which carry every device's desired state, and persistent
// sessions (subscriptions and QoS 1 messages queued for offline clients).
// Every event is its own bbolt transaction, synced before mochi goes on.
//
// mochi's options are chosen in serverOptions; each says why. The main one:
// retained messages never expire, because desired state may legitimately be
// older than mochi's default 24 hours.
//
// The package knows nothing of Tether's topics or documents: the planner
// and devices are ordinary MQTT clients of it.
package broker
