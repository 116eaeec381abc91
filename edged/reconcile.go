package edged

import (
	"fmt"
	"sort"
	"time"

	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

// observed is one instance as a driver reported it.
type observed struct {
	Driver string
	driver.Instance
}

type actionKind int

const (
	actStart actionKind = iota
	actRemove
)

// action is one change the worker makes to a driver.
type action struct {
	Kind   actionKind
	Driver string
	Key    string      // task key (alloc/task)
	Spec   driver.Spec // actStart
	ID     string      // actRemove: instance id
	Stop   bool        // actRemove: stop gracefully first
	Reason string
}

// pendingEvent is an event without device and sequence number yet.
type pendingEvent struct {
	Type     protocol.EventType
	Alloc    string
	Job      string
	Task     string
	ExitCode *int
	Message  string
}

// diffResult is what one reconcile pass decided.
type diffResult struct {
	Actions []action
	Tasks   map[string]taskRecord
	Events  []pendingEvent
	// Wake is the earliest future time a restart is due (zero: none).
	Wake time.Time
}

func taskKey(alloc, task string) string { return alloc + "/" + task }

// instanceHash identifies what an instance was created from. For service
// and system tasks it is the task spec alone, so a new job version that
// leaves a task unchanged does not restart it. A batch task runs once per
// job version, so its version is part of the identity: a new version (an
// update, or the job stopped and run again) runs it again.
func instanceHash(a protocol.Allocation, t protocol.Task) string {
	h := protocol.SpecHash(t)
	if a.Type.RunsToCompletion() {
		h += fmt.Sprintf("-v%d", a.JobVersion)
	}
	return h
}

func instanceName(alloc, task string) string { return "tether-" + alloc + "-" + task }

// diff compares the desired document with what the drivers report and the
// remembered task records, and returns the actions that close the gap. It is
// pure: no I/O, and now is passed in. listed says which drivers answered
// List; instances of a driver that did not answer are neither started nor
// removed, so a driver hiccup can never create a duplicate.
func diff(device string, desired *protocol.Desired, obs []observed, recs map[string]taskRecord, listed map[string]bool, now time.Time) diffResult {
	return diffSuspended(device, desired, obs, recs, listed, nil, now)
}

// diffSuspended is diff with some allocations suspended (disconnect
// stop_after, by allocation id, with the reason): their running workloads
// are stopped, but they stay desired: their records (complete, failed,
// restart budget) and their exited instances are kept, and nothing of them
// starts until they are no longer suspended.
func diffSuspended(device string, desired *protocol.Desired, obs []observed, recs map[string]taskRecord, listed map[string]bool, suspended map[string]string, now time.Time) diffResult {
	res := diffResult{Tasks: map[string]taskRecord{}}
	type want struct {
		alloc protocol.Allocation
		task  protocol.Task
		hash  string
	}
	wants := map[string]want{}
	var keys []string
	if desired != nil {
		for _, a := range desired.Allocations {
			for _, t := range a.Tasks {
				k := taskKey(a.ID, t.Name)
				wants[k] = want{alloc: a, task: t, hash: instanceHash(a, t)}
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)

	byKey := map[string][]observed{}
	for _, o := range obs {
		k := taskKey(o.Labels[driver.LabelAlloc], o.Labels[driver.LabelTask])
		if _, ok := wants[k]; !ok {
			res.Actions = append(res.Actions, action{Kind: actRemove, Driver: o.Driver, Key: k, ID: o.ID, Stop: o.State == driver.StateRunning, Reason: "no longer desired"})
			if o.State == driver.StateRunning {
				res.Events = append(res.Events, pendingEvent{Type: protocol.EventStopped, Alloc: o.Labels[driver.LabelAlloc], Job: o.Labels[driver.LabelJob], Task: o.Labels[driver.LabelTask], Message: "no longer desired"})
			}
			continue
		}
		byKey[k] = append(byKey[k], o)
	}

	for _, k := range keys {
		w := wants[k]
		rec, ok := recs[k]
		if !ok || rec.SpecHash != w.hash || rec.JobVersion != w.alloc.JobVersion {
			// A new spec or job version gets a fresh record: a job that was
			// stopped and run again (a new version) runs again even if this
			// device never saw the stop.
			rec = taskRecord{SpecHash: w.hash, JobVersion: w.alloc.JobVersion}
		}
		ev := func(t protocol.EventType, code *int, msg string) {
			res.Events = append(res.Events, pendingEvent{Type: t, Alloc: w.alloc.ID, Job: w.alloc.Job, Task: w.task.Name, ExitCode: code, Message: msg})
		}
		if !listed[w.task.Driver] {
			// Unknown driver, or its runtime did not answer: change nothing.
			res.Tasks[k] = rec
			continue
		}
		if why, ok := suspended[w.alloc.ID]; ok {
			if old, had := recs[k]; had {
				rec = old
			}
			for _, o := range byKey[k] {
				if o.State == driver.StateRunning {
					res.Actions = append(res.Actions, action{Kind: actRemove, Driver: o.Driver, Key: k, ID: o.ID, Stop: true, Reason: "stop_after"})
					ev(protocol.EventStopped, nil, why)
				}
			}
			res.Tasks[k] = rec
			continue
		}
		insts := byKey[k]
		sort.SliceStable(insts, func(i, j int) bool {
			ri, rj := insts[i].State == driver.StateRunning, insts[j].State == driver.StateRunning
			if ri != rj {
				return ri
			}
			return insts[i].StartedAt.After(insts[j].StartedAt)
		})
		for _, extra := range insts[min(1, len(insts)):] {
			res.Actions = append(res.Actions, action{Kind: actRemove, Driver: extra.Driver, Key: k, ID: extra.ID, Stop: true, Reason: "duplicate"})
		}
		var inst *observed
		if len(insts) > 0 {
			inst = &insts[0]
		}
		if inst != nil && inst.Labels[driver.LabelSpec] != w.hash {
			res.Actions = append(res.Actions, action{Kind: actRemove, Driver: inst.Driver, Key: k, ID: inst.ID, Stop: true, Reason: "spec changed"})
			inst = nil
		}
		if rec.Complete || rec.Failed {
			res.Tasks[k] = rec
			continue
		}
		if inst != nil {
			switch {
			case inst.State == driver.StateRunning:
				rec.StartedAt = inst.StartedAt
				rec.NextStart = time.Time{}
				res.Tasks[k] = rec
				continue
			case inst.State == driver.StateCreated:
				// Created but never started: the leftover of a failed start
				// (already charged to the restart budget when Start failed)
				// or of an interrupted one. Remove it; a fresh one starts
				// when the restart delay allows.
				res.Actions = append(res.Actions, action{Kind: actRemove, Driver: inst.Driver, Key: k, ID: inst.ID, Reason: "never started"})
				if rec.NextStart.After(now) {
					res.Wake = earliest(res.Wake, rec.NextStart)
				}
				res.Tasks[k] = rec
				continue
			case incarnation(inst.Instance) == rec.Seen:
				// This exit was already charged; the removal failed last
				// time. Retry it without charging again.
				res.Actions = append(res.Actions, action{Kind: actRemove, Driver: inst.Driver, Key: k, ID: inst.ID, Reason: "restarting"})
				if rec.NextStart.After(now) {
					res.Wake = earliest(res.Wake, rec.NextStart)
				}
				res.Tasks[k] = rec
				continue
			default:
				code := inst.ExitCode
				rec.Seen = incarnation(inst.Instance)
				rec.ExitCode = &code
				rec.FinishedAt = inst.FinishedAt
				if rec.FinishedAt.IsZero() {
					rec.FinishedAt = now
				}
				rec.Message = fmt.Sprintf("exited with code %d", code)
				ev(protocol.EventExited, &code, rec.Message)
				next := onExit(&rec, w.alloc.Type, policy(w.task, w.alloc.Type), code, now)
				ev(next, nil, rec.Message)
				if next == protocol.EventRestarting {
					// Remove the dead instance; a fresh one starts when the
					// delay is over. Complete and failed instances stay for
					// their logs.
					res.Actions = append(res.Actions, action{Kind: actRemove, Driver: inst.Driver, Key: k, ID: inst.ID, Reason: "restarting"})
				}
				if !rec.NextStart.IsZero() && rec.NextStart.After(now) {
					res.Wake = earliest(res.Wake, rec.NextStart)
				}
				res.Tasks[k] = rec
				continue
			}
		}
		if rec.NextStart.After(now) {
			res.Wake = earliest(res.Wake, rec.NextStart)
			res.Tasks[k] = rec
			continue
		}
		rec.NextStart = time.Time{}
		res.Actions = append(res.Actions, action{
			Kind: actStart, Driver: w.task.Driver, Key: k, Reason: "desired",
			Spec: driver.Spec{
				Name: instanceName(w.alloc.ID, w.task.Name),
				Labels: map[string]string{
					driver.LabelAlloc:  w.alloc.ID,
					driver.LabelJob:    w.alloc.Job,
					driver.LabelGroup:  w.alloc.Group,
					driver.LabelTask:   w.task.Name,
					driver.LabelSpec:   w.hash,
					driver.LabelDevice: device,
				},
				Task: withRuntimeEnv(w.task, device, w.alloc),
			},
		})
		res.Tasks[k] = rec
	}
	return res
}

// incarnation names one run of an instance. Some runtimes reuse the id
// for every run (exec uses the name), so the start time is part of it.
func incarnation(i driver.Instance) string {
	return i.ID + "@" + i.StartedAt.UTC().Format(time.RFC3339Nano)
}

// withRuntimeEnv gives a task what it may want to know about where it runs,
// as Nomad's NOMAD_* variables do. The task's own variables win.
func withRuntimeEnv(t protocol.Task, device string, a protocol.Allocation) protocol.Task {
	env := map[string]string{
		"TETHER_DEVICE_ID":   device,
		"TETHER_ALLOC_ID":    a.ID,
		"TETHER_JOB":         a.Job,
		"TETHER_JOB_VERSION": fmt.Sprint(a.JobVersion),
		"TETHER_GROUP":       a.Group,
		"TETHER_TASK":        t.Name,
	}
	for k, v := range t.Env {
		env[k] = v
	}
	t.Env = env
	return t
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

func policy(t protocol.Task, typ protocol.JobType) protocol.RestartPolicy {
	if t.Restart != nil {
		return *t.Restart
	}
	return protocol.DefaultRestart(typ)
}

// onExit applies the restart policy to a task that stopped: it exited,
// crashed, or could not be started (code -1). It returns what happens next:
// complete (a batch task that exited 0), restarting, or failed.
func onExit(rec *taskRecord, typ protocol.JobType, p protocol.RestartPolicy, code int, now time.Time) protocol.EventType {
	if typ.RunsToCompletion() && code == 0 {
		rec.Complete = true
		rec.NextStart = time.Time{}
		return protocol.EventComplete
	}
	if rec.WindowStart.IsZero() || now.Sub(rec.WindowStart) > p.Interval.Std() {
		rec.WindowStart = now
		rec.Restarts = 0
	}
	if rec.Restarts < p.Attempts {
		rec.Restarts++
		rec.Total++
		rec.NextStart = now.Add(p.Delay.Std())
		return protocol.EventRestarting
	}
	if p.Mode == protocol.RestartDelay {
		// Wait out the rest of the interval, then start with a new budget.
		next := rec.WindowStart.Add(p.Interval.Std())
		if d := now.Add(p.Delay.Std()); next.Before(d) {
			next = d
		}
		rec.Total++
		rec.NextStart = next
		rec.WindowStart = time.Time{}
		rec.Restarts = 0
		return protocol.EventRestarting
	}
	rec.Failed = true
	rec.NextStart = time.Time{}
	return protocol.EventFailed
}

// buildReport derives the observed state of every desired allocation from
// what the drivers report after a pass and the task records.
func buildReport(desired *protocol.Desired, obs []observed, recs map[string]taskRecord, listed, configured map[string]bool, now time.Time) []protocol.AllocStatus {
	out := []protocol.AllocStatus{}
	if desired == nil {
		return out
	}
	running := map[string]observed{}
	for _, o := range obs {
		k := taskKey(o.Labels[driver.LabelAlloc], o.Labels[driver.LabelTask])
		if o.State == driver.StateRunning {
			running[k] = o
		}
	}
	for _, a := range desired.Allocations {
		st := protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group}
		var nRunning, nComplete, nFailed int
		for _, t := range a.Tasks {
			k := taskKey(a.ID, t.Name)
			rec := recs[k]
			ts := protocol.TaskStatus{Name: t.Name, Restarts: rec.Total, ExitCode: rec.ExitCode, Message: rec.Message}
			if !rec.StartedAt.IsZero() {
				s := rec.StartedAt.UTC()
				ts.StartedAt = &s
			}
			if !rec.FinishedAt.IsZero() {
				f := rec.FinishedAt.UTC()
				ts.FinishedAt = &f
			}
			inst, isRunning := running[k]
			switch {
			case !configured[t.Driver]:
				ts.State = protocol.TaskPending
				ts.Message = fmt.Sprintf("driver %s is not available on this device", t.Driver)
			case !listed[t.Driver]:
				// The runtime did not answer this pass; keep what is known.
				ts.State = protocol.TaskPending
				ts.Message = fmt.Sprintf("driver %s did not answer", t.Driver)
			case rec.Complete:
				ts.State = protocol.TaskComplete
				nComplete++
			case rec.Failed:
				ts.State = protocol.TaskFailed
				nFailed++
			case isRunning && inst.Labels[driver.LabelSpec] == rec.SpecHash:
				ts.State = protocol.TaskRunning
				ts.Message = ""
				s := inst.StartedAt.UTC()
				if !s.IsZero() {
					ts.StartedAt = &s
				}
				nRunning++
			case rec.NextStart.After(now):
				ts.State = protocol.TaskRestarting
			default:
				ts.State = protocol.TaskPending
			}
			st.Tasks = append(st.Tasks, ts)
		}
		n := len(a.Tasks)
		switch {
		case nFailed > 0:
			st.State = protocol.AllocFailed
		case nComplete == n:
			st.State = protocol.AllocComplete
		case nRunning+nComplete == n:
			st.State = protocol.AllocRunning
		default:
			st.State = protocol.AllocPending
		}
		out = append(out, st)
	}
	return out
}
