package core

import (
	"cmp"
	"slices"
	"strings"

	"github.com/tether-edge/tether/protocol"
)

// Drain. An ineligible device (Device.Ineligible or Device.Draining) fails
// the "ineligible" feasibility check: it gets no new allocation, and what it
// runs stays. A draining device also sheds the allocations of its service
// and batch groups: each is stopped so that placePass places its index
// elsewhere, at most the group's max_parallel per plan when the group has
// an update block, all at once otherwise. System and sysbatch allocations
// stay (they run on every device; Nomad drains them last, here the operator
// removes the device), and so does a batch allocation reported complete.
//
// drainPass picks them before keepPass, from the snapshot: of a group's
// allocations on draining devices, in device then id order, as many as
// max_parallel minus the group's instances that are not ready: allocations
// at the job's version on an online device whose health is undecided, and
// instances missing (count minus the indices held). An instance moved by
// the drain is one or the other until it is healthy, so the next plan
// drains no more until it is. Allocations of a disconnect slot (a lost
// allocation of a group that replaces, or one with a Replaces mark) are
// left to the disconnect policy.

// movesOnDrain reports whether the group's allocations leave a draining
// device.
func (gp *groupPlan) movesOnDrain() bool {
	return gp.typ == protocol.JobService || gp.typ == protocol.JobBatch
}

// drainPass marks in p.drained the allocations of a group that leave their
// draining device in this plan.
func (p *planner) drainPass(gp *groupPlan) {
	if !gp.movesOnDrain() {
		return
	}
	type entry struct{ i, di int32 }
	var moving []entry
	notReady := 0
	var indices []bool // indices held, to count the missing ones
	if gp.roll != nil {
		indices = make([]bool, gp.count())
	}
	for _, i := range gp.existing {
		a := &p.allocs[i]
		di, known := p.index[a.Device]
		if !known || a.Index < 0 || a.Index >= gp.count() {
			continue // stopped by keepPass anyway
		}
		d := p.devs[di]
		if gp.roll != nil {
			indices[a.Index] = true
			if a.JobVersion == gp.job.Version && d.Presence == protocol.Online && !p.terminalAt(di, a.ID, a.JobVersion) && p.health(di, a.ID, a.JobVersion) == "" {
				notReady++
			}
		}
		if !d.Draining || a.Replaces != "" || (gp.replace && p.lost(gp, d)) {
			continue
		}
		if gp.typ.RunsToCompletion() {
			if st, ok := d.Reported[a.ID]; ok && st.JobVersion == a.JobVersion && st.State == protocol.AllocComplete && gp.current(a) {
				continue
			}
		}
		moving = append(moving, entry{i: i, di: di})
	}
	if len(moving) == 0 {
		return
	}
	if gp.roll != nil {
		for _, held := range indices {
			if !held {
				notReady++
			}
		}
		slices.SortFunc(moving, func(x, y entry) int {
			return cmp.Or(cmp.Compare(x.di, y.di), strings.Compare(p.allocs[x.i].ID, p.allocs[y.i].ID))
		})
		moving = moving[:min(len(moving), max(0, gp.roll.policy.MaxParallel-notReady))]
	}
	if p.drained == nil {
		p.drained = map[int32]bool{}
	}
	for _, e := range moving {
		p.drained[e.i] = true
	}
}
