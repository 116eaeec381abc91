// Package core is the pure scheduling core of Tether's planner, modeled on
// HashiCorp Nomad's scheduler. It owns one function, Compute, which turns an
// immutable Snapshot (jobs, devices, current allocations) into a Plan (the
// complete set of allocations after the plan and how it differs from the
// snapshot). It does no I/O, starts no goroutines, never logs, reads no clock
// and uses no randomness: the same Snapshot always yields the same Plan. The
// shell (planner) owns MQTT, storage and time; it snapshots, calls Compute,
// persists the plan and publishes every device's desired document.
//
// # Flow
//
// Compute runs three passes over the jobs in job-id order, groups in
// document order, so that existing allocations reserve their resources
// before anything new is placed and bin packing stays stable:
//
//  1. Keep. Every existing allocation is matched to its job and group. It is
//     stopped when its job is stopped or gone, its group is gone, its index
//     is out of range (count lowered: the highest indices go), or its device
//     is gone or no longer feasible (the presence check excepted: allocations
//     on offline devices stay where they are). A batch allocation reported
//     complete at its version is kept whatever its device has become. A
//     current allocation is kept and reserves its demand on its device
//     unless it is terminal (reported complete or failed at its version); one
//     that no longer fits is stopped. An allocation of an older version (or
//     whose type or tasks differ from the job's) becomes an update candidate.
//     When several allocations claim one slot (an index, or a device for
//     system groups) only one survives; see judgeSlot.
//  2. Update. Each update candidate gets the job's version, type and tasks,
//     same id, same device, if the new demand fits there (its old
//     reservation was never taken); otherwise it is stopped and its slot
//     becomes free again. A new version re-runs a complete batch allocation.
//  3. Place. Every free slot is placed: indices [0,count) of service and
//     batch groups on the best device, and one allocation (index 0) of each
//     system group on every feasible device that has none yet.
//
// Placing one slot is feasibility, then resources, then ranking:
//
//   - Feasibility is a chain of one-method checkers (checker), each giving a
//     reason when the device does not qualify, in this order: "no facts yet",
//     "offline", "lack driver X", then each constraint ("constraint
//     ${device.arch} = arm64"). The first failing check is the device's
//     reason. See feasible.go.
//   - Resources: the group's demand (the sum of its tasks' cpu MHz and memory
//     MB) must fit the device's capacity (Facts.CPUMHz, Facts.MemoryMB) minus
//     what is already reserved, else "exhausted cpu" (checked first) or
//     "exhausted memory". A device is never over-committed.
//   - Ranking: Nomad's best-fit bin packing score over the utilization after
//     placement; the highest score wins, ties go to the lowest device id. See
//     rank.go.
//
// Slots that cannot be placed are counted in protocol.GroupStatus.Unplaced
// with a message aggregating every device's reason; see unplacedMessage for
// the exact format.
//
// # Buckets
//
// Plan.Keep, Plan.Update, Plan.Stop and Plan.Place partition the outcome the
// way Nomad's reconciler does; Plan.Allocations is Keep + Update + Place.
// Every slice is sorted by device, then id. Feeding Plan.Allocations back as
// Snapshot.Allocations with unchanged jobs and devices yields a plan with
// nothing to place, update or stop.
//
// # Limits of this version
//
// No rescheduling: failed allocations stay where they are, and allocations on
// offline devices are never moved. No spread or anti-affinity: instances of
// one group pack onto the fullest device that fits.
package core
