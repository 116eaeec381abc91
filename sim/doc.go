// Package sim is the fleet simulator: it runs many simulated devices in one
// process. Each device is the real edged agent (edged.RunDaemon) with its
// own MQTT connection, client id, persistent session and bbolt database in
// a data dir of its own, backed by the in-memory fake runtime instead of
// Podman (start latency, crash rate and exit codes configurable). Facts
// vary per device (architecture, memory, cores, site and model labels), so
// constraints and spreads have something to choose between.
//
// The simulator only observes: every agent reports what it does through
// edged.Config.Observe (connected, desired accepted, report confirmed by
// its echo, workload started, bytes sent and received) into a per-device
// record. From those records it prints a progress line every second, serves
// them as JSON on a small HTTP endpoint on loopback (so a benchmark driver
// can poll several simulator processes) and returns a Summary at the end.
//
// Limits: a process may hold 20,000 open files and each device holds two
// (its TCP connection and its bbolt file), so Run refuses more devices than
// the limit allows; spread larger fleets over several processes (First
// gives each its own range of ids).
package sim
