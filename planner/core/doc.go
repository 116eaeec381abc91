// Package core is the pure scheduling core of Tether's planner, modeled on
// HashiCorp Nomad's scheduler. It owns one function, Compute, which turns an
// immutable Snapshot (jobs, devices, current allocations) into a Plan (the
// complete set of allocations after the plan and how it differs from the
// snapshot). It does no I/O, starts no goroutines, never logs, reads no clock
// and uses no randomness that could show in its result: the same Snapshot
// always yields the same Plan. The shell (planner) owns MQTT, storage and
// time; it snapshots, calls Compute, persists the plan and publishes every
// device's desired document.
//
// # Flow
//
// Compute runs four passes over the jobs in job-id order, groups in
// document order, so that existing allocations reserve their resources
// before anything new is placed and bin packing stays stable:
//
//  1. Keep. Every existing allocation is matched to its job and group. It is
//     stopped when its job is stopped or gone, its group is gone, its index
//     is out of range (count lowered: the highest indices go), or its device
//     is gone or no longer feasible (the presence check excepted: allocations
//     on offline devices stay where they are). A batch or sysbatch
//     allocation reported complete at its version is kept whatever its
//     device has become. A current allocation is kept and reserves its
//     demand on its device unless it is terminal (reported complete or
//     failed at its version); one that no longer fits, or would break a
//     distinct_hosts or distinct_property constraint given the allocations
//     kept before it in slot order, is stopped. An allocation of an older
//     version (or whose type or tasks differ from the job's) becomes an
//     update candidate. When several allocations claim one slot (an index,
//     or a device for system and sysbatch groups) only one survives; see
//     judgeSlot.
//  2. Disconnect. The slots keepPass set aside because they hold a lost
//     allocation of a group that replaces, or an allocation with a Replaces
//     mark, are judged by judgeDisconnect (disconnect.go), after every other
//     existing allocation reserved its demand: lost allocations stay frozen,
//     and where a device came back, original and replacement are reconciled
//     by the group's strategy. A slot left to its lost allocation is free.
//  3. Update. Each update candidate gets the job's version, type and tasks,
//     same id, same device, if the new demand fits there and the distinct
//     constraints allow it (its old reservation was never taken); otherwise
//     it is stopped and its slot becomes free again. A new version re-runs a
//     complete batch or sysbatch allocation.
//  4. Place. Every free slot is placed: indices [0,count) of service and
//     batch groups on the best device (see ranker.go), a replacement naming
//     the lost allocation it replaces, and one allocation (index 0) of each
//     system and sysbatch group on every feasible device that has none yet
//     and room for it.
//
// Placing one slot is feasibility, then resources, then ranking:
//
//   - Feasibility is a chain of one-method checkers (checker), each giving a
//     reason when the device does not qualify, in this order: "no facts
//     yet", "offline", "lack driver X", then each constraint other than the
//     distinct ones, in document order ("constraint ${device.arch} =
//     arm64", "constraint ${device.cpu.cores} >= 4"), then "lack device X"
//     for a device resource the device does not report at all. These depend
//     only on the device and the group, so they run once per device and
//     group signature. Then the checks that depend on what is placed:
//     "distinct_hosts" (the device runs an instance of the group already)
//     and "distinct_property ${device.labels.site}" (the value has its share
//     of instances, or the device lacks the attribute). Constraint operators
//     are compiled once per group into predicates (feasible.go).
//   - Resources: the group's demand (the sum of its tasks' cpu MHz, memory
//     MB, disk MB and device resource units) must fit the device's capacity
//     (Facts.CPUMHz, Facts.MemoryMB, Device.DiskMB, Device.Resources) minus
//     what is already reserved, else "exhausted cpu", "exhausted memory",
//     "exhausted disk" or "exhausted device X", checked in that order. A
//     device is never over-committed.
//   - Ranking: the average of Nomad's best-fit bin packing score, the
//     affinity score and the spread score, as Nomad normalizes them; the
//     highest wins, ties go to the lowest device id. See rank.go.
//
// Slots that cannot be placed are counted in protocol.GroupStatus.Unplaced
// with a message aggregating every device's reason; see unplacedMessage for
// the exact format.
//
// # Speed
//
// Compute knows devices by their index in id order and keeps per-device
// state in slices. Static feasibility is memoized per device and group
// signature; existing allocations are sorted by slot with a counting sort;
// the plan's slices are sorted by device the same way. For service and batch
// groups the ranker keeps the feasible devices in heaps by score, split by
// spread values, so that a placement costs O(spread buckets + log devices)
// rather than a scan of every device; it is checked against such a scan by
// a property test. Allocation ids are checked for uniqueness through a
// sorted array of hashes. See bench_test.go for the numbers.
//
// # Disconnected and lost devices
//
// Time enters only through now and Device.OfflineSince, both by the
// server's clock. An allocation on a device that is not online is
// disconnected, then lost after its group's lost_after (protocol.Disconnect,
// after Nomad 1.8's disconnect block). A lost allocation stays in its
// device's desired state, so the device keeps running it (unless edged's
// stop_after stops it first); for service and batch groups that replace, it
// is frozen and no longer counted, and its index gets a replacement
// elsewhere, marked with Alloc.Replaces. When the device comes back, the
// group's reconcile strategy keeps one of the two. Plan.Lost and
// Plan.Disconnected list them; Plan.NextEval says when the next allocation
// becomes lost, so that the shell can plan again then without polling. See
// Compute for the rules.
//
// # Buckets
//
// Plan.Keep, Plan.Update, Plan.Stop and Plan.Place partition the outcome the
// way Nomad's reconciler does; Plan.Allocations is Keep + Update + Place.
// Every slice is sorted by device, then id. Feeding Plan.Allocations back as
// Snapshot.Allocations with unchanged jobs and devices, at the same now,
// yields a plan with nothing to place, update or stop, and the same
// allocations, Replaces marks included.
//
// # Limits of this version
//
// No rescheduling: failed allocations stay where they are, and allocations on
// offline devices are only replaced once lost (never moved). No preemption. Disk and device resources
// are reserved but not scored by bin packing (as in Nomad).
package core
