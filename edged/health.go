package edged

import (
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

// Allocation health events (Alloc and Job set, Task empty, the job version
// and the reason in Message).
const (
	eventAllocHealthy   = protocol.EventAllocHealthy
	eventAllocUnhealthy = protocol.EventAllocUnhealthy
)

// healthRecord is edged's judgement of one allocation at one job version,
// kept in edged.db so that an edged restart neither forgets a verdict nor
// restarts the clock.
type healthRecord struct {
	JobVersion uint64 `json:"job_version"`
	// Began is when edged began applying this version. It is stored as the
	// device's wall clock; in memory it is a reading of edged's monotonic
	// clock (see onMonotonic), like every time judge compares.
	Began time.Time `json:"began"`
	// Health is the verdict, "" while undecided; once set it never
	// changes for this version.
	Health protocol.Health `json:"health,omitempty"`
	Reason string          `json:"reason,omitempty"`
	// Tasks are the baselines by task name.
	Tasks map[string]healthTask `json:"tasks"`
}

// healthTask is what a restart of one task is measured against.
type healthTask struct {
	// Restarts is the task's restart count (taskRecord.Total) when edged
	// began applying the version; any more is a restart.
	Restarts int `json:"restarts"`
	// Incarnation names the instance last seen running (see incarnation);
	// another one running later is a restart.
	Incarnation string `json:"incarnation,omitempty"`
}

// taskSeen is what one pass saw of a task, for judge.
type taskSeen struct {
	Name     string
	State    protocol.TaskState // as reported
	Restarts int                // taskRecord.Total
	Message  string             // why it last stopped, if it did
	// Incarnation names the running instance created from the task's
	// current spec, "" when there is none; Since is when it started, on
	// the clock judge compares.
	Incarnation string
	Since       time.Time
}

// healthTimes returns the policy's durations, with protocol's defaults for
// any that is not positive (as for an update block).
func healthTimes(p protocol.HealthPolicy) (minHealthy, deadline time.Duration) {
	minHealthy, deadline = p.MinHealthyTime.Std(), p.HealthyDeadline.Std()
	if minHealthy <= 0 {
		minHealthy = protocol.DefaultMinHealthyTime
	}
	if deadline <= 0 {
		deadline = protocol.DefaultHealthyDeadline
	}
	return minHealthy, deadline
}

// newHealthRecord starts the judgement of a job version that edged begins
// applying at began, with the restart counts and running instances of its
// tasks at that moment as baselines.
func newHealthRecord(version uint64, began time.Time, seen []taskSeen) healthRecord {
	h := healthRecord{JobVersion: version, Began: began, Tasks: make(map[string]healthTask, len(seen))}
	for _, s := range seen {
		h.Tasks[s.Name] = healthTask{Restarts: s.Restarts, Incarnation: s.Incarnation}
	}
	return h
}

// judge decides the health of an allocation at one job version. It is
// pure: h is the judgement so far, seen what this pass saw of every task,
// and now, h.Began and every Since are readings of one clock (edged's
// monotonic clock; never the server's). It returns the judgement with the
// running instances noted and the verdict once reached, and when to judge
// again if nothing else happens: when min_healthy_time elapses for the
// last task, or the deadline (zero once decided).
//
// Healthy: every task runs, and has run without a restart for
// MinHealthyTime since the later of Began and its start, before
// HealthyDeadline passes since Began; a task of a run-to-completion type
// that completed counts as done at once. Unhealthy: a task failed or
// restarted first (its restart count rose above the baseline, or another
// instance runs than the one seen before), or the deadline passed. A
// decided judgement is returned unchanged.
func judge(h healthRecord, p protocol.HealthPolicy, typ protocol.JobType, seen []taskSeen, now time.Time) (healthRecord, time.Time) {
	if h.Health != "" {
		return h, time.Time{}
	}
	minHealthy, deadline := healthTimes(p)
	due := h.Began.Add(deadline)

	tasks := maps.Clone(h.Tasks)
	if tasks == nil {
		tasks = map[string]healthTask{}
	}
	var failure string
	for _, s := range seen {
		base := tasks[s.Name]
		if failure == "" {
			switch {
			case s.State == protocol.TaskFailed:
				failure = fmt.Sprintf("task %s failed", s.Name) + detail(s.Message)
			case s.Restarts > base.Restarts:
				failure = fmt.Sprintf("task %s restarted", s.Name) + detail(s.Message)
			case base.Incarnation != "" && s.Incarnation != "" && s.Incarnation != base.Incarnation:
				failure = fmt.Sprintf("task %s restarted: another instance replaced the one running", s.Name)
			}
		}
		if s.Incarnation != "" {
			base.Incarnation = s.Incarnation
		}
		tasks[s.Name] = base
	}
	h.Tasks = tasks
	if failure != "" {
		h.Health, h.Reason = protocol.Unhealthy, failure+" before min_healthy_time "+minHealthy.String()
		return h, time.Time{}
	}

	ready, runs := true, false
	healthyAt := h.Began
	var waiting []string
	for _, s := range seen {
		switch {
		case s.State == protocol.TaskComplete && typ.RunsToCompletion():
		case s.State == protocol.TaskRunning:
			runs = true
			healthyAt = later(healthyAt, later(h.Began, s.Since).Add(minHealthy))
		default:
			ready = false
			waiting = append(waiting, fmt.Sprintf("%s %s", s.Name, s.State))
		}
	}
	if ready && !healthyAt.After(now) && !healthyAt.After(due) {
		h.Health = protocol.Healthy
		if !runs {
			h.Reason = "complete"
		} else {
			h.Reason = "every task running for min_healthy_time " + minHealthy.String()
		}
		return h, time.Time{}
	}
	if !now.Before(due) {
		why := "tasks running for less than min_healthy_time " + minHealthy.String()
		if !ready {
			why = "task " + strings.Join(waiting, ", task ")
		}
		h.Health, h.Reason = protocol.Unhealthy, fmt.Sprintf("not healthy within healthy_deadline %s: %s", deadline, why)
		return h, time.Time{}
	}
	if ready {
		return h, earliest(due, healthyAt)
	}
	return h, due
}

func detail(msg string) string {
	if msg == "" {
		return ""
	}
	return " (" + msg + ")"
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// onMonotonic turns t, a wall-clock time (stored, or a driver's), into a
// reading of the monotonic clock now came from: now less how long ago t
// was by the wall clock. Later comparisons then ignore steps of the wall
// clock.
func onMonotonic(t, now time.Time) time.Time {
	return now.Add(-now.Round(0).Sub(t.Round(0)))
}

// beginHealth starts a judgement for every allocation with a health policy
// that edged begins applying at a new job version, at now, before the pass
// acts: the baselines are the task records the diff kept (a new version
// starts them afresh) and the instances running from the tasks' current
// specs. It forgets the judgements of allocations no longer desired or no
// longer judged. Worker only.
func (a *Agent) beginHealth(desired *protocol.Desired, obs []observed, recs map[string]taskRecord, now time.Time) {
	keep := map[string]bool{}
	if desired != nil {
		running := runningFromSpec(obs, recs)
		for _, al := range desired.Allocations {
			if al.Health == nil {
				continue
			}
			keep[al.ID] = true
			if h, ok := a.health[al.ID]; ok && h.JobVersion == al.JobVersion {
				continue
			}
			seen := make([]taskSeen, 0, len(al.Tasks))
			for _, t := range al.Tasks {
				k := taskKey(al.ID, t.Name)
				s := taskSeen{Name: t.Name, Restarts: recs[k].Total}
				if inst, ok := running[k]; ok {
					s.Incarnation = incarnation(inst.Instance)
				}
				seen = append(seen, s)
			}
			a.health[al.ID] = newHealthRecord(al.JobVersion, now, seen)
			a.log.Info().Str("alloc", al.ID).Str("job", al.Job).Uint64("job_version", al.JobVersion).Msg("health judgement begins")
		}
	}
	for id := range a.health {
		if !keep[id] {
			delete(a.health, id)
		}
	}
}

// judgeHealth judges every allocation with a health policy from what the
// pass left (allocs as reported, obs listed after the actions, the task
// records), sets the verdicts in allocs, and returns the events of verdicts
// reached now and when a pending judgement next needs a look (zero: none).
// A suspended allocation (stop_after) is not judged while edged itself
// keeps it stopped, and the instance it starts again on resuming is not a
// restart; its deadline still runs. Worker only.
func (a *Agent) judgeHealth(desired *protocol.Desired, allocs []protocol.AllocStatus, obs []observed, recs map[string]taskRecord, suspended map[string]string) ([]pendingEvent, time.Time) {
	if desired == nil {
		return nil, time.Time{}
	}
	now := time.Now()
	running := runningFromSpec(obs, recs)
	sinceSeen := map[string]time.Time{}
	status := map[string]*protocol.AllocStatus{}
	for i := range allocs {
		status[allocs[i].ID] = &allocs[i]
	}
	var events []pendingEvent
	var wake time.Time
	for _, al := range desired.Allocations {
		h, ok := a.health[al.ID]
		st := status[al.ID]
		if al.Health == nil || !ok || h.JobVersion != al.JobVersion || st == nil {
			continue
		}
		if h.Health != "" {
			st.Health = h.Health
			continue
		}
		if _, off := suspended[al.ID]; off {
			h.Tasks = maps.Clone(h.Tasks)
			for n, bt := range h.Tasks {
				bt.Incarnation = ""
				h.Tasks[n] = bt
			}
			a.health[al.ID] = h
			continue
		}
		seen := make([]taskSeen, 0, len(al.Tasks))
		for i, t := range al.Tasks {
			k := taskKey(al.ID, t.Name)
			s := taskSeen{Name: t.Name, Restarts: recs[k].Total, Message: recs[k].Message}
			if i < len(st.Tasks) {
				s.State = st.Tasks[i].State
			}
			if inst, ok := running[k]; ok && s.State == protocol.TaskRunning {
				s.Incarnation = incarnation(inst.Instance)
				since, ok := a.since[s.Incarnation]
				if !ok {
					since = startedOnMonotonic(inst.StartedAt, now)
				}
				sinceSeen[s.Incarnation] = since
				s.Since = since
			}
			seen = append(seen, s)
		}
		next, at := judge(h, *al.Health, al.Type, seen, now)
		a.health[al.ID] = next
		if !at.IsZero() {
			wake = earliest(wake, at)
		}
		if next.Health != "" {
			typ := eventAllocHealthy
			if next.Health == protocol.Unhealthy {
				typ = eventAllocUnhealthy
			}
			a.log.Info().Str("alloc", al.ID).Str("job", al.Job).Uint64("job_version", al.JobVersion).
				Str("health", string(next.Health)).Str("reason", next.Reason).Msg("allocation health decided")
			events = append(events, pendingEvent{Type: typ, Alloc: al.ID, Job: al.Job, Message: fmt.Sprintf("job version %d: %s", al.JobVersion, next.Reason)})
		}
		st.Health = next.Health
	}
	a.since = sinceSeen
	return events, wake
}

// startedOnMonotonic places a driver's start time on edged's monotonic
// clock. A start time in whole seconds (Podman's) may be up to a second
// early, so it is taken as the next second: health is never judged early.
// An unknown start counts from now.
func startedOnMonotonic(start, now time.Time) time.Time {
	if start.IsZero() {
		return now
	}
	if start.Nanosecond() == 0 {
		start = start.Add(time.Second)
	}
	return onMonotonic(start, now)
}

// runningFromSpec returns, by task key, the running instance created from
// the task's current spec (as buildReport counts running tasks).
func runningFromSpec(obs []observed, recs map[string]taskRecord) map[string]observed {
	out := map[string]observed{}
	for _, o := range obs {
		k := taskKey(o.Labels[driver.LabelAlloc], o.Labels[driver.LabelTask])
		if r, ok := recs[k]; ok && o.State == driver.StateRunning && o.Labels[driver.LabelSpec] == r.SpecHash {
			out[k] = o
		}
	}
	return out
}
