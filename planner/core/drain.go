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
// elsewhere. System and sysbatch allocations stay (they run on every
// device; Nomad drains them last, here the operator removes the device), and
// so does a batch allocation reported complete. Allocations of a disconnect
// slot (a lost allocation of a group that replaces, or one with a Replaces
// mark) are left to the disconnect policy.
//
// drainPass decides after updatePass, when the group's surviving
// allocations are known: kept, updated, or held for its rollout. Without an
// update block a group's allocations leave all at once. With one, at most
// max_parallel minus the group's instances that are not ready leave per
// plan: the group's allocations at the job's version on an online device
// whose health is undecided, and its missing instances (count minus the
// slots held). An instance that leaves is one or the other until it is
// healthy elsewhere, so the next plan moves no more until it is. Moving an
// allocation that is not ready itself costs nothing (it stays not ready);
// the others are taken in device then id order.

// movesOnDrain reports whether the group's allocations leave a draining
// device.
func (gp *groupPlan) movesOnDrain() bool {
	return gp.typ == protocol.JobService || gp.typ == protocol.JobBatch
}

// drainRef is an allocation of the plan on a draining device, as keepPass
// or judgeDisconnect left it.
type drainRef struct {
	kind     drainKind
	pos      int   // in planner.keep, planner.update or the group's held
	i, di    int32 // the allocation (index in planner.allocs) and its device
	slot     int
	terminal bool // reserves nothing
}

type drainKind uint8

const (
	drainKept    drainKind = iota // kept: planner.keep[pos]
	drainUpdated                  // updated, or its mark cleared: planner.update[pos]
	drainHeld                     // awaiting a destructive update: held[pos]
)

// noteDrainable records an allocation of the plan that may have to leave
// its draining device: the survivor of a slot (for a disconnect slot, only
// once nothing else is left in it, as the next plan sees it).
func (p *planner) noteDrainable(gp *groupPlan, kind drainKind, pos, slot int, c cand, terminal bool) {
	if p.draining && gp.movesOnDrain() && p.devs[c.di].Draining && !gp.done(c) {
		gp.drainable = append(gp.drainable, drainRef{kind: kind, pos: pos, i: c.i, di: c.di, slot: slot, terminal: terminal})
	}
}

// drainPass moves a group's allocations off draining devices (see above).
// Stopped allocations are marked in planner.keep (-1) and planner.update (no
// id), and removed by dropStopped once every group is done.
func (p *planner) drainPass(gp *groupPlan) {
	if len(gp.drainable) == 0 {
		return
	}
	units := gp.drainable
	budget := len(units)
	if gp.roll != nil {
		budget = max(0, gp.roll.policy.MaxParallel-gp.roll.n.inFlight-(len(gp.taken)-gp.takenN))
		slices.SortFunc(units, func(x, y drainRef) int {
			return cmp.Or(cmp.Compare(x.di, y.di), strings.Compare(p.allocs[x.i].ID, p.allocs[y.i].ID))
		})
	}
	for _, d := range units {
		// One that is not ready stays not ready: kept or updated to the
		// job's version, on an online device, health undecided.
		free := d.kind != drainHeld && !d.terminal && p.devs[d.di].Presence == protocol.Online && p.health(d.di, p.allocs[d.i].ID, gp.job.Version) == ""
		if !free {
			if budget == 0 {
				continue
			}
			budget--
		}
		switch d.kind {
		case drainHeld:
			h := &gp.roll.held[d.pos]
			p.release(gp, *h)
			h.i = -1
		default:
			if !d.terminal {
				p.unreserveDemand(d.di, &gp.spec.demand)
				p.unnoteLive(gp, d.di)
			}
			p.uncount(gp, d.di, p.allocs[d.i].ID)
			if d.kind == drainKept {
				p.keep[d.pos] = -1
			} else {
				p.update[d.pos].ID = ""
			}
			p.dropDrained = true
		}
		p.stop = append(p.stop, p.allocs[d.i])
		gp.free(d.slot)
	}
	if gp.roll != nil {
		gp.roll.held = slices.DeleteFunc(gp.roll.held, func(h heldAlloc) bool { return h.i < 0 })
	}
}

// dropStopped removes from planner.keep and planner.update the allocations
// drainPass stopped.
func (p *planner) dropStopped() {
	if !p.dropDrained {
		return
	}
	n := 0
	for k, i := range p.keep {
		if i >= 0 {
			p.keep[n], p.keepDev[n] = i, p.keepDev[k]
			n++
		}
	}
	p.keep, p.keepDev = p.keep[:n], p.keepDev[:n]
	n = 0
	for k, u := range p.update {
		if u.ID != "" {
			p.update[n], p.updateDev[n] = u, p.updateDev[k]
			n++
		}
	}
	p.update, p.updateDev = p.update[:n], p.updateDev[:n]
}
