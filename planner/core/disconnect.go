package core

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// The disconnect policy (protocol.Disconnect), after Nomad 1.8's disconnect
// block, with Tether's timing: an allocation on a device that is not online
// is disconnected and stays an ordinary allocation; once the device has been
// offline for the group's lost_after it is lost. A lost allocation of a
// service or batch group that replaces stays in the plan, frozen: it is
// neither updated nor counted, reserves its own demand on its device, and
// does not count for distinct_hosts, distinct_property or spread. Its slot
// is free, so placePass places a replacement on another (online) device,
// marked with Alloc.Replaces. Such an allocation, or one named by a
// replacement, while its device is not online, is "away". When its device
// comes back, original and replacement both claim the slot and the group's
// reconcile strategy picks the survivor.
//
// Slots with a lost allocation of a group that replaces, or with a Replaces
// mark, are judged by judgeDisconnect after every other existing allocation
// was kept (keepPass), before the updates (updatePass).

// lost reports whether the allocations of a group on a device count as
// lost now: the device is not online, and has been offline for lost_after.
func (p *planner) lost(gp *groupPlan, d *Device) bool {
	return d.Presence != protocol.Online && !d.OfflineSince.IsZero() && !p.now.Before(d.OfflineSince.Add(gp.lostAfter))
}

// disconnectPass judges the slots keepPass set aside.
func (p *planner) disconnectPass(gp *groupPlan) {
	for _, ds := range gp.disconnects {
		p.judgeDisconnect(gp, ds.slot, ds.cands)
	}
}

// dcand is a candidate of a disconnect slot.
type dcand struct {
	cand
	target   int  // index of the candidate it replaces (its Replaces mark), -1 for none
	named    bool // another candidate replaces it
	depth    int  // length of its chain of Replaces marks within the slot
	lostAway bool // lost, in a group that replaces
	away     bool // not online, and lost or replaced
}

// judgeDisconnect decides the allocations of one slot with a lost allocation
// or a Replaces mark (candidates sorted by id, then device):
//
//  1. The candidates that are not away are judged as judgeSlot does, except
//     that when one of the slot's candidates replaces another (a device came
//     back), they are tried in the order of the group's reconcile strategy
//     (see reconcileOrder), and one that is updated is updated at once.
//  2. The away candidates, deepest chain first: a lost one, or one that a
//     survivor replaces, stays frozen if its own demand still fits its
//     device, else stops. Any other (its replacement is gone, and it is
//     merely disconnected) is judged as in 1 if the slot has no survivor
//     yet, and stops otherwise.
//  3. A survivor keeps its Replaces mark only if it names another survivor;
//     a cleared mark makes it an update.
//
// The slot is taken when a candidate that is not away survives; otherwise
// the replacement placePass places names the deepest away survivor.
func (p *planner) judgeDisconnect(gp *groupPlan, slot int, cands []cand) {
	info := p.dinfo[:0]
	for _, c := range cands {
		info = append(info, dcand{cand: c, target: -1})
	}
	p.dinfo = info
	related := false
	for k, c := range cands {
		if r := p.allocs[c.i].Replaces; r != "" {
			for j := range cands {
				if j != k && p.allocs[cands[j].i].ID == r {
					info[k].target = j
					info[j].named = true
					related = true
					break
				}
			}
		}
	}
	present, away := p.dpresent[:0], p.daway[:0]
	defer func() { p.dpresent, p.daway = present, away }()
	for k := range info {
		c := &info[k]
		for j := c.target; j >= 0 && c.depth < len(info); j = info[j].target {
			c.depth++ // bounded: marks may form a cycle
		}
		lost := gp.replace && p.lost(gp, p.devs[c.di])
		switch {
		case isTerminal(c.state):
			if lost && !c.cur && !p.terminalAt(c.di, p.allocs[c.i].ID, gp.job.Version) {
				// Finished an older version; an update would run the new
				// one on a lost device: run it elsewhere instead.
				p.stop = append(p.stop, p.allocs[c.i])
				continue
			}
		case p.devs[c.di].Presence != protocol.Online:
			c.lostAway = lost
			c.away = lost || c.named
		}
		if c.away {
			away = append(away, k)
		} else {
			present = append(present, k)
		}
	}

	survivor := append(p.dsurvivor[:0], make([]bool, len(info))...)
	p.dsurvivor = survivor
	winner, updated, held := p.resolve(gp, info, present, related)
	if winner >= 0 {
		survivor[winner] = true
	}
	slices.SortStableFunc(away, func(x, y int) int { return cmp.Compare(info[y].depth, info[x].depth) })
	target := -1 // the deepest away survivor
	for _, k := range away {
		c := &info[k]
		namedBySurvivor := false
		for j := range info {
			if survivor[j] && info[j].target == k {
				namedBySurvivor = true
				break
			}
		}
		switch {
		case c.lostAway || namedBySurvivor:
			dem := p.ownDemand(gp, c.cand)
			if !p.fits(c.di, dem) {
				p.stop = append(p.stop, p.allocs[c.i])
				continue
			}
			p.reserveDemand(c.di, dem)
			survivor[k] = true
			if target < 0 {
				target = k
			}
		case winner < 0:
			// Its replacement is gone: an ordinary disconnected allocation.
			winner, updated, held = p.resolve(gp, info, []int{k}, related)
			if winner >= 0 {
				survivor[winner] = true
			}
		default:
			p.stop = append(p.stop, p.allocs[c.i]) // another allocation holds the slot
		}
	}

	if winner >= 0 && target < 0 && updated == nil && !held {
		// Nothing else left in the slot and a failed winner: rescheduled
		// as judgeSlot would, so that the next plan does not decide
		// otherwise.
		if c := info[winner]; (c.target < 0 || !survivor[c.target]) && p.reschedule(gp, slot, c.cand) {
			survivor[winner] = false
			winner = -1
		}
	}
	for k := range info {
		if !survivor[k] {
			continue
		}
		c := &info[k]
		a := &p.allocs[c.i]
		mark := a.Replaces
		if c.target < 0 || !survivor[c.target] {
			mark = ""
		}
		switch {
		case k == winner && held:
			// A destructive update the rollout decides: hold already
			// admitted it at its own demand.
			h := &gp.roll.held[len(gp.roll.held)-1]
			h.slot, h.mark = slot, mark
			if target < 0 && mark == "" {
				p.noteDrainable(gp, drainHeld, len(gp.roll.held)-1, slot, c.cand, h.terminal)
			}
			continue
		case k == winner && updated != nil:
			updated.Replaces = mark
			p.update = append(p.update, *updated)
			p.updateDev = append(p.updateDev, c.di)
		case mark != a.Replaces:
			u := *a
			u.Replaces = mark
			p.update = append(p.update, u)
			p.updateDev = append(p.updateDev, c.di)
		default:
			p.keep = append(p.keep, c.i)
			p.keepDev = append(p.keepDev, c.di)
		}
		if k == winner {
			p.count(gp, c.di, a.ID) // the winner runs the job's version; frozen ones are not counted
			if target < 0 && mark == "" {
				// Nothing else left in the slot: the next plan sees an
				// ordinary allocation, which a drain moves.
				kind, pos, terminal := drainKept, len(p.keep)-1, isTerminal(c.state)
				if updated != nil || mark != a.Replaces {
					kind, pos = drainUpdated, len(p.update)-1
					terminal = p.terminalAt(c.di, a.ID, gp.job.Version)
				}
				p.noteDrainable(gp, kind, pos, slot, c.cand, terminal)
			}
		}
	}
	switch {
	case winner >= 0:
		gp.take(slot)
	case target >= 0:
		if gp.targets == nil {
			gp.targets = map[int]string{}
		}
		gp.targets[slot] = p.allocs[info[target].i].ID
	}
}

// resolve picks at most one survivor among candidates of a slot, the way
// judgeSlot and updatePass do: a complete batch or sysbatch allocation, else
// the first current one admitted, else the first stale one admitted with
// the job's version, type and tasks. The others stop. When related (the
// slot holds an original and its replacement), candidates are tried in
// reconcileOrder, else in the given order. It returns the survivor's index
// (-1 for none) and, when it was updated, its new form; held is set when
// the survivor awaits a destructive update of its group's rollout instead
// (see hold).
func (p *planner) resolve(gp *groupPlan, info []dcand, idx []int, related bool) (winner int, updated *Alloc, held bool) {
	order := idx
	if related && len(idx) > 1 {
		order = p.reconcileOrder(gp, info, idx)
	}
	keepAt := -1
	for _, k := range order {
		if gp.done(info[k].cand) {
			keepAt = k
			break
		}
	}
	var stale []int
	for _, k := range order {
		c := info[k].cand
		switch {
		case k == keepAt:
		case keepAt >= 0:
			p.stop = append(p.stop, p.allocs[c.i])
		case !c.cur:
			stale = append(stale, k)
		case p.admit(gp, c.di, isTerminal(c.state)):
			keepAt = k
		default:
			p.stop = append(p.stop, p.allocs[c.i])
		}
	}
	if keepAt >= 0 {
		for _, k := range stale {
			p.stop = append(p.stop, p.allocs[info[k].i])
		}
		return keepAt, nil, false
	}
	for n, k := range stale {
		c := info[k].cand
		if gp.roll != nil && !gp.inPlace(&p.allocs[c.i]) && p.hold(gp, c, -1, "") {
			for _, rest := range stale[n+1:] {
				p.stop = append(p.stop, p.allocs[info[rest].i])
			}
			return k, nil, true
		}
		u := p.allocs[c.i]
		u.JobVersion = gp.job.Version
		u.Type = gp.typ
		u.Tasks = gp.tasks
		if p.admit(gp, c.di, p.terminalAt(c.di, u.ID, u.JobVersion)) {
			for _, rest := range stale[n+1:] {
				p.stop = append(p.stop, p.allocs[info[rest].i])
			}
			return k, &u, false
		}
		p.stop = append(p.stop, p.allocs[c.i])
	}
	return -1, nil, false
}

// reconcileOrder orders the candidates of a slot holding an original and its
// replacement by preference: the winner of a tournament by the group's
// reconcile strategy first (candidates taken from the least replaced to the
// most, each challenger a replacement of the one it challenges), then the
// winner among the rest, and so on; failed allocations go last.
func (p *planner) reconcileOrder(gp *groupPlan, info []dcand, idx []int) []int {
	rem := slices.Clone(idx)
	slices.SortStableFunc(rem, func(x, y int) int { return cmp.Compare(info[x].depth, info[y].depth) })
	order := make([]int, 0, len(rem))
	for len(rem) > 0 {
		w := 0
		for k := 1; k < len(rem); k++ {
			if p.replacementWins(gp, &info[rem[w]], &info[rem[k]]) {
				w = k
			}
		}
		order = append(order, rem[w])
		rem = slices.Delete(rem, w, w+1)
	}
	slices.SortStableFunc(order, func(x, y int) int {
		return cmp.Compare(boolInt(info[x].state == protocol.AllocFailed), boolInt(info[y].state == protocol.AllocFailed))
	})
	return order
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// replacementWins applies the group's reconcile strategy to an original and
// its replacement (after Nomad's reconnecting picker):
//
//   - keep_original, keep_replacement: that one.
//   - best_score (the default): the replacement if its bin packing score on
//     its device (given every allocation kept so far, neither of the two
//     included) is higher than the original's on its own, unless the
//     original is reported running and the replacement is not; ties keep
//     the original.
//   - longest_running: the one whose earliest task start (StartedAt in its
//     device's last report, whatever version it reports) is older; one whose
//     start is unknown loses to one whose start is known; when neither is
//     known, or they are equal, the original. Start times come from two
//     devices' clocks.
func (p *planner) replacementWins(gp *groupPlan, orig, repl *dcand) bool {
	switch gp.strategy {
	case protocol.ReconcileKeepOriginal:
		return false
	case protocol.ReconcileKeepReplacement:
		return true
	case protocol.ReconcileLongestRunning:
		to, knownO := p.startedAt(orig.cand)
		tr, knownR := p.startedAt(repl.cand)
		if knownO && knownR {
			return tr.Before(to)
		}
		return knownR
	default:
		so, sr := p.reconnectScore(gp, orig.di), p.reconnectScore(gp, repl.di)
		return sr > so && (repl.state == protocol.AllocRunning || orig.state != protocol.AllocRunning)
	}
}

// reconnectScore is the bin packing key of one more instance of a group on a
// device, given what is reserved there so far.
func (p *planner) reconnectScore(gp *groupPlan, di int32) int64 {
	return p.binPack.key(capacity(p.devs[di]), p.used[di].add(gp.spec.demand.res))
}

// startedAt is the earliest start of an allocation's tasks in its device's
// last report, if any is known.
func (p *planner) startedAt(c cand) (time.Time, bool) {
	st, ok := p.devs[c.di].Reported[p.allocs[c.i].ID]
	if !ok {
		return time.Time{}, false
	}
	var first time.Time
	known := false
	for _, t := range st.Tasks {
		if t.StartedAt != nil && (!known || t.StartedAt.Before(first)) {
			first, known = *t.StartedAt, true
		}
	}
	return first, known
}

// ownDemand is what an allocation itself reserves: its group's demand when
// it runs the group's tasks, else its own tasks' (a frozen stale one).
func (p *planner) ownDemand(gp *groupPlan, c cand) *demand {
	if c.cur {
		return &gp.spec.demand
	}
	d := demandOf(p.allocs[c.i].Tasks)
	return &d
}

// fits reports whether a demand fits on a device besides what is reserved.
func (p *planner) fits(di int32, dem *demand) bool {
	d := p.devs[di]
	if fitReason(capacity(d), p.used[di], dem.res) != "" {
		return false
	}
	for _, dc := range dem.devices {
		var used int
		if p.usedDev != nil && p.usedDev[di] != nil {
			used = p.usedDev[di][dc.name]
		}
		if used+dc.count > d.Resources[dc.name] {
			return false
		}
	}
	return true
}

// connectivity fills in Plan.Lost, Disconnected, LostByJob and NextEval from
// the plan's allocations on devices that are not online.
func (p *planner) connectivity(plan *Plan, byID map[string]*jobPlan) {
	allocs := plan.Allocations
	// The allocations of each device that is not online, found by binary
	// search (Allocations is sorted by device), classified in a first pass
	// so that the lists are allocated once.
	type span struct{ lo, hi int }
	var spans []span
	const (
		skip = iota
		disconnected
		lost
	)
	var class []uint8
	nLost, nDisc := 0, 0
	for i, d := range p.devs {
		if d.Presence == protocol.Online {
			continue
		}
		lo, _ := slices.BinarySearchFunc(allocs, d.ID, func(a Alloc, id string) int { return strings.Compare(a.Device, id) })
		hi := lo
		for hi < len(allocs) && allocs[hi].Device == d.ID {
			a := &allocs[hi]
			c := uint8(disconnected)
			switch gp := byID[a.Job].group(a.Group); {
			case p.terminalAt(int32(i), a.ID, a.JobVersion):
				c = skip
			case gp != nil && !d.OfflineSince.IsZero():
				at := d.OfflineSince.Add(gp.lostAfter)
				if !p.now.Before(at) {
					c = lost
				} else if plan.NextEval.IsZero() || at.Before(plan.NextEval) {
					plan.NextEval = at
				}
			}
			switch c {
			case lost:
				nLost++
			case disconnected:
				nDisc++
			}
			class = append(class, c)
			hi++
		}
		if hi > lo {
			spans = append(spans, span{lo: lo, hi: hi})
		}
	}
	if nLost > 0 {
		plan.Lost = make([]Alloc, 0, nLost)
		plan.LostByJob = map[string]int{}
	}
	if nDisc > 0 {
		plan.Disconnected = make([]Alloc, 0, nDisc)
	}
	k := 0
	for _, sp := range spans {
		for i := sp.lo; i < sp.hi; i, k = i+1, k+1 {
			switch class[k] {
			case lost:
				plan.Lost = append(plan.Lost, allocs[i])
				plan.LostByJob[allocs[i].Job]++
			case disconnected:
				plan.Disconnected = append(plan.Disconnected, allocs[i])
			}
		}
	}
}
