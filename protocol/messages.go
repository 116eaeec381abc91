package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Desired is the state the planner wants on one device. It is published
// retained on the device's desired topic; Generation strictly increases with
// every change, so edged can refuse a document older than one it applied.
type Desired struct {
	Device      string       `json:"device"`
	Generation  uint64       `json:"generation"`
	IssuedAt    time.Time    `json:"issued_at"`
	Allocations []Allocation `json:"allocations"`
	// Signature is the planner's; edged refuses a document without a valid
	// one from a key it trusts (see VerifyDesired).
	Signature *Signature `json:"signature,omitempty"`
}

// Allocation is one instance of a job's group placed on a device, with the
// full task specs edged needs to run it.
type Allocation struct {
	ID         string  `json:"id"`
	Job        string  `json:"job"`
	JobVersion uint64  `json:"job_version"`
	Group      string  `json:"group"`
	Type       JobType `json:"type"`
	Tasks      []Task  `json:"tasks"`
	// StopAfterDisconnect, when set, makes edged stop this allocation's
	// workloads once it has been without the broker that long, and start
	// them again when it is back (the group's disconnect.stop_after).
	StopAfterDisconnect Duration `json:"stop_after_disconnect,omitempty"`
	// Health, when set, asks edged to judge the allocation's health and
	// report it (AllocStatus.Health): the group rolls out with an update
	// block.
	Health *HealthPolicy `json:"health,omitempty"`
}

// AllocState is the state of an allocation as edged reports it.
type AllocState string

// Allocation states.
const (
	AllocPending  AllocState = "pending"  // not all tasks started yet
	AllocRunning  AllocState = "running"  // every task running (or complete, for batch)
	AllocComplete AllocState = "complete" // every task exited successfully (batch)
	AllocFailed   AllocState = "failed"   // a task failed and will not be restarted
	// The planner's view in job status (never reported by edged): the
	// allocation's device is offline, for less than its group's lost_after
	// (disconnected) or longer (lost).
	AllocDisconnected AllocState = "disconnected"
	AllocLost         AllocState = "lost"
)

// TaskState is the state of one task as edged reports it.
type TaskState string

// Task states.
const (
	TaskPending    TaskState = "pending"    // not created or not started yet
	TaskRunning    TaskState = "running"    // process or container running
	TaskRestarting TaskState = "restarting" // exited, waiting for its restart delay
	TaskComplete   TaskState = "complete"   // exited 0 and will not run again (batch)
	TaskFailed     TaskState = "failed"     // exited and its restart policy is used up
)

// Reported is a device's observed state, published retained by edged
// whenever it changes.
type Reported struct {
	Device string `json:"device"`
	// Epoch and Seq place the report in the device's stream of reports and
	// events: Seq increases within an Epoch (a new Epoch starts when edged's
	// database is new). A receiver drops a report whose Seq is not above the
	// last one it saw in the same Epoch: a re-sent duplicate or an old one.
	Epoch              string        `json:"epoch,omitempty"`
	Seq                uint64        `json:"seq,omitempty"`
	ObservedGeneration uint64        `json:"observed_generation"`
	Time               time.Time     `json:"time"`
	Allocations        []AllocStatus `json:"allocations"`
	// Error describes a problem applying the desired state as a whole, such
	// as a driver that is not available.
	Error string `json:"error,omitempty"`
}

// AllocStatus is the observed state of one allocation.
type AllocStatus struct {
	ID         string     `json:"id"`
	Job        string     `json:"job"`
	JobVersion uint64     `json:"job_version"`
	Group      string     `json:"group"`
	State      AllocState `json:"state"`
	// Health is edged's verdict under the allocation's HealthPolicy, for
	// this JobVersion; "" while undecided or without a policy.
	Health Health       `json:"health,omitempty"`
	Tasks  []TaskStatus `json:"tasks"`
}

// TaskStatus is the observed state of one task.
type TaskStatus struct {
	Name       string     `json:"name"`
	State      TaskState  `json:"state"`
	Restarts   int        `json:"restarts"`
	ExitCode   *int       `json:"exit_code,omitempty"`
	Message    string     `json:"message,omitempty"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// PresenceStatus says whether a device is connected.
type PresenceStatus string

// Presence states.
const (
	Online  PresenceStatus = "online"
	Offline PresenceStatus = "offline"
)

// Presence is a device's birth message and, with Status offline, its last
// will. Both are retained.
type Presence struct {
	Device string         `json:"device"`
	Status PresenceStatus `json:"status"`
	// Since is when the status began, by the device's clock. The last will
	// has none: it is written when the device connects, not when the broker
	// sends it; receivers use the time they received it.
	Since   *time.Time `json:"since,omitempty"`
	Version string     `json:"version,omitempty"`
}

// Facts describe a device to the planner: what it is and what it can run.
type Facts struct {
	Device   string            `json:"device"`
	Hostname string            `json:"hostname,omitempty"`
	Arch     string            `json:"arch"`
	OS       string            `json:"os"`
	Kernel   string            `json:"kernel,omitempty"`
	CPUCores int               `json:"cpu_cores"`
	CPUMHz   int               `json:"cpu_mhz"`   // total over all cores
	MemoryMB int               `json:"memory_mb"` // total
	Drivers  []string          `json:"drivers"`
	Labels   map[string]string `json:"labels,omitempty"`
	// DiskMB is the disk space offered to tasks (0: not reported).
	DiskMB int `json:"disk_mb,omitempty"`
	// Devices are countable devices tasks can request by name:
	// "nvidia/gpu", "usb/1d6b:0002" (USB vendor:product, lowercase hex).
	Devices []DeviceResource `json:"devices,omitempty"`
}

// DeviceResource is a kind of device and how many of it a device has.
type DeviceResource struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// HasDriver reports whether the device offers the named driver.
func (f Facts) HasDriver(name string) bool {
	for _, d := range f.Drivers {
		if d == name {
			return true
		}
	}
	return false
}

// EventType names a task lifecycle event.
type EventType string

// Task lifecycle events.
const (
	EventStarted    EventType = "started"
	EventExited     EventType = "exited"
	EventRestarting EventType = "restarting"
	EventFailed     EventType = "failed"
	EventComplete   EventType = "complete"
	EventStopped    EventType = "stopped"
	EventAdopted    EventType = "adopted"
	EventDriverErr  EventType = "driver_error"
	// EventDropped says the device's outbox was full and its oldest events
	// were dropped (reports are never dropped).
	EventDropped EventType = "events_dropped"
	// EventAllocHealthy and EventAllocUnhealthy carry edged's health
	// verdict on an allocation of a group with an update block (Alloc and
	// Job set, Task empty, the job version and the reason in Message). The
	// report carries the verdict too; it is what the planner reads.
	EventAllocHealthy   EventType = "alloc_healthy"
	EventAllocUnhealthy EventType = "alloc_unhealthy"
	// EventDesiredRefused says edged refused a desired document (unsigned,
	// signed by a key it does not trust, a bad signature, addressed to
	// another device, older than the applied one, or invalid) and keeps
	// running what it ran; Message says why. The report's Error says so
	// too until a newer document is applied.
	EventDesiredRefused EventType = "desired_refused"
)

// Event is one task lifecycle event, published with QoS 1, not retained.
// Seq increases per device so receivers can drop duplicates.
type Event struct {
	Device   string    `json:"device"`
	Epoch    string    `json:"epoch,omitempty"`
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Type     EventType `json:"type"`
	Alloc    string    `json:"alloc,omitempty"`
	Job      string    `json:"job,omitempty"`
	Task     string    `json:"task,omitempty"`
	ExitCode *int      `json:"exit_code,omitempty"`
	Message  string    `json:"message,omitempty"`
}

// JobState summarises a job for operators.
type JobState string

// Job states in a job status.
const (
	JobPending  JobState = "pending"  // accepted, not everything running yet
	JobRunning  JobState = "running"  // every placed allocation running
	JobComplete JobState = "complete" // batch: every allocation complete
	JobDegraded JobState = "degraded" // some allocations failed or could not be placed
	JobStopped  JobState = "stopped"  // deleted by its operator; allocations stopped
	JobInvalid  JobState = "invalid"  // the only submission so far was rejected
)

// MaxStatusAllocs caps the allocations a job status lists. A service job of
// 180,000 instances would otherwise make a status of tens of MB, rebuilt
// and republished on every change: past brokers' packet limits (Mosquitto's
// default is 1 MiB) and of no use to a reader. 1,000 summaries take some
// 150 kB; each device's report lists the allocations it runs.
const MaxStatusAllocs = 1000

// JobStatus is the planner's answer to a job document, retained on the job's
// status topic so that dashboards need not ask.
type JobStatus struct {
	Job   string   `json:"job"`
	State JobState `json:"state"`
	// Version is the accepted version now in force (0 if none).
	Version uint64  `json:"version"`
	Type    JobType `json:"type,omitempty"`
	// Submission is the digest of the last payload received on the job topic
	// and Errors what was wrong with it, if it was rejected. A rejected
	// submission changes nothing: the accepted version stays in force.
	Submission string        `json:"submission,omitempty"`
	Errors     []FieldError  `json:"errors,omitempty"`
	Groups     []GroupStatus `json:"groups,omitempty"`
	// Allocs lists at most MaxStatusAllocs allocations. When a job has
	// more, those an operator needs first (failed, lost, disconnected,
	// unhealthy, pending, with a message) come before the running and
	// complete ones, and AllocsOmitted says how many are left out. Counts
	// always count every allocation.
	Allocs        []AllocSummary  `json:"allocations,omitempty"`
	AllocsOmitted int             `json:"allocations_omitted,omitempty"`
	Counts        PlacementCounts `json:"counts"`
	// Rollout is the progress of Version through the fleet when a group
	// has an update block; nil otherwise.
	Rollout   *Rollout  `json:"rollout,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// GroupStatus is the placement summary of one group.
type GroupStatus struct {
	Name    string `json:"name"`
	Desired int    `json:"desired"`
	Placed  int    `json:"placed"`
	// Unplaced explains why instances could not be placed, e.g. "0 of 3
	// devices feasible: 2 lack driver podman, 1 constraint ${device.arch} = arm64".
	Unplaced string `json:"unplaced,omitempty"`
}

// PlacementCounts counts a job's allocations by observed state.
type PlacementCounts struct {
	Desired      int `json:"desired"`
	Placed       int `json:"placed"`
	Pending      int `json:"pending"`
	Running      int `json:"running"`
	Complete     int `json:"complete"`
	Failed       int `json:"failed"`
	Disconnected int `json:"disconnected,omitempty"`
	Lost         int `json:"lost,omitempty"`
}

// AllocSummary is one allocation in a job status.
type AllocSummary struct {
	ID      string     `json:"id"`
	Group   string     `json:"group"`
	Device  string     `json:"device"`
	Version uint64     `json:"version"`
	State   AllocState `json:"state"`
	Health  Health     `json:"health,omitempty"`
	Message string     `json:"message,omitempty"`
}

// FleetSummary is the planner's overview of the fleet, retained on the
// fleet summary topic and republished when it changes.
type FleetSummary struct {
	Devices DeviceCounts `json:"devices"`
	Jobs    []JobBrief   `json:"jobs"`
	// UpdatedAt is when the content last changed.
	UpdatedAt time.Time `json:"updated_at"`
}

// DeviceCounts counts devices by presence, architecture and label.
type DeviceCounts struct {
	Total   int `json:"total"`
	Online  int `json:"online"`
	Offline int `json:"offline"`
	// Unknown counts devices with facts but no presence message yet.
	Unknown int            `json:"unknown"`
	ByArch  map[string]int `json:"by_arch,omitempty"`
	// ByLabel counts devices per label value: ByLabel["site"]["berlin"].
	ByLabel map[string]map[string]int `json:"by_label,omitempty"`
}

// JobBrief is one job in the fleet summary.
type JobBrief struct {
	Job     string          `json:"job"`
	Type    JobType         `json:"type,omitempty"`
	Version uint64          `json:"version"`
	State   JobState        `json:"state"`
	Counts  PlacementCounts `json:"counts"`
}

// DecodeFleetSummary reads a fleet summary.
func DecodeFleetSummary(data []byte) (FleetSummary, error) {
	var s FleetSummary
	if err := decodeStrict(data, &s); err != nil {
		return FleetSummary{}, err
	}
	return s, nil
}

// DecodeDesired reads and validates a desired document.
func DecodeDesired(data []byte) (Desired, error) {
	var d Desired
	if err := decodeStrict(data, &d); err != nil {
		return Desired{}, err
	}
	var errs []error
	if err := ValidateID(d.Device); err != nil {
		errs = append(errs, fieldErr("device", "%v", err))
	}
	if d.Signature != nil {
		errs = append(errs, validateSignature(*d.Signature)...)
	}
	seen := map[string]bool{}
	for i, a := range d.Allocations {
		p := fmt.Sprintf("allocations[%d]", i)
		if err := validateAllocID(a.ID); err != nil {
			errs = append(errs, fieldErr(p+".id", "%v", err))
		} else if seen[a.ID] {
			errs = append(errs, fieldErr(p+".id", "duplicate allocation %q", a.ID))
		}
		seen[a.ID] = true
		if err := ValidateID(a.Job); err != nil {
			errs = append(errs, fieldErr(p+".job", "%v", err))
		}
		if err := ValidateID(a.Group); err != nil {
			errs = append(errs, fieldErr(p+".group", "%v", err))
		}
		if !a.Type.Valid() {
			errs = append(errs, fieldErr(p+".type", "unknown job type %q", a.Type))
		}
		if len(a.Tasks) == 0 {
			errs = append(errs, fieldErr(p+".tasks", "want at least one task"))
		}
		names := map[string]bool{}
		for ti, t := range a.Tasks {
			tp := fmt.Sprintf("%s.tasks[%d]", p, ti)
			if err := ValidateID(t.Name); err != nil {
				errs = append(errs, fieldErr(tp+".name", "%v", err))
			} else if names[t.Name] {
				errs = append(errs, fieldErr(tp+".name", "duplicate task %q", t.Name))
			}
			names[t.Name] = true
			errs = append(errs, validateTask(tp, t)...)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Desired{}, err
	}
	return d, nil
}

// validateAllocID checks allocation ids, which are built from job and group
// names and so may be longer than other identifiers.
func validateAllocID(s string) error {
	if len(s) > 200 {
		return fmt.Errorf("allocation id longer than 200 characters")
	}
	if s == "" || !allocPattern.MatchString(s) {
		return fmt.Errorf("invalid allocation id %q", s)
	}
	return nil
}

// DecodeReported reads and validates a device report.
func DecodeReported(data []byte) (Reported, error) {
	var r Reported
	if err := decodeStrict(data, &r); err != nil {
		return Reported{}, err
	}
	var errs []error
	if err := ValidateID(r.Device); err != nil {
		errs = append(errs, fieldErr("device", "%v", err))
	}
	for i, a := range r.Allocations {
		p := fmt.Sprintf("allocations[%d]", i)
		if err := validateAllocID(a.ID); err != nil {
			errs = append(errs, fieldErr(p+".id", "%v", err))
		}
		switch a.State {
		case AllocPending, AllocRunning, AllocComplete, AllocFailed:
		default:
			errs = append(errs, fieldErr(p+".state", "unknown state %q, want pending, running, complete or failed", a.State))
		}
		switch a.Health {
		case "", Healthy, Unhealthy:
		default:
			errs = append(errs, fieldErr(p+".health", "unknown health %q, want healthy or unhealthy", a.Health))
		}
		for ti, t := range a.Tasks {
			switch t.State {
			case TaskPending, TaskRunning, TaskRestarting, TaskComplete, TaskFailed:
			default:
				errs = append(errs, fieldErr(fmt.Sprintf("%s.tasks[%d].state", p, ti), "unknown state %q", t.State))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Reported{}, err
	}
	return r, nil
}

// DecodePresence reads and validates a presence message.
func DecodePresence(data []byte) (Presence, error) {
	var p Presence
	if err := decodeStrict(data, &p); err != nil {
		return Presence{}, err
	}
	var errs []error
	if err := ValidateID(p.Device); err != nil {
		errs = append(errs, fieldErr("device", "%v", err))
	}
	if p.Status != Online && p.Status != Offline {
		errs = append(errs, fieldErr("status", "unknown status %q, want online or offline", p.Status))
	}
	if err := errors.Join(errs...); err != nil {
		return Presence{}, err
	}
	return p, nil
}

// DecodeFacts reads and validates a facts message.
func DecodeFacts(data []byte) (Facts, error) {
	var f Facts
	if err := decodeStrict(data, &f); err != nil {
		return Facts{}, err
	}
	var errs []error
	if err := ValidateID(f.Device); err != nil {
		errs = append(errs, fieldErr("device", "%v", err))
	}
	if f.CPUCores < 0 || f.CPUMHz < 0 || f.MemoryMB < 0 {
		errs = append(errs, fieldErr("", "cpu_cores, cpu_mhz and memory_mb must not be negative"))
	}
	for _, k := range sortedKeys(f.Labels) {
		if err := ValidateID(k); err != nil {
			errs = append(errs, fieldErr("labels."+k, "invalid label key: %v", err))
		}
	}
	if f.DiskMB < 0 {
		errs = append(errs, fieldErr("disk_mb", "must not be negative"))
	}
	for i, d := range f.Devices {
		if err := ValidateDeviceName(d.Name); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("devices[%d].name", i), "%v", err))
		}
		if d.Count < 0 {
			errs = append(errs, fieldErr(fmt.Sprintf("devices[%d].count", i), "must not be negative"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Facts{}, err
	}
	return f, nil
}

// DecodeEvent reads and validates an event.
func DecodeEvent(data []byte) (Event, error) {
	var e Event
	if err := decodeStrict(data, &e); err != nil {
		return Event{}, err
	}
	var errs []error
	if err := ValidateID(e.Device); err != nil {
		errs = append(errs, fieldErr("device", "%v", err))
	}
	if e.Type == "" {
		errs = append(errs, fieldErr("type", "required"))
	}
	if err := errors.Join(errs...); err != nil {
		return Event{}, err
	}
	return e, nil
}

// DecodeJobStatus reads a job status.
func DecodeJobStatus(data []byte) (JobStatus, error) {
	var s JobStatus
	if err := decodeStrict(data, &s); err != nil {
		return JobStatus{}, err
	}
	var errs []error
	if err := ValidateID(s.Job); err != nil {
		errs = append(errs, fieldErr("job", "%v", err))
	}
	if s.AllocsOmitted < 0 {
		errs = append(errs, fieldErr("allocations_omitted", "must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return JobStatus{}, err
	}
	return s, nil
}

// Encode marshals a message for the wire.
func Encode(v any) ([]byte, error) {
	return json.Marshal(v)
}
