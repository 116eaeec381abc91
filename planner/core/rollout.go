package core

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// Rollouts (protocol.Update), after Nomad's update block. Only the
// destructive updates of a group with an update block are gated: an
// allocation of an older version whose tasks or type differ from the job's.
// Everything else reaches the job's version at once as without an update
// block: new slots (initial placement, a raised count, replacements of lost
// allocations, drain moves) and in-place updates (only the version changes,
// edged restarts nothing).
//
// updatePass holds each destructive update candidate at its own (old)
// demand instead of updating it (see hold). After placePass, rolloutJob
// decides for the held allocations of each job, in device then id order,
// which are updated now and which are deferred (kept as they are, listed in
// Plan.Deferred), and computes the job's protocol.Rollout. Deciding after
// the placements lets the budget see every allocation this plan put at the
// job's version, so that a plan fed back changes nothing.

// rolloutGroup is the rollout state of a group with an update block (of a
// service or system job; validation refuses update blocks elsewhere and
// Compute ignores them).
type rolloutGroup struct {
	policy protocol.UpdatePolicy
	held   []heldAlloc // destructive update candidates, held at their own demand
	n      tally       // the group's allocations at the job's version so far
}

// heldAlloc is an allocation awaiting a destructive update.
type heldAlloc struct {
	i        int32 // index in planner.allocs
	di       int32 // device index
	slot     int
	mark     string // its Replaces mark in the plan (a disconnect slot may clear it)
	terminal bool   // reported complete or failed at its version: reserves nothing
}

// tally counts a group's allocations at the job's version, by health.
type tally struct {
	updated   int
	healthy   int
	unhealthy int
	inFlight  int // undecided, on an online device
	offline   int // undecided, on a device that is not online
}

// deferral is an allocation of the plan left at an older version.
type deferral struct {
	alloc  Alloc
	di     int32
	job    string
	reason string // "" while it waits for max_parallel: filled in by rolloutJob
}

// Deferral reasons.
const (
	reasonRolloutFailed = "rollout failed"
	reasonOfflineWait   = "device offline (offline: wait)"
	reasonDraining      = "device draining"
)

// newRolloutGroup returns the rollout state of a group, or nil when its
// updates are not gated.
func newRolloutGroup(typ protocol.JobType, g *protocol.Group) *rolloutGroup {
	if typ != protocol.JobService && typ != protocol.JobSystem {
		return nil
	}
	pol, ok := g.UpdatePolicy()
	if !ok {
		return nil
	}
	return &rolloutGroup{policy: pol}
}

// inPlace reports whether bringing a stale allocation to the job's version
// changes only its version: edged restarts nothing.
func (gp *groupPlan) inPlace(a *Alloc) bool {
	return a.Type == gp.typ && sameTasks(a.Tasks, gp.group.Tasks)
}

// health is a device's verdict on an allocation at a version: its reported
// Health, "" when undecided or reported about another version. An
// allocation reported failed without a verdict is unhealthy.
func (p *planner) health(di int32, id string, version uint64) protocol.Health {
	st, ok := p.devs[di].Reported[id]
	if !ok || st.JobVersion != version {
		return ""
	}
	if st.Health == "" && st.State == protocol.AllocFailed {
		return protocol.Unhealthy
	}
	return st.Health
}

// count tallies an allocation of a group with a rollout that is at the
// job's version in the plan (kept, updated or placed).
func (p *planner) count(gp *groupPlan, di int32, id string) {
	r := gp.roll
	if r == nil {
		return
	}
	r.n.updated++
	switch p.health(di, id, gp.job.Version) {
	case protocol.Healthy:
		r.n.healthy++
	case protocol.Unhealthy:
		r.n.unhealthy++
	default:
		if p.devs[di].Presence == protocol.Online {
			r.n.inFlight++
		} else {
			r.n.offline++
		}
	}
}

// hold admits a destructive update candidate at its own demand, as a kept
// allocation: it respects the distinct constraints and fits, or it stops.
func (p *planner) hold(gp *groupPlan, c cand, slot int, mark string) bool {
	h := heldAlloc{i: c.i, di: c.di, slot: slot, mark: mark, terminal: isTerminal(c.state)}
	if !h.terminal {
		dem := p.ownDemand(gp, c)
		if p.distinctReason(gp, c.di) != "" || !p.fits(c.di, dem) {
			return false
		}
		p.reserveDemand(c.di, dem)
		p.noteLive(gp, c.di)
	}
	gp.roll.held = append(gp.roll.held, h)
	return true
}

// release gives back what a held allocation reserves.
func (p *planner) release(gp *groupPlan, h heldAlloc) {
	if h.terminal {
		return
	}
	dem := demandOf(p.allocs[h.i].Tasks)
	p.unreserveDemand(h.di, &dem)
	p.unnoteLive(gp, h.di)
}

// unreserveDemand gives a demand back on a device.
func (p *planner) unreserveDemand(di int32, dem *demand) {
	r := dem.res
	p.used[di] = p.used[di].add(resources{CPU: -r.CPU, Memory: -r.Memory, Disk: -r.Disk})
	for _, dc := range dem.devices {
		p.usedDev[di][dc.name] -= dc.count
	}
}

// unnoteLive undoes noteLive.
func (p *planner) unnoteLive(gp *groupPlan, di int32) {
	if gp.spec.distinctHosts {
		gp.hostCount[di]--
	}
	for k := range gp.spec.distinctProps {
		if v, set := gp.spec.distinctProps[k].attr.value(p.devs[di]); set {
			gp.propCount[k][v]--
		}
	}
	if len(gp.spec.spreads) > 0 {
		if i := slices.Index(gp.live, di); i >= 0 {
			gp.live = slices.Delete(gp.live, i, i+1)
		}
	}
}

// update gives a held allocation the job's version, type and tasks on its
// device. When the new demand does not fit there, the allocation stops and
// its slot is freed for placement (it returns false); with keepIfNoRoom it
// is held again instead and left as it is (it returns false too).
func (p *planner) updateHeld(gp *groupPlan, h heldAlloc, keepIfNoRoom bool) (updated, stopped bool) {
	a := p.allocs[h.i]
	p.release(gp, h)
	u := a
	u.JobVersion, u.Type, u.Tasks, u.Replaces = gp.job.Version, gp.typ, gp.tasks, h.mark
	if p.admit(gp, h.di, p.terminalAt(h.di, u.ID, u.JobVersion)) {
		p.update = append(p.update, u)
		p.updateDev = append(p.updateDev, h.di)
		p.count(gp, h.di, u.ID)
		return true, false
	}
	if keepIfNoRoom {
		if !h.terminal {
			dem := demandOf(a.Tasks)
			p.reserveDemand(h.di, &dem)
			p.noteLive(gp, h.di)
		}
		return false, false
	}
	p.stop = append(p.stop, a)
	gp.free(h.slot)
	if h.mark != "" {
		// The placement takes over the away allocation it replaced.
		if gp.targets == nil {
			gp.targets = map[int]string{}
		}
		gp.targets[h.slot] = h.mark
	}
	return false, true
}

// deferHeld leaves a held allocation as it is: kept, or updated when only
// its Replaces mark was cleared.
func (p *planner) deferHeld(gp *groupPlan, h heldAlloc, reason string) {
	a := p.allocs[h.i]
	if h.mark != a.Replaces {
		a.Replaces = h.mark
		p.update = append(p.update, a)
		p.updateDev = append(p.updateDev, h.di)
	} else {
		p.keep = append(p.keep, h.i)
		p.keepDev = append(p.keepDev, h.di)
	}
	p.deferred = append(p.deferred, deferral{alloc: a, di: h.di, job: gp.job.Job.ID, reason: reason})
}

// groupRollout is what rolloutJob works out for one group.
type groupRollout struct {
	gp       *groupPlan
	pre      tally // before the destructive updates of this plan
	canaries int
	promoted bool
	waiting  bool // every canary healthy, the version awaits promotion
	stale    int  // held allocations left at an older version
	from     int  // first of the group's entries in planner.deferred
}

// rolloutJob gates the destructive updates of a job's groups that have an
// update block and records the job's rollout in p.rollouts. It runs after
// placePass, so that the allocations of the group at the job's version are
// all known: kept, updated in place, placed.
func (p *planner) rolloutJob(j *Job, groups []*groupPlan) {
	var gs []groupRollout
	for _, gp := range groups {
		if gp.roll != nil {
			gs = append(gs, groupRollout{gp: gp, pre: gp.roll.n})
		}
	}
	if len(gs) == 0 {
		return
	}
	now := p.now
	in := j.Rollout
	if in != nil && in.Version != j.Version {
		in = nil
	}
	out := protocol.Rollout{Version: j.Version, State: protocol.RolloutRunning, StartedAt: now, ProgressAt: now}
	if in != nil {
		out.StartedAt, out.ProgressAt, out.RevertedTo = in.StartedAt, in.ProgressAt, in.RevertedTo
		if in.Done() {
			out.State, out.Description = in.State, in.Description
		}
	}
	healthy, inFlight := 0, 0
	for _, g := range gs {
		healthy += g.pre.healthy
		inFlight += g.pre.inFlight
	}
	if in != nil {
		before := 0
		for _, ig := range in.Groups {
			before += ig.Healthy
		}
		if healthy > before {
			out.ProgressAt = now
		}
	}
	if !out.Done() && inFlight == 0 {
		// Nothing updating, nothing can make progress: the deadline only
		// runs while allocations are in flight.
		out.ProgressAt = now
	}
	if !out.Done() {
		if why := p.failure(gs, func(g *groupRollout) tally { return g.pre }, out.ProgressAt); why != "" {
			out.State, out.Description = protocol.RolloutFailed, why
		}
	}

	for k := range gs {
		g := &gs[k]
		g.canaries, g.promoted = g.gp.roll.policy.Canary, false
		if ig := inputGroup(in, g.gp.group.Name); ig != nil {
			g.canaries, g.promoted = ig.Canaries, ig.Promoted
		} else if len(g.gp.roll.held) == 0 {
			g.canaries = 0 // the version arrives by placement: no canaries
		}
		g.from = len(p.deferred)
		p.gate(g, out.State)
		g.stale = len(p.deferred) - g.from
	}

	// The final state, from the counts after the updates.
	if !out.Done() {
		if why := p.failure(gs, func(g *groupRollout) tally { return g.gp.roll.n }, out.ProgressAt); why != "" {
			out.State, out.Description = protocol.RolloutFailed, why
			for k := range gs {
				for i := gs[k].from; i < gs[k].from+gs[k].stale; i++ {
					p.deferred[i].reason = reasonRolloutFailed
				}
			}
		}
	}
	pending, waiting := 0, 0
	allDone := true
	for _, g := range gs {
		n, pol := g.gp.roll.n, g.gp.roll.policy
		if g.stale > 0 || n.unhealthy > 0 || n.inFlight > 0 || (pol.OfflineWait && n.offline > 0) {
			allDone = false
		}
		if !pol.OfflineWait {
			pending += n.offline
		}
		waiting += g.stale
	}
	switch {
	case out.Done():
	case allDone:
		out.State, out.Description = protocol.RolloutSuccessful, "every allocation healthy"
		if pending > 0 {
			out.Description += fmt.Sprintf(", %d pending on offline devices", pending)
		}
	default:
		out.State, out.Description = protocol.RolloutRunning, ""
		for _, g := range gs {
			if g.waiting {
				out.State = protocol.RolloutPaused
				out.Description = groupPrefix(gs, g.gp) + fmt.Sprintf("%s healthy; promote with `tether job promote %s`", canaries(g.canaries), j.Job.ID)
				break
			}
		}
	}

	for k := range gs {
		g := &gs[k]
		r := g.gp.roll
		for i := g.from; i < g.from+g.stale; i++ {
			if p.deferred[i].reason == "" {
				p.deferred[i].reason = fmt.Sprintf("max_parallel %d: %d updating", r.policy.MaxParallel, r.n.inFlight)
			}
		}
		if out.State == protocol.RolloutRunning && out.Description == "" && g.stale > 0 {
			out.Description = groupPrefix(gs, g.gp) + fmt.Sprintf("%d waiting: %s", g.stale, p.deferred[g.from].reason)
		}
		rg := protocol.RolloutGroup{
			Name: g.gp.group.Name, Total: g.gp.status.Desired, Canaries: g.canaries, Promoted: g.promoted,
			Updated: r.n.updated, Healthy: r.n.healthy, Unhealthy: r.n.unhealthy,
		}
		if !r.policy.OfflineWait {
			rg.PendingOffline = r.n.offline
		}
		out.Groups = append(out.Groups, rg)
		if out.State == protocol.RolloutRunning && r.n.inFlight > 0 {
			if at := out.ProgressAt.Add(r.policy.ProgressDeadline); p.rolloutEval.IsZero() || at.Before(p.rolloutEval) {
				p.rolloutEval = at
			}
		}
	}
	if p.rollouts == nil {
		p.rollouts = map[string]protocol.Rollout{}
	}
	p.rollouts[j.Job.ID] = out
}

// canaries is "1 canary", "2 canaries".
func canaries(n int) string {
	if n == 1 {
		return "1 canary"
	}
	return strconv.Itoa(n) + " canaries"
}

// inputGroup is the group of the input rollout, nil when there is none.
func inputGroup(in *protocol.Rollout, name string) *protocol.RolloutGroup {
	if in == nil {
		return nil
	}
	for i := range in.Groups {
		if in.Groups[i].Name == name {
			return &in.Groups[i]
		}
	}
	return nil
}

// groupPrefix names the group in a description when the job rolls out
// several.
func groupPrefix(gs []groupRollout, gp *groupPlan) string {
	if len(gs) < 2 {
		return ""
	}
	return "group " + gp.group.Name + ": "
}

// failure says why a rollout fails given its groups' counts, "" when it
// does not: the first group (in document order) crossing its abort
// threshold, else the first with allocations in flight past its progress
// deadline.
func (p *planner) failure(gs []groupRollout, counts func(*groupRollout) tally, progressAt time.Time) string {
	for k := range gs {
		n, pol := counts(&gs[k]), gs[k].gp.roll.policy
		if pol.Aborts(n.unhealthy, n.updated) {
			return groupPrefix(gs, gs[k].gp) + fmt.Sprintf("%d of %d updated allocations unhealthy (%s)", n.unhealthy, n.updated, abortThreshold(pol))
		}
	}
	for k := range gs {
		n, pol := counts(&gs[k]), gs[k].gp.roll.policy
		if n.inFlight > 0 && !p.now.Before(progressAt.Add(pol.ProgressDeadline)) {
			return groupPrefix(gs, gs[k].gp) + fmt.Sprintf("no allocation became healthy within progress_deadline %s", pol.ProgressDeadline)
		}
	}
	return ""
}

// abortThreshold describes a policy's abort threshold: "abort above 10%",
// "abort above 0% once 5 are updated".
func abortThreshold(pol protocol.UpdatePolicy) string {
	pct := strconv.FormatFloat(math.Round(pol.FailureRatio*1e4)/1e2, 'f', -1, 64)
	s := "abort above " + pct + "%"
	if pol.MinDevices > 0 {
		s += fmt.Sprintf(" once %d are updated", pol.MinDevices)
	}
	return s
}

// gate decides the held allocations of one group, in device then id order:
// updated now, or deferred with a reason ("" for max_parallel, filled in
// once the group's final count is known).
func (p *planner) gate(g *groupRollout, state protocol.RolloutState) {
	gp := g.gp
	r := gp.roll
	pol := r.policy
	held := r.held
	slices.SortFunc(held, func(a, b heldAlloc) int {
		return cmp.Or(cmp.Compare(a.di, b.di), strings.Compare(p.allocs[a.i].ID, p.allocs[b.i].ID))
	})
	budget := max(0, pol.MaxParallel-g.pre.inFlight)
	canaryPhase := !g.promoted && g.canaries > 0 && state != protocol.RolloutSuccessful
	canaryLeft := 0
	if canaryPhase {
		target := min(g.canaries, gp.status.Desired)
		switch {
		case g.pre.updated < target || g.pre.healthy < g.pre.updated:
			canaryLeft = target - g.pre.updated
		case pol.AutoPromote:
			g.promoted, canaryPhase = true, false
		default:
			g.waiting = len(held) > 0
		}
	}
	awaiting := "awaiting promotion: " + canaries(g.canaries)
	replace := false
	for _, h := range held {
		d := p.devs[h.di]
		online := d.Presence == protocol.Online
		switch {
		case state == protocol.RolloutFailed:
			p.deferHeld(gp, h, reasonRolloutFailed)
		case d.Draining && gp.movesOnDrain():
			p.deferHeld(gp, h, reasonDraining) // it moves elsewhere: no point updating it here
		case !online && canaryPhase:
			p.deferHeld(gp, h, awaiting) // canaries go to online devices only
		case !online && pol.OfflineWait:
			p.deferHeld(gp, h, reasonOfflineWait)
		case !online:
			// offline: skip. The device applies the version when it
			// returns; that takes no budget, unless the new demand does
			// not fit and the slot must move to an online device.
			if updated, _ := p.updateHeld(gp, h, budget == 0); updated {
				continue
			}
			if budget == 0 {
				p.deferHeld(gp, h, "")
				continue
			}
			budget--
			replace = true
		case canaryPhase && canaryLeft <= 0:
			p.deferHeld(gp, h, awaiting)
		case budget == 0:
			canaryLeft--
			p.deferHeld(gp, h, "")
		default:
			canaryLeft--
			budget--
			if _, stopped := p.updateHeld(gp, h, false); stopped {
				replace = true
			}
		}
	}
	if replace {
		// Updates that did not fit their device stopped: place their slots
		// again, as a group's new slots are.
		gp.status = protocol.GroupStatus{Name: gp.status.Name}
		p.placePass(gp)
	}
}
