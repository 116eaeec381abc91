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
// demand instead of updating it (see hold). Then, before placePass:
//
//  1. gateJob decides, job by job, which held allocations are updated now
//     and which are deferred (kept as they are, listed in Plan.Deferred).
//     The budget is max_parallel minus the group's allocations in flight
//     (kept, updated in place, or forced; see hold) and its missing
//     instances (the slots placePass will fill now or when room appears).
//  2. applyUpdates gives the chosen ones the job's version (see there for
//     one whose new demand does not fit its device).
//
// Deciding before placePass lets the placements see what the updates free
// and take, as without an update block. An instance this plan moves or
// places is missing until placed and in flight until healthy, so the next
// plan updates no more than this one left room for: a plan fed back changes
// nothing. After placePass, finishRollout computes each job's
// protocol.Rollout from the final counts.

// rolloutGroup is the rollout state of a group with an update block (of a
// service or system job; validation refuses update blocks elsewhere and
// Compute ignores them).
type rolloutGroup struct {
	policy protocol.UpdatePolicy
	held   []heldAlloc // destructive update candidates, held at their own demand
	n      tally       // the group's allocations at the job's version so far
	pre    tally       // n when gateJob decided
	// missing counts the instances the group lacks when gateJob decides:
	// slots to place (a service group's free indices, the feasible devices
	// without a system group's allocation), in this plan or when room
	// appears. They take max_parallel slots like allocations in flight.
	missing int

	canaries int
	promoted bool
	canary   bool // in the canary phase: not promoted, canaries wanted
	budget   int  // left for updates on offline devices that do not fit
	deferred []deferral
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
	reason string // "" while it waits for max_parallel or promotion: see finishRollout
}

// chosenUpdate is a held allocation gateJob lets through.
type chosenUpdate struct {
	gp      *groupPlan
	h       heldAlloc
	offline bool // offline: skip, taking no budget unless it does not fit
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

// uncount undoes count, for an allocation that leaves the plan.
func (p *planner) uncount(gp *groupPlan, di int32, id string) {
	r := gp.roll
	if r == nil {
		return
	}
	r.n.updated--
	switch p.health(di, id, gp.job.Version) {
	case protocol.Healthy:
		r.n.healthy--
	case protocol.Unhealthy:
		r.n.unhealthy--
	default:
		if p.devs[di].Presence == protocol.Online {
			r.n.inFlight--
		} else {
			r.n.offline--
		}
	}
}

// hold admits a destructive update candidate at its own demand, as a kept
// allocation, if it respects the distinct constraints and fits. One that
// cannot stay as it is (the snapshot over-commits its device) is not held:
// the caller updates it at once if the new demand fits, else stops it, as
// without an update block.
func (p *planner) hold(gp *groupPlan, c cand, slot int, mark string) bool {
	h := heldAlloc{i: c.i, di: c.di, slot: slot, mark: mark, terminal: isTerminal(c.state)}
	if !h.terminal {
		dem := demandOf(p.allocs[c.i].Tasks)
		if p.distinctReason(gp, c.di) != "" || !p.fits(c.di, &dem) {
			return false
		}
		p.reserveDemand(c.di, &dem)
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

// finishHeld gives a released held allocation the job's version, type and
// tasks on its device, if the new demand fits there.
func (p *planner) finishHeld(gp *groupPlan, h heldAlloc) bool {
	u := p.allocs[h.i]
	u.JobVersion, u.Type, u.Tasks, u.Replaces = gp.job.Version, gp.typ, gp.tasks, h.mark
	if !p.admit(gp, h.di, p.terminalAt(h.di, u.ID, u.JobVersion)) {
		return false
	}
	p.update = append(p.update, u)
	p.updateDev = append(p.updateDev, h.di)
	p.count(gp, h.di, u.ID)
	return true
}

// stopHeld stops a released held allocation whose update did not fit its
// device, freeing its slot for placement.
func (p *planner) stopHeld(gp *groupPlan, h heldAlloc) {
	p.stop = append(p.stop, p.allocs[h.i])
	gp.free(h.slot)
	if h.mark != "" {
		// The placement takes over the away allocation it replaced.
		if gp.targets == nil {
			gp.targets = map[int]string{}
		}
		gp.targets[h.slot] = h.mark
	}
}

// rehold takes back what a released held allocation reserved, right after
// release (so that it fits).
func (p *planner) rehold(gp *groupPlan, h heldAlloc) {
	if !h.terminal {
		dem := demandOf(p.allocs[h.i].Tasks)
		p.reserveDemand(h.di, &dem)
		p.noteLive(gp, h.di)
	}
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
	gp.roll.deferred = append(gp.roll.deferred, deferral{alloc: a, di: h.di, reason: reason})
}

// inputRollout is the job's input rollout when it is of the job's version.
func inputRollout(j *Job) *protocol.Rollout {
	if in := j.Rollout; in != nil && in.Version == j.Version {
		return in
	}
	return nil
}

// rolled returns the groups of a job that have a rollout.
func rolled(groups []*groupPlan) []*groupPlan {
	var gs []*groupPlan
	for _, gp := range groups {
		if gp.roll != nil {
			gs = append(gs, gp)
		}
	}
	return gs
}

// progress is where a job's rollout stands before the plan's updates:
// whether it is final (input failed or successful, or failing now), and the
// ProgressAt the deadline counts from. ProgressAt is the input's (now for a
// version no plan has seen), moved to now when the job's healthy
// allocations grew since the input, or while none is in flight: the
// deadline only runs while allocations are updating, so a rollout that
// waited (for an offline device, for promotion) gets its full deadline
// back.
func (p *planner) progress(j *Job, gs []*groupPlan) (state protocol.RolloutState, why string, progressAt time.Time) {
	in := inputRollout(j)
	state, progressAt = protocol.RolloutRunning, p.now
	if in != nil {
		progressAt = in.ProgressAt
		if in.Done() {
			state, why = in.State, in.Description
		}
	}
	healthy, inFlight := 0, 0
	for _, gp := range gs {
		healthy += gp.roll.pre.healthy
		inFlight += gp.roll.pre.inFlight
	}
	if in != nil {
		before := 0
		for _, ig := range in.Groups {
			before += ig.Healthy
		}
		if healthy > before {
			progressAt = p.now
		}
	}
	final := state == protocol.RolloutFailed || state == protocol.RolloutSuccessful
	if !final && inFlight == 0 {
		progressAt = p.now
	}
	if !final {
		if w := p.failure(gs, func(r *rolloutGroup) tally { return r.pre }, progressAt); w != "" {
			state, why = protocol.RolloutFailed, w
		}
	}
	return state, why, progressAt
}

// gateJob decides the held allocations of a job's groups with a rollout,
// appending the chosen ones to chosen.
func (p *planner) gateJob(j *Job, groups []*groupPlan, chosen []chosenUpdate) []chosenUpdate {
	gs := rolled(groups)
	if len(gs) == 0 {
		return chosen
	}
	for _, gp := range gs {
		gp.roll.pre = gp.roll.n
		gp.roll.missing = p.missing(gp)
	}
	state, _, _ := p.progress(j, gs)
	in := inputRollout(j)
	for _, gp := range gs {
		r := gp.roll
		r.canaries = r.policy.Canary
		if ig := inputGroup(in, gp.group.Name); ig != nil {
			r.canaries, r.promoted = ig.Canaries, ig.Promoted
		} else if len(r.held) == 0 {
			r.canaries = 0 // the version arrives by placement: no canaries
		}
		chosen = p.gate(gp, state, chosen)
	}
	return chosen
}

// missing counts the instances a group lacks before placePass: its free
// slots, or for a system group the devices placeEveryDevice will try.
func (p *planner) missing(gp *groupPlan) int {
	if !gp.everyDevice() {
		return len(gp.taken) - gp.takenN
	}
	n := 0
	for i := range p.devs {
		di := int32(i)
		if !gp.taken[di] && p.placeReason(gp, di) == "" && p.distinctReason(gp, di) == "" {
			n++
		}
	}
	return n
}

// gate decides the held allocations of one group, in device then id order:
// chosen for an update now, or deferred with a reason ("" for max_parallel,
// filled in once the group's final count is known).
//
// Canaries: while the version is not promoted and the group wants
// canaries, at most that many of its instances (but no more than it has)
// may be at the job's version, counting every allocation there and every
// missing instance (placed at the version when it can be); once all of
// them are there and healthy the version promotes itself (auto_promote) and
// the rollout goes on in the same plan, or the group waits for the
// operator.
func (p *planner) gate(gp *groupPlan, state protocol.RolloutState, chosen []chosenUpdate) []chosenUpdate {
	r := gp.roll
	pol := r.policy
	held := r.held
	slices.SortFunc(held, func(a, b heldAlloc) int {
		return cmp.Or(cmp.Compare(a.di, b.di), strings.Compare(p.allocs[a.i].ID, p.allocs[b.i].ID))
	})
	budget := max(0, pol.MaxParallel-r.pre.inFlight-r.missing)
	canaryPhase := !r.promoted && r.canaries > 0 && state != protocol.RolloutSuccessful
	canaryLeft := 0
	if canaryPhase {
		// Missing instances will run the version once placed: canaries
		// too, not there yet.
		there := r.pre.updated + r.missing
		target := min(r.canaries, there+len(held))
		switch {
		case target == 0 || there < target || r.missing > 0 || r.pre.healthy < r.pre.updated:
			canaryLeft = target - there // none to promote on, or not all there and healthy
		case pol.AutoPromote:
			r.promoted, canaryPhase = true, false
		}
	}
	r.canary = canaryPhase
	awaiting := "awaiting promotion: " + canaries(r.canaries)
	r.deferred = slices.Grow(r.deferred, len(held))
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
			chosen = append(chosen, chosenUpdate{gp: gp, h: h, offline: true})
		case canaryPhase && canaryLeft <= 0:
			p.deferHeld(gp, h, "")
		case budget == 0:
			canaryLeft--
			p.deferHeld(gp, h, "")
		default:
			canaryLeft--
			budget--
			chosen = append(chosen, chosenUpdate{gp: gp, h: h})
		}
	}
	r.budget = budget
	return chosen
}

// applyUpdates gives the chosen allocations the job's version.
//
// One whose new demand does not fit its device stops, and its slot is
// placed again like a new one (a missing instance: see rolloutGroup), but
// not where nothing can be placed again: an allocation of a system group on
// a device that is offline or ineligible, or of a service group on an
// offline device once its group's budget is spent, stays as it is,
// deferred. Those go one by one (released, tried, taken back), first. The
// others release their old demand first, all of them, then each is admitted
// with the new demand or stops, so that one that stopped never finds room
// on its device later in the plan (placePass would give its slot the same
// id there).
func (p *planner) applyUpdates(chosen []chosenUpdate) {
	oneByOne := func(c chosenUpdate) bool {
		return c.offline || c.gp.everyDevice() && p.placeReason(c.gp, c.h.di) != ""
	}
	for _, c := range chosen {
		if !oneByOne(c) {
			continue
		}
		p.release(c.gp, c.h)
		switch r := c.gp.roll; {
		case p.finishHeld(c.gp, c.h):
		case c.gp.everyDevice():
			p.rehold(c.gp, c.h)
			p.deferHeld(c.gp, c.h, fmt.Sprintf("no room for version %d on its device", c.gp.job.Version))
		case r.budget == 0:
			p.rehold(c.gp, c.h)
			p.deferHeld(c.gp, c.h, "")
		default:
			r.budget--
			p.stopHeld(c.gp, c.h)
		}
	}
	for _, c := range chosen {
		if !oneByOne(c) {
			p.release(c.gp, c.h)
		}
	}
	for _, c := range chosen {
		if !oneByOne(c) && !p.finishHeld(c.gp, c.h) {
			p.stopHeld(c.gp, c.h)
		}
	}
}

// finishRollout records a job's rollout in p.rollouts and its deferred
// allocations in p.deferred, from the counts after placePass.
func (p *planner) finishRollout(j *Job, groups []*groupPlan) {
	gs := rolled(groups)
	if len(gs) == 0 {
		return
	}
	state, why, progressAt := p.progress(j, gs)
	out := protocol.Rollout{Version: j.Version, State: state, Description: why, StartedAt: p.now, ProgressAt: progressAt}
	if in := inputRollout(j); in != nil {
		out.StartedAt, out.RevertedTo = in.StartedAt, in.RevertedTo
	}
	if !out.Done() {
		if w := p.failure(gs, func(r *rolloutGroup) tally { return r.n }, out.ProgressAt); w != "" {
			out.State, out.Description = protocol.RolloutFailed, w
		}
	}
	if out.State == protocol.RolloutFailed {
		for _, gp := range gs {
			for k := range gp.roll.deferred {
				gp.roll.deferred[k].reason = reasonRolloutFailed
			}
		}
	}
	pending := 0
	allDone := true
	for _, gp := range gs {
		n, pol := gp.roll.n, gp.roll.policy
		if len(gp.roll.deferred) > 0 || n.unhealthy > 0 || n.inFlight > 0 || (pol.OfflineWait && n.offline > 0) {
			allDone = false
		}
		if n.updated == 0 && gp.status.Desired > 0 {
			// Nothing runs the version yet (nothing could be placed): a
			// rollout that reached no device did not succeed.
			allDone = false
		}
		if !pol.OfflineWait {
			pending += n.offline
		}
	}
	switch {
	case out.Done():
	case allDone:
		out.State, out.Description = protocol.RolloutSuccessful, "every allocation healthy"
		if pending > 0 {
			out.Description += fmt.Sprintf(", %d pending on offline devices", pending)
		}
	default:
		for _, gp := range gs {
			if gp.roll.awaitsPromotion(unplaced(gp)) {
				out.State = protocol.RolloutPaused
				out.Description = groupPrefix(gs, gp) + fmt.Sprintf("%s healthy; promote with `tether job promote %s`", canaries(gp.roll.canaries), j.Job.ID)
				break
			}
		}
	}
	for _, gp := range gs {
		r := gp.roll
		if len(r.deferred) > 0 {
			// Named from the final counts, which the next plan starts
			// from: the canaries are all there, or the budget is spent.
			busy := fmt.Sprintf("max_parallel %d: %d updating", r.policy.MaxParallel, r.n.inFlight)
			if n := unplaced(gp); n > 0 {
				busy += fmt.Sprintf(", %d unplaced", n)
			}
			if there := r.n.updated + unplaced(gp); r.canary && there >= min(r.canaries, there+len(r.deferred)) {
				busy = "awaiting promotion: " + canaries(r.canaries)
			}
			for k := range r.deferred {
				if r.deferred[k].reason == "" {
					r.deferred[k].reason = busy
				}
			}
		}
		if out.State == protocol.RolloutRunning && out.Description == "" && len(r.deferred) > 0 {
			out.Description = groupPrefix(gs, gp) + fmt.Sprintf("%d waiting: %s", len(r.deferred), r.deferred[0].reason)
		}
		p.deferred = append(p.deferred, r.deferred...)
		rg := protocol.RolloutGroup{
			Name: gp.group.Name, Total: gp.status.Desired, Canaries: r.canaries, Promoted: r.promoted,
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

// awaitsPromotion reports whether the group waits for the operator: every
// canary is there and healthy (by the final counts, which the next plan
// starts from), the rest waits.
func (r *rolloutGroup) awaitsPromotion(unplaced int) bool {
	target := min(r.canaries, r.n.updated+unplaced+len(r.deferred))
	return r.canary && !r.policy.AutoPromote && len(r.deferred) > 0 && target > 0 && unplaced == 0 &&
		r.n.updated >= target && r.n.healthy == r.n.updated
}

// unplaced is how many instances a group lacks after placePass: the next
// plan's missing ones.
func unplaced(gp *groupPlan) int { return gp.status.Desired - gp.status.Placed }

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
func groupPrefix(gs []*groupPlan, gp *groupPlan) string {
	if len(gs) < 2 {
		return ""
	}
	return "group " + gp.group.Name + ": "
}

// failure says why a rollout fails given its groups' counts, "" when it
// does not: the first group (in document order) crossing its abort
// threshold, else the first with allocations in flight past its progress
// deadline.
func (p *planner) failure(gs []*groupPlan, counts func(*rolloutGroup) tally, progressAt time.Time) string {
	for _, gp := range gs {
		n, pol := counts(gp.roll), gp.roll.policy
		if pol.Aborts(n.unhealthy, n.updated) {
			return groupPrefix(gs, gp) + fmt.Sprintf("%d of %d updated allocations unhealthy (%s)", n.unhealthy, n.updated, abortThreshold(pol))
		}
	}
	for _, gp := range gs {
		n, pol := counts(gp.roll), gp.roll.policy
		if n.inFlight > 0 && !p.now.Before(progressAt.Add(pol.ProgressDeadline)) {
			return groupPrefix(gs, gp) + fmt.Sprintf("no allocation became healthy within progress_deadline %s", pol.ProgressDeadline)
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
