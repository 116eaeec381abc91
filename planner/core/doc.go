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
// Compute runs its passes over the jobs in job-id order, groups in
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
//     judgeSlot. Ineligible and draining devices keep their allocations
//     here (see Drain). A failed allocation whose group reschedules is
//     not kept once its delay has passed: its slot is left free (see
//     Rescheduling).
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
//     complete batch or sysbatch allocation. In a group with an update block
//     a destructive update (the tasks or type change) is not made here: the
//     allocation is held at its own demand, as if kept, for the rollout.
//  4. Drain. Allocations of service and batch groups on draining devices
//     are stopped, max_parallel at a time, and their slots freed (drain.go).
//  5. Rollout. For each job, gateJob picks the held allocations its
//     groups' rollouts let through now; applyUpdates updates them as step 3
//     does (one that does not fit its device stops and its slot is freed).
//     The others stay as they are, in Plan.Deferred (rollout.go).
//  6. Place. Every free slot is placed: indices [0,count) of service and
//     batch groups on the best device (see ranker.go), a replacement naming
//     the lost allocation it replaces, a rescheduled slot on the best
//     device but the failed allocation's own, and one allocation (index 0) of each
//     system and sysbatch group on every feasible device that has none yet
//     and room for it.
//  7. Rollout state. finishRollout computes every rollout (Plan.Rollouts)
//     from the allocations of the plan.
//
// Placing one slot is feasibility, then resources, then ranking:
//
//   - Feasibility is a chain of one-method checkers (checker), each giving a
//     reason when the device does not qualify, in this order: "no facts
//     yet", "offline", "ineligible" (Device.Ineligible or Draining), "lack
//     driver X", then each constraint other than the distinct ones, in
//     document order ("constraint ${device.arch} = arm64", "constraint
//     ${device.cpu.cores} >= 4"), then "lack device X" for a device resource
//     the device does not report at all. These depend only on the device and
//     the group (presence and eligibility are cheap), so the others run once
//     per device and group signature. Then the checks that depend on what is placed:
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
// # Rollouts
//
// A group of a service or system job with an update block
// (protocol.Update; Compute ignores one on batch and sysbatch groups, which
// validation refuses) rolls new versions out, after Nomad's update block,
// with health from edged: an allocation's health is
// Device.Reported[id].Health when the report is about the allocation's
// version (reported failed without a verdict counts as unhealthy), else
// undecided. An allocation is in flight while it runs the job's version on
// an online device and its health is undecided. The rules, per group:
//
//   - New slots (initial placement, a raised count, replacements of lost
//     allocations, drain moves) are placed at once at the job's version,
//     and in-place updates (only the version changes: the tasks and type
//     are the job's, edged restarts nothing) are made at once: never gated.
//   - A destructive update (the tasks or type change) is gated. budget =
//     max_parallel − in flight − missing instances (free slots of a service
//     group, feasible devices without a system group's allocation: they will
//     be placed, in this plan or when room appears), never below 0. The
//     held allocations are taken in device, then id order: each on an
//     online device takes one unit of budget, and waits ("max_parallel 2:
//     2 updating") when none is left.
//   - Canaries. While the version is not promoted for the group
//     (RolloutGroup.Promoted in Job.Rollout) and the group wants canaries,
//     at most Canary of its instances (no more than it has) may run the
//     job's version, placements and missing instances included (a plan
//     cannot tell afterwards how an allocation came to the version);
//     canaries go to online devices only, the rest waits ("awaiting
//     promotion: 2 canaries"). A group wants canaries when the first plan
//     of the version found allocations to update destructively
//     (RolloutGroup.Canaries carries it from plan to plan; an initial
//     placement has none). Once they are all there and healthy,
//     auto_promote promotes the group and the rollout goes on in the same
//     plan; otherwise the rollout pauses until the operator promotes (the
//     shell sets Promoted).
//   - Offline devices. With offline: skip (the default), once past the
//     canaries, an allocation on an offline device is updated at once
//     without taking budget: the device applies it when it returns; it is
//     counted in RolloutGroup.PendingOffline until the device reports its
//     health. With offline: wait it waits ("device offline (offline:
//     wait)") until the device is online, then takes budget like any other.
//   - An update whose new demand does not fit its device stops the
//     allocation (taking its unit of budget) and its slot is placed again,
//     counted missing until it is; except where nothing could be placed
//     again (a system group's device that is offline or ineligible, or an
//     offline device once the budget is spent): it stays as it is. An
//     allocation the snapshot over-commits (it does not fit as it is) is
//     updated at once when the new demand fits, as without an update block.
//     Allocations of a service group on a draining device are not updated:
//     the drain moves them.
//   - Everything not updated stays as it is: old version and tasks, in
//     Plan.Allocations (Keep), its demand reserved, listed in Plan.Deferred.
//
// Plan.Rollouts has the rollout of every job that is not stopped and has a
// group with an update block, groups in document order:
//
//   - StartedAt and ProgressAt come from Job.Rollout when it is of the
//     job's version, else now. ProgressAt moves to now when the job's
//     healthy allocations grew since Job.Rollout, and while none is in
//     flight (the deadline only runs while allocations update, so a rollout
//     that waited for an offline device or a promotion gets all of it).
//   - Total is GroupStatus.Desired; Updated counts the allocations running
//     the job's version (but lost ones frozen for the disconnect policy),
//     Healthy and Unhealthy those with that verdict, PendingOffline the
//     undecided ones on devices that are not online (offline: skip only).
//   - Failed, for good for the version, when a group's abort threshold is
//     crossed (protocol.UpdatePolicy.Aborts: "3 of 20 updated allocations
//     unhealthy (abort above 10%)") or allocations are in flight at
//     ProgressAt + progress_deadline ("no allocation became healthy within
//     progress_deadline 10m0s"). A failed rollout updates nothing
//     destructively; in-place updates and placements go on. Auto_revert is
//     the shell's.
//   - Successful, for good too, once no group has an allocation left at an
//     older version and every allocation at the version is healthy, but
//     those pending on offline devices (offline: skip).
//   - Paused while a group awaits promotion, else running; Description says
//     why.
//
// Plan.NextEval includes ProgressAt + progress_deadline while a rollout is
// running with allocations in flight, so that the shell plans again for
// the deadline without polling.
//
// # Drain
//
// An ineligible or draining device gets no new allocation; what it runs
// stays, except that a draining device sheds its service and batch
// allocations: each is stopped and its slot placed elsewhere. Without an
// update block a group's go all at once; with one, at most max_parallel
// minus the group's instances that are not ready: allocations at the job's
// version on an online device with undecided health, and missing
// instances. Moving an allocation that is not ready itself is free; the
// others go in device, then id order. System and sysbatch allocations stay
// on a draining device (they run on every device; Nomad drains them last,
// here the operator removes the device), and so does a batch allocation
// reported complete. Allocations of a disconnect slot (lost, or replacing a
// lost one) are left to the disconnect policy.
//
// # Rescheduling
//
// After Nomad's reschedule block (protocol.Reschedule; see
// protocol.Group.ReschedulePolicy for the defaults: service groups
// reschedule without limit, 30s delay doubling to 1h; batch groups only
// with a block; system and sysbatch groups never). An allocation of a group
// that reschedules, running the job's spec and reported failed at its
// version, failed at failedAt: the latest task FinishedAt of the report
// (the shell shifts task times onto the server's clock), else
// Device.ReportedAt. Alloc.Reschedules is the slot's history (when earlier
// allocations of the slot were rescheduled, oldest first). The allocation
// may be rescheduled from failedAt + DelayAfter(len(Reschedules)) on, and,
// unless the policy is unlimited, once fewer than Attempts of the history
// lie within Interval of now (rescheduleAt). Then:
//
//   - It is stopped and its index placed again at the job's version, with
//     Reschedules = the history + now, on the best feasible device with
//     room other than its own; on its own device only when no other can
//     take it; and when none can, it stays as it is (failed) and a later
//     plan tries again. A placement never takes an id its device still
//     reports, so the old allocation's report cannot pass for the new one's.
//   - Before that time it stays (failed, reserving nothing), and
//     Plan.NextEval includes the time. With the attempts used up the time
//     is when the oldest counted attempt leaves the interval: as it is
//     level-triggered, the planner reschedules then.
//   - Rollouts: a failed allocation in a group with an update block counts
//     as unhealthy for the rollout while its delay runs, as before; then it
//     is rescheduled like any other (its replacement is a new slot, never
//     gated), unless the rollout of the version failed (Job.Rollout): then
//     it stays, for the operator or auto_revert. Its time still counts for
//     NextEval (Job.Rollout may change between plans; the time may not).
//   - Disconnect: a failed allocation is never lost or away; when it wins a
//     slot of the disconnect policy and nothing else is left there, it is
//     rescheduled as above.
//   - Updates (a new version) re-run a failed allocation in place, keeping
//     its history; a drain moves it without its history.
//
// # Buckets
//
// Plan.Keep, Plan.Update, Plan.Stop and Plan.Place partition the outcome the
// way Nomad's reconciler does; Plan.Allocations is Keep + Update + Place.
// Every slice is sorted by device, then id. Feeding Plan.Allocations back as
// Snapshot.Allocations with unchanged jobs and devices, at the same now,
// yields a plan with nothing to place, update or stop, and the same
// allocations, Replaces marks included; with the plan's rollouts passed
// back as Job.Rollout, also the same rollouts and deferred updates.
//
// # Limits of this version
//
// Allocations on offline devices are only replaced once lost (never moved);
// failed ones are rescheduled (see Rescheduling). No preemption. Disk and device resources
// are reserved but not scored by bin packing (as in Nomad).
package core
