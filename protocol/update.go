package protocol

import (
	"errors"
	"time"
)

// Update is a group's update block: how a new version of the job reaches the
// group's existing allocations, after Nomad's update block. Without it every
// allocation is updated at once, as soon as the version is accepted.
//
// With it, a version is rolled out: allocations whose tasks change are
// updated at most MaxParallel at a time, each counted healthy once edged has
// seen every task of it running for MinHealthyTime, unhealthy when a task
// fails or restarts first or HealthyDeadline passes. Canary allocations go
// first and the rollout pauses until they are healthy and the version is
// promoted (by the operator, or by itself with AutoPromote). The rollout
// fails when Abort's threshold is crossed or no allocation becomes healthy
// within ProgressDeadline; a failed rollout updates nothing more, and with
// AutoRevert the planner returns the job to its last version whose rollout
// succeeded.
//
// Unlike Nomad's, canaries are existing allocations updated in place (so
// system jobs, one per device, have canaries too), and devices that are
// offline when the rollout reaches them do not stall it (Offline).
//
// Every field is optional; the methods of Group apply the defaults.
type Update struct {
	// MaxParallel is how many allocations of the group may be updating
	// (updated but not yet healthy) at once; 0 means 1.
	MaxParallel int `json:"max_parallel,omitempty"`
	// Canary is how many allocations are updated first, before the rest
	// waits for promotion; 0 means no canaries.
	Canary int `json:"canary,omitempty"`
	// AutoPromote promotes the version once every canary is healthy.
	AutoPromote bool `json:"auto_promote,omitempty"`
	// MinHealthyTime is how long every task of an updated allocation must
	// run before it counts as healthy; 0 means DefaultMinHealthyTime.
	MinHealthyTime Duration `json:"min_healthy_time,omitempty"`
	// HealthyDeadline is how long an updated allocation may take to become
	// healthy before it counts as unhealthy; 0 means DefaultHealthyDeadline.
	HealthyDeadline Duration `json:"healthy_deadline,omitempty"`
	// ProgressDeadline fails the rollout when no allocation became healthy
	// for that long while some were updating; 0 means
	// DefaultProgressDeadline.
	ProgressDeadline Duration `json:"progress_deadline,omitempty"`
	// AutoRevert returns the job to its last good version when the rollout
	// fails.
	AutoRevert bool `json:"auto_revert,omitempty"`
	// Offline says what the rollout does with an allocation whose device is
	// offline when its turn comes: OfflineSkip (the default) updates its
	// desired state at once, which the device applies when it returns, and
	// counts it as pending (offline) without waiting for it; OfflineWait
	// leaves it until the device is back, and the rollout waits for it.
	Offline string `json:"offline,omitempty"`
	// Abort halts the rollout once too many updated allocations are
	// unhealthy; nil means at the first unhealthy one.
	Abort *Abort `json:"abort,omitempty"`
}

// Abort is a rollout's failure threshold: the rollout fails once at least
// MinDevices allocations have been updated and more than FailureRatio of
// them are unhealthy.
type Abort struct {
	FailureRatio float64 `json:"failure_ratio"`
	MinDevices   int     `json:"min_devices,omitempty"`
}

// Values of Update.Offline.
const (
	OfflineSkip = "skip"
	OfflineWait = "wait"
)

// Update defaults.
const (
	DefaultMinHealthyTime   = 10 * time.Second
	DefaultHealthyDeadline  = 5 * time.Minute
	DefaultProgressDeadline = 10 * time.Minute
)

// UpdatePolicy is an update block with every default applied. It is what the
// core and edged work from.
type UpdatePolicy struct {
	MaxParallel      int
	Canary           int
	AutoPromote      bool
	MinHealthyTime   time.Duration
	HealthyDeadline  time.Duration
	ProgressDeadline time.Duration
	AutoRevert       bool
	OfflineWait      bool
	FailureRatio     float64
	MinDevices       int
}

// UpdatePolicy returns the group's update block with its defaults, and false
// when the group has none (every allocation is then updated at once).
func (g Group) UpdatePolicy() (UpdatePolicy, bool) {
	u := g.Update
	if u == nil {
		return UpdatePolicy{}, false
	}
	p := UpdatePolicy{
		MaxParallel:      max(u.MaxParallel, 1),
		Canary:           u.Canary,
		AutoPromote:      u.AutoPromote,
		MinHealthyTime:   DefaultMinHealthyTime,
		HealthyDeadline:  DefaultHealthyDeadline,
		ProgressDeadline: DefaultProgressDeadline,
		AutoRevert:       u.AutoRevert,
		OfflineWait:      u.Offline == OfflineWait,
	}
	if u.MinHealthyTime > 0 {
		p.MinHealthyTime = u.MinHealthyTime.Std()
	}
	if u.HealthyDeadline > 0 {
		p.HealthyDeadline = u.HealthyDeadline.Std()
	}
	if u.ProgressDeadline > 0 {
		p.ProgressDeadline = u.ProgressDeadline.Std()
	}
	if u.Abort != nil {
		p.FailureRatio = u.Abort.FailureRatio
		p.MinDevices = u.Abort.MinDevices
	}
	return p, true
}

// Aborts reports whether unhealthy allocations out of updated ones cross
// the policy's abort threshold.
func (p UpdatePolicy) Aborts(unhealthy, updated int) bool {
	if unhealthy == 0 || updated < p.MinDevices {
		return false
	}
	return float64(unhealthy) > p.FailureRatio*float64(updated)
}

// validateUpdate checks a group's update block at path up.
func validateUpdate(up string, u Update, t JobType, g Group) []error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	if t.RunsToCompletion() {
		add(up, "not used by %s jobs, whose allocations run to completion; update blocks apply to service and system jobs", t)
		return errs
	}
	if u.MaxParallel < 0 {
		add(up+".max_parallel", "want 1 or more, got %d", u.MaxParallel)
	}
	if u.Canary < 0 {
		add(up+".canary", "want 0 or more, got %d", u.Canary)
	} else if t == JobService && u.Canary > g.Instances() {
		add(up+".canary", "want at most the group's count (%d), got %d", g.Instances(), u.Canary)
	}
	if u.AutoPromote && u.Canary == 0 {
		add(up+".auto_promote", "needs canary > 0: without canaries there is nothing to promote")
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"min_healthy_time", u.MinHealthyTime}, {"healthy_deadline", u.HealthyDeadline}, {"progress_deadline", u.ProgressDeadline}} {
		if d.v < 0 {
			add(up+"."+d.name, "want a positive duration, got %s", d.v.Std())
		}
	}
	pol, _ := g.UpdatePolicy()
	if u.MinHealthyTime >= 0 && u.HealthyDeadline >= 0 && pol.HealthyDeadline <= pol.MinHealthyTime {
		add(up+".healthy_deadline", "want longer than min_healthy_time (%s), got %s", pol.MinHealthyTime, pol.HealthyDeadline)
	}
	if u.HealthyDeadline >= 0 && u.ProgressDeadline >= 0 && pol.ProgressDeadline < pol.HealthyDeadline {
		add(up+".progress_deadline", "want at least healthy_deadline (%s), got %s", pol.HealthyDeadline, pol.ProgressDeadline)
	}
	switch u.Offline {
	case "", OfflineSkip, OfflineWait:
	default:
		add(up+".offline", "unknown value %q, want skip or wait", u.Offline)
	}
	if a := u.Abort; a != nil {
		if a.FailureRatio < 0 || a.FailureRatio >= 1 {
			add(up+".abort.failure_ratio", "want at least 0 and below 1, got %v", a.FailureRatio)
		}
		if a.MinDevices < 0 {
			add(up+".abort.min_devices", "want 0 or more, got %d", a.MinDevices)
		}
	}
	return errs
}

// HealthPolicy tells edged how to judge an allocation's health: healthy once
// every task has been running for MinHealthyTime, unhealthy if a task fails
// or restarts first, or HealthyDeadline passes. It travels in the desired
// document with allocations of groups that have an update block.
type HealthPolicy struct {
	MinHealthyTime  Duration `json:"min_healthy_time"`
	HealthyDeadline Duration `json:"healthy_deadline"`
}

// Health is an allocation's health as edged judges it.
type Health string

// Health values; "" means not judged (yet, or no policy).
const (
	Healthy   Health = "healthy"
	Unhealthy Health = "unhealthy"
)

// RolloutState is the state of the rollout of a job version.
type RolloutState string

// Rollout states.
const (
	RolloutRunning    RolloutState = "running"    // updating allocations
	RolloutPaused     RolloutState = "paused"     // canaries placed: waiting for promotion
	RolloutSuccessful RolloutState = "successful" // every allocation updated and healthy
	RolloutFailed     RolloutState = "failed"     // halted: abort threshold or progress deadline
)

// Rollout is the progress of a job version through the fleet, carried in the
// job status so that a dashboard can draw it.
type Rollout struct {
	Version uint64       `json:"version"`
	State   RolloutState `json:"state"`
	// Description says why the rollout is in its state, in words.
	Description string    `json:"description,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	// ProgressAt is when an allocation last became healthy (StartedAt
	// until then); the progress deadline counts from it.
	ProgressAt time.Time      `json:"progress_at"`
	Groups     []RolloutGroup `json:"groups"`
	// RevertedTo is the version the planner returned the job to after
	// this rollout failed (auto_revert), 0 if none.
	RevertedTo uint64 `json:"reverted_to,omitempty"`
}

// RolloutGroup is the progress of one group with an update block.
type RolloutGroup struct {
	Name string `json:"name"`
	// Total is how many allocations the version must reach.
	Total int `json:"total"`
	// Canaries is how many canaries the group wants; Promoted says whether
	// the version was promoted past them.
	Canaries int  `json:"canaries,omitempty"`
	Promoted bool `json:"promoted,omitempty"`
	// Updated counts the allocations running the version's tasks (placed
	// or updated); Healthy and Unhealthy those of them edged judged so.
	Updated   int `json:"updated"`
	Healthy   int `json:"healthy"`
	Unhealthy int `json:"unhealthy"`
	// PendingOffline counts the allocations among Updated whose device is
	// offline and whose health is undecided: the device applies the
	// version when it returns.
	PendingOffline int `json:"pending_offline"`
}

// Done reports whether the rollout reached a final state.
func (r Rollout) Done() bool {
	return r.State == RolloutSuccessful || r.State == RolloutFailed
}

// Promote is an operator's request to promote a paused rollout past its
// canaries, published to {root}/v1/jobs/{job}/promote (not retained).
// Version must be the version being rolled out, so that a late request does
// not promote a newer version nobody looked at.
type Promote struct {
	Job     string `json:"job"`
	Version uint64 `json:"version"`
}

// DecodePromote reads and validates a promote request.
func DecodePromote(data []byte) (Promote, error) {
	var p Promote
	if err := decodeStrict(data, &p); err != nil {
		return Promote{}, err
	}
	var errs []error
	if err := ValidateID(p.Job); err != nil {
		errs = append(errs, fieldErr("job", "%v", err))
	}
	if p.Version == 0 {
		errs = append(errs, fieldErr("version", "required: the version being rolled out"))
	}
	if err := errors.Join(errs...); err != nil {
		return Promote{}, err
	}
	return p, nil
}

// Scheduling is an operator's say on a device, published retained to
// {root}/v1/devices/{device}/scheduling; an empty payload means the
// defaults (eligible, not draining). An ineligible device gets no new
// allocation but keeps what it runs; a draining one is ineligible and its
// service allocations move to other devices, max_parallel at a time per
// group.
type Scheduling struct {
	Device string `json:"device"`
	// Eligible false makes the device ineligible; omitted means eligible
	// unless Drain is set.
	Eligible *bool `json:"eligible,omitempty"`
	Drain    bool  `json:"drain,omitempty"`
}

// IsEligible reports whether the device takes new allocations.
func (s Scheduling) IsEligible() bool {
	return !s.Drain && (s.Eligible == nil || *s.Eligible)
}

// DecodeScheduling reads and validates a device's scheduling message.
func DecodeScheduling(data []byte) (Scheduling, error) {
	var s Scheduling
	if err := decodeStrict(data, &s); err != nil {
		return Scheduling{}, err
	}
	var errs []error
	if err := ValidateID(s.Device); err != nil {
		errs = append(errs, fieldErr("device", "%v", err))
	}
	if s.Drain && s.Eligible != nil && *s.Eligible {
		errs = append(errs, fieldErr("eligible", "must be false while drain is true: a draining device takes no new allocation"))
	}
	if err := errors.Join(errs...); err != nil {
		return Scheduling{}, err
	}
	return s, nil
}

// JobHistory is the planner's record of a job's versions, newest first, at
// most MaxHistory of them, published retained to {root}/v1/jobs/{job}/history.
// It is what `tether job history` shows and `tether job revert` republishes
// from.
type JobHistory struct {
	Job      string            `json:"job"`
	Versions []JobVersionEntry `json:"versions"`
}

// MaxHistory is how many versions a job history keeps.
const MaxHistory = 20

// JobVersionEntry is one accepted version of a job.
type JobVersionEntry struct {
	Version     uint64    `json:"version"`
	SubmittedAt time.Time `json:"submitted_at"`
	Digest      string    `json:"digest"`
	// Stable is set once a rollout of this version succeeded (or, for a
	// job without update blocks, once every allocation ran it).
	Stable bool `json:"stable,omitempty"`
	// Rollout is the last state of this version's rollout, if it had one.
	Rollout *Rollout `json:"rollout,omitempty"`
	Job     Job      `json:"job"`
}

// DecodeJobHistory reads a job history.
func DecodeJobHistory(data []byte) (JobHistory, error) {
	var h JobHistory
	if err := decodeStrict(data, &h); err != nil {
		return JobHistory{}, err
	}
	if err := ValidateID(h.Job); err != nil {
		return JobHistory{}, fieldErr("job", "%v", err)
	}
	return h, nil
}

// PlanResult is the planner's answer to a dry run (`tether job plan`): what
// submitting the document would do, computed against the fleet as it is,
// changing nothing.
type PlanResult struct {
	// Job is the document's job id; "" only when the document has none
	// that is valid (Errors says so).
	Job string `json:"job,omitempty"`
	// Errors lists every problem of the document; nothing else is set
	// when there are any.
	Errors []FieldError `json:"errors,omitempty"`
	// Version is the version the document would become, Unchanged is set
	// when it equals the version in force.
	Version   uint64 `json:"version,omitempty"`
	Unchanged bool   `json:"unchanged,omitempty"`
	// The buckets, each sorted by device then id: new allocations, in-place
	// updates (same tasks, new version), destructive updates (tasks
	// change: the workload restarts), stops, and updates the rollout holds
	// back for now (max_parallel, canaries, offline: wait).
	Place       []PlannedAlloc `json:"place,omitempty"`
	InPlace     []PlannedAlloc `json:"in_place,omitempty"`
	Destructive []PlannedAlloc `json:"destructive,omitempty"`
	Stop        []PlannedAlloc `json:"stop,omitempty"`
	Deferred    []PlannedAlloc `json:"deferred,omitempty"`
	Groups      []GroupStatus  `json:"groups,omitempty"`
}

// PlannedAlloc is one allocation in a dry run.
type PlannedAlloc struct {
	ID     string `json:"id"`
	Group  string `json:"group"`
	Device string `json:"device"`
	// Reason says why, for stops and deferred updates.
	Reason string `json:"reason,omitempty"`
}

// DecodePlanResult reads a dry run's answer.
func DecodePlanResult(data []byte) (PlanResult, error) {
	var r PlanResult
	if err := decodeStrict(data, &r); err != nil {
		return PlanResult{}, err
	}
	if r.Job == "" && len(r.Errors) > 0 {
		return r, nil
	}
	if err := ValidateID(r.Job); err != nil {
		return PlanResult{}, fieldErr("job", "%v", err)
	}
	return r, nil
}
