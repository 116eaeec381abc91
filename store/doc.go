// Package store is the planner's database: every accepted version of every
// job, what is known of each device (facts, presence, last report, the last
// desired document published to it), and the current allocations. It is a
// single bbolt file with a recorded schema version; a planner restart reads
// everything back from it.
//
// All methods are safe for concurrent use; each runs in its own bbolt
// transaction.
package store
