package edged

import (
	"encoding/json"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// ObservationKind says what an Observation reports.
type ObservationKind uint8

// Observation kinds.
const (
	// ObsConnected: the broker connection came up (the first connect and
	// every reconnect).
	ObsConnected ObservationKind = iota + 1
	// ObsDisconnected: the broker connection was lost.
	ObsDisconnected
	// ObsDesiredAccepted: a desired document was admitted and stored, to be
	// applied now: Generation and Allocs (without State).
	ObsDesiredAccepted
	// ObsReportConfirmed: one of edged's reports came back from the broker
	// on edged's own subscription, which acknowledges it (see onEcho):
	// Generation is its observed generation, Allocs its allocations with
	// their states.
	ObsReportConfirmed
	// ObsWorkloadStarted: a driver's Start call succeeded: Alloc, Job, Task.
	ObsWorkloadStarted
	// ObsSent: a message was published and the broker took it: Topic and
	// Bytes (the payload's length).
	ObsSent
	// ObsReceived: a message arrived on one of edged's subscriptions:
	// Topic and Bytes.
	ObsReceived
)

// Observation is one thing an agent did, for simulators and load tools
// that measure a fleet (Config.Observe).
type Observation struct {
	Kind   ObservationKind
	Device string
	// Time is when it happened, by time.Now (not the published clock).
	Time       time.Time
	Generation uint64
	Allocs     []ObservedAlloc
	Alloc      string
	Job        string
	Task       string
	Topic      string
	Bytes      int
}

// ObservedAlloc is an allocation in a desired document or a report.
type ObservedAlloc struct {
	ID         string
	Job        string
	JobVersion uint64
	// State is the reported state; empty for a desired allocation.
	State protocol.AllocState
}

// observe hands o to Config.Observe, if set. Callers that must build an
// expensive observation check a.cfg.Observe first.
func (a *Agent) observe(o Observation) {
	if a.cfg.Observe == nil {
		return
	}
	o.Device = a.cfg.DeviceID
	o.Time = time.Now()
	a.cfg.Observe(o)
}

func (a *Agent) observeDesired(d protocol.Desired) {
	if a.cfg.Observe == nil {
		return
	}
	allocs := make([]ObservedAlloc, len(d.Allocations))
	for i, al := range d.Allocations {
		allocs[i] = ObservedAlloc{ID: al.ID, Job: al.Job, JobVersion: al.JobVersion}
	}
	a.observe(Observation{Kind: ObsDesiredAccepted, Generation: d.Generation, Allocs: allocs})
}

func (a *Agent) observeReport(payload []byte) {
	if a.cfg.Observe == nil {
		return
	}
	var r protocol.Reported
	if json.Unmarshal(payload, &r) != nil {
		return
	}
	allocs := make([]ObservedAlloc, len(r.Allocations))
	for i, al := range r.Allocations {
		allocs[i] = ObservedAlloc{ID: al.ID, Job: al.Job, JobVersion: al.JobVersion, State: al.State}
	}
	a.observe(Observation{Kind: ObsReportConfirmed, Generation: r.ObservedGeneration, Allocs: allocs})
}
