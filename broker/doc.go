// Package broker owns Tether's embedded MQTT broker: a mochi-mqtt server
// with a TCP listener, an optional WebSocket listener for dashboards, who may
// connect (Authenticator), and what survives a restart.
//
// Persistence lives in one bbolt file, DataDir/broker.db, in the format of
// mochi's bolt storage hook (see boltStore): retained messages, which carry
// every device's desired state, and persistent sessions (subscriptions and
// QoS 1 messages queued for offline clients). Every event is on disk before
// mochi goes on; events that happen at once share one transaction and one
// fsync (group commit, see committer).
//
// Retained state reaches network subscribers at their own pace: the
// retained messages of a wildcard subscription are written by this package
// rather than queued by mochi, which would drop what its per-client queue
// cannot hold, and state messages dropped for a slow subscriber's full
// queue are written again as they are now (see retainedHook). The planner
// is the broker's inline client and reads through no queue at all.
//
// mochi's options are chosen in serverOptions; each says why. The main one:
// retained messages never expire, because desired state may legitimately be
// older than mochi's default 24 hours.
//
// The package knows nothing of Tether's topics or documents: the planner
// and devices are ordinary MQTT clients of it.
package broker
