package core

import (
	"time"

	"github.com/tether-edge/tether/protocol"
)

// Snapshot is the immutable input of Compute: every job, device and current
// allocation the planner knows. Compute never modifies it.
type Snapshot struct {
	Jobs        []Job
	Devices     []Device
	Allocations []Alloc // the allocations currently placed (the previous plan)
}

// Job is the accepted version of a job in force.
type Job struct {
	Job     protocol.Job // normalized and valid
	Version uint64
	// Stopped is set when the operator deleted the job: every allocation of
	// it must go.
	Stopped bool
	// Rollout is the state of the rollout of this Version as the previous
	// plan left it (Plan.Rollouts), nil when no plan has seen this version
	// yet. The shell persists it between plans and may set a group's
	// Promoted (the operator promoted the version).
	Rollout *protocol.Rollout
}

// Device is what the planner knows of one device.
type Device struct {
	ID       string
	Facts    protocol.Facts // zero value when HasFacts is false
	HasFacts bool
	Presence protocol.PresenceStatus // "" when never seen
	// Reported is the observed state of each allocation, by allocation id,
	// from the device's last report.
	Reported map[string]protocol.AllocStatus
	// DiskMB is the disk space the device offers to tasks, in MB; 0 when
	// unknown, so that only tasks asking for no disk fit.
	DiskMB int
	// Resources counts the device resources the device offers, by the name
	// tasks request them under ("nvidia/gpu", "usb/1d6b:0002"). A device
	// lacking a resource a group requests is not feasible for it.
	Resources map[string]int
	// OfflineSince is when the planner learned that the device went
	// offline, by the server's clock; zero when the device is online or the
	// time is unknown. An allocation on a device that is not online is
	// disconnected, and lost once the device has been offline for its
	// group's lost_after (protocol.Group.LostAfter); with a zero
	// OfflineSince it is never lost. Ignored while Presence is online.
	OfflineSince time.Time
	// Ineligible devices get no new allocation; what they run stays.
	// Draining devices are ineligible, and their service and batch
	// allocations move elsewhere (see Compute).
	Ineligible bool
	Draining   bool
	// ReportedAt is when the device's last report arrived, by the server's
	// clock; zero when unknown. An allocation reported failed without a
	// task finish time failed then (see Compute on rescheduling).
	ReportedAt time.Time
}

// Alloc is one instance of a group on a device.
type Alloc struct {
	ID         string
	Job        string
	JobVersion uint64
	Group      string
	Index      int // instance index within the group; 0 for system jobs
	Type       protocol.JobType
	Device     string
	Tasks      []protocol.Task
	// Replaces is the id of the lost allocation this one replaces: an
	// allocation of the same job, group and index on another device, also
	// in the plan. It is "" for every other allocation, and cleared once
	// the allocation it names is gone (stopped when its device returned,
	// say). See Compute.
	Replaces string
	// Reschedules holds when earlier allocations of the same slot (job,
	// group, index) failed and were rescheduled, by the server's clock,
	// oldest first: the history the group's reschedule policy counts. A
	// rescheduled allocation's replacement carries it over with the new
	// time appended; updates keep it.
	Reschedules []time.Time
}

// Plan is the result of Compute.
type Plan struct {
	// Allocations is the complete set of allocations after the plan, sorted
	// by device, then id. The shell derives every device's desired document
	// from it.
	Allocations []Alloc
	// The buckets say how Allocations differs from Snapshot.Allocations.
	Place []Alloc // new allocations
	// Update: same id and device, with a new job version (edged replaces
	// changed tasks) or only a cleared Replaces mark.
	Update []Alloc
	Stop   []Alloc // removed allocations (job stopped, count lowered, device no longer feasible, lost a reconcile)
	Keep   []Alloc // unchanged
	// Groups is the placement summary of every job that is not stopped, by
	// job id, groups in document order.
	Groups map[string][]protocol.GroupStatus
	Now    time.Time

	// Connectivity: the allocations of Allocations that are neither
	// complete nor failed at their version and sit on a device that is not
	// online, sorted by device, then id. Lost are those whose device has
	// been offline for at least their group's lost_after (by
	// Device.OfflineSince and Now), Disconnected the others. LostByJob
	// counts Lost by job id (nil when Lost is empty).
	Lost         []Alloc
	Disconnected []Alloc
	LostByJob    map[string]int
	// NextEval is the earliest time after Now at which an allocation of the
	// plan becomes lost, a rollout reaches its progress deadline or a
	// failed allocation's reschedule delay ends: the time to compute again
	// without any other event; zero when there is none.
	NextEval time.Time
	// RescheduleAt says, by allocation id, when each failed allocation the
	// plan keeps may be rescheduled (see Compute); nil when none waits.
	RescheduleAt map[string]time.Time

	// Rollouts is the state of the rollout of every job that is not stopped
	// and has a group with an update block, by job id: the shell persists
	// it and passes it back as Job.Rollout.
	Rollouts map[string]protocol.Rollout
	// Deferred lists the allocations of Allocations left at an older
	// version for now, with the reason (a rollout's max_parallel, its
	// canaries awaiting promotion, a failed rollout, an offline device
	// under offline: wait), sorted by device, then id.
	Deferred []Deferred
}

// Deferred is an allocation whose update a rollout holds back.
type Deferred struct {
	Alloc  Alloc
	Reason string
}
