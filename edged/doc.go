// Package edged is the edge daemon. It connects to the broker with the
// device id as client id and a persistent session, subscribes to its own
// desired topic with QoS 1, keeps the last desired document in its own bbolt
// file, and runs a level-triggered reconciler: desired-state messages,
// driver events, restart timers and a periodic resync only wake the worker,
// which compares the stored desired document with what the drivers report
// (workloads found by their labels, never by memory) and closes the gap.
// It publishes presence (birth and last will), facts, observed state and
// task events.
//
// Concurrency: one worker goroutine owns reconciliation and the local
// state; MQTT handlers and driver watchers only wake it; one publisher
// goroutine sends reports and events so the worker never waits on the
// network.
package edged
