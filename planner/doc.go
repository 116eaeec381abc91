// Package planner is the shell around the scheduling core (planner/core).
// It subscribes to job documents and to every device's facts, presence and
// reports, records them in the store, asks core.Compute for a plan, persists
// it, and publishes what changed: one retained desired document per device,
// with a strictly increasing generation, and one retained status per job.
//
// The planner talks to MQTT only through the Bus interface, so it runs the
// same against the embedded broker and an external one.
//
// Concurrency: Run owns one goroutine that does all the work, but for
// signing and publishing desired documents, which a bounded pool of
// goroutines does in parallel; only Run's goroutine uses the store. Bus
// handlers only enqueue.
package planner
