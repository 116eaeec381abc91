package core

import (
	"slices"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// rescheduled is a slot whose failed allocation is replaced in this plan.
type rescheduled struct {
	i     int32       // index in planner.allocs of the failed allocation
	di    int32       // its device, avoided by the replacement when possible
	times []time.Time // the replacement's Reschedules
}

// rescheduleHeld reports whether a group's rollout holds its failed
// allocations where they are: the group has an update block and the
// rollout of the job's version failed (Job.Rollout). After a failed rollout
// only the operator or auto_revert moves the version's allocations; before,
// a failed allocation counts as unhealthy for the rollout while its delay
// runs, and is rescheduled like any other.
func rescheduleHeld(j *Job, rolls bool) bool {
	return rolls && j.Rollout != nil && j.Rollout.Version == j.Version && j.Rollout.State == protocol.RolloutFailed
}

// failedAt is when a failed allocation failed: the latest finish time of
// its tasks in the report, else when the report arrived.
func failedAt(d *Device, st protocol.AllocStatus) time.Time {
	var at time.Time
	for _, t := range st.Tasks {
		if t.FinishedAt != nil && t.FinishedAt.After(at) {
			at = *t.FinishedAt
		}
	}
	if at.IsZero() {
		return d.ReportedAt
	}
	return at
}

// rescheduleAt is when an allocation that failed at failed, after the
// earlier reschedules (oldest first), may be rescheduled: once its delay has
// passed and, unless the policy is unlimited, once the window holds fewer
// than Attempts reschedules (pol.Allows holds from then on).
func rescheduleAt(pol protocol.ReschedulePolicy, earlier []time.Time, failed time.Time) time.Time {
	at := failed.Add(pol.DelayAfter(len(earlier)))
	if pol.Unlimited || len(earlier) < pol.Attempts {
		return at
	}
	if !slices.IsSortedFunc(earlier, time.Time.Compare) {
		earlier = slices.SortedFunc(slices.Values(earlier), time.Time.Compare)
	}
	// The Attempts-th latest reschedule must leave the window.
	if free := earlier[len(earlier)-pol.Attempts].Add(pol.Interval); free.After(at) {
		return free
	}
	return at
}

// reschedule decides about the allocation judgeSlot keeps in a slot: when it
// runs the job's spec, is reported failed at its version, its group
// reschedules, no failed rollout holds it and rescheduleAt has come, the slot is left free for
// placeCount to place again, away from its device if it can, and reschedule
// reports true. Until then, rescheduleAt is a time to plan again (also when
// the attempts are used up: one leaves the interval then).
func (p *planner) reschedule(gp *groupPlan, slot int, c cand) bool {
	if !gp.reschedules || !c.cur || c.state != protocol.AllocFailed {
		return false
	}
	a := &p.allocs[c.i]
	d := p.devs[c.di]
	if at := rescheduleAt(gp.reschedule, a.Reschedules, failedAt(d, d.Reported[a.ID])); p.now.Before(at) {
		// Also when a failed rollout holds it: whether it does may change
		// from one plan to the next, the time must not. A drain may still
		// stop it: see rescheduleEval.
		p.waiting = append(p.waiting, waitingFailed{alloc: a, at: at})
		return false
	}
	if gp.rescheduleHeld {
		return false
	}
	if gp.rescheds == nil {
		gp.rescheds = map[int]rescheduled{}
	}
	times := append(slices.Clip(a.Reschedules), p.now)
	gp.rescheds[slot] = rescheduled{i: c.i, di: c.di, times: times}
	return true
}

// keepFailed keeps a failed allocation whose replacement could be placed
// nowhere, not even on its own device: it stays as judgeSlot would have
// kept it (a Replaces mark naming nothing left in the slot cleared, as
// judgeDisconnect would have), and a later plan tries again.
func (p *planner) keepFailed(gp *groupPlan, slot int, rs rescheduled) {
	gp.take(slot)
	if a := p.allocs[rs.i]; a.Replaces != "" {
		a.Replaces = ""
		p.update = append(p.update, a)
		p.updateDev = append(p.updateDev, rs.di)
	} else {
		p.keep = append(p.keep, rs.i)
		p.keepDev = append(p.keepDev, rs.di)
	}
	p.count(gp, rs.di, p.allocs[rs.i].ID)
}

// waitingFailed is a failed allocation kept until it may be rescheduled.
type waitingFailed struct {
	alloc *Alloc
	at    time.Time
}

// rescheduleEval is the earliest time a failed allocation the plan keeps may
// be rescheduled, zero when none waits, and each one's time by id.
func (p *planner) rescheduleEval() (time.Time, map[string]time.Time) {
	var next time.Time
	if len(p.waiting) == 0 {
		return next, nil
	}
	at := make(map[string]time.Time, len(p.waiting))
	type key struct{ id, device string }
	stopped := make(map[key]bool, len(p.stop))
	for i := range p.stop {
		stopped[key{p.stop[i].ID, p.stop[i].Device}] = true
	}
	for _, w := range p.waiting {
		if stopped[key{w.alloc.ID, w.alloc.Device}] {
			continue
		}
		at[w.alloc.ID] = w.at
		if next.IsZero() || w.at.Before(next) {
			next = w.at
		}
	}
	if len(at) == 0 {
		at = nil
	}
	return next, at
}
