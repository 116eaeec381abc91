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
// Trust: edged applies only desired documents addressed to it, newer than
// the one it applied, and signed by a planner key it trusts (the
// configured ones, and those it learned from its enrollment answer or from
// an endorsement chain by a trusted key, kept in edged.db). Anything else
// is refused: the stored document keeps running, and the reason goes into
// the report's error and a desired_refused event. AcceptUnsigned is the
// insecure way out. Enrollment (enroll.go) turns a fleet enrollment token
// into the device's own credentials, once.
//
// Health: an allocation whose desired entry carries a HealthPolicy (its
// group rolls out with an update block) is judged per job version, and
// the verdict is reported in AllocStatus.Health, with an alloc_healthy or
// alloc_unhealthy event when it is reached. The judgement of a version
// begins in the pass where edged begins applying it; it is healthy once
// every task runs and has run, without a restart, for min_healthy_time
// since the later of that moment and the task's start (a completed task
// of a run-to-completion type counts at once), and unhealthy if first a
// task fails, or restarts (its restart count rises above what it was when
// the judgement began, or another instance runs than the one seen), or
// healthy_deadline passes. A version bump that leaves the tasks running
// (an in-place update) is judged afresh from the bump. Verdicts are
// sticky until the job version changes. Only edged's own clock is used:
// its monotonic clock while it runs; across a restart, the wall-clock
// time the judgement began, stored with the verdicts in edged.db, and the
// runtime's start times (taken as the next whole second when the runtime
// reports whole seconds, so never early). The pure judge decides; the
// worker wakes itself when the earliest pending judgement can next be
// decided (min_healthy_time or the deadline elapsing), so there is no
// polling. While stop_after keeps an allocation stopped it is not judged,
// and the instance started when it resumes is not a restart; its
// deadline still runs.
//
// Concurrency: one worker goroutine owns reconciliation and the local
// state; MQTT handlers and driver watchers only wake it; one publisher
// goroutine sends reports and events so the worker never waits on the
// network.
package edged
