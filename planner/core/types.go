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
}

// Plan is the result of Compute.
type Plan struct {
	// Allocations is the complete set of allocations after the plan, sorted
	// by device, then id. The shell derives every device's desired document
	// from it.
	Allocations []Alloc
	// The buckets say how Allocations differs from Snapshot.Allocations.
	Place  []Alloc // new allocations
	Update []Alloc // same id and device, new job version (edged replaces changed tasks)
	Stop   []Alloc // removed allocations (job stopped, count lowered, device no longer feasible)
	Keep   []Alloc // unchanged
	// Groups is the placement summary of every job that is not stopped, by
	// job id, groups in document order.
	Groups map[string][]protocol.GroupStatus
	Now    time.Time
}
