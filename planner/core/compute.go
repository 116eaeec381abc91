package core

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// AllocID is the deterministic id of instance index of a job's group on a
// device: "<job>.<group>.<index>-<first 6 hex digits of sha256(device)>".
// System allocations use index 0. The device hash keeps ids unique when an
// instance moves to another device, so a stop and its replacement never
// share an id.
func AllocID(job, group string, index int, device string) string {
	sum := sha256.Sum256([]byte(device))
	return fmt.Sprintf("%s.%s.%d-%s", job, group, index, hex.EncodeToString(sum[:3]))
}

// Compute plans the allocations of every job over every device. It is pure
// and deterministic: it does not modify s, does no I/O, and the same s always
// yields the same Plan (now is only copied into Plan.Now). The Plan shares
// task data with s and must be treated as read-only. See the package
// documentation for the flow; the rules in short:
//
//   - Jobs are handled in id order (for duplicate ids the highest version
//     wins), groups in document order. Every existing allocation is judged
//     (keep, update or stop) before any new one is placed, so that existing
//     allocations keep their resources.
//   - An existing allocation is stopped when its job is stopped or absent,
//     its group is gone, its index is out of range (index >= count, or not 0
//     for a system group), its device is gone or no longer passes the
//     feasibility checks other than presence, or it no longer fits its
//     device. Allocations on offline devices are kept. When several
//     allocations claim one slot (an index, or a device for system groups),
//     one survives: a complete batch allocation, else the first current one
//     (by id) that fits, else the first stale one (by id) whose update fits.
//   - An allocation whose version, type or tasks (by protocol.SpecHash)
//     differ from the job's is updated in place (same id and device, the
//     job's version, type and tasks) when the new demand fits its device;
//     otherwise it is stopped and its slot placed again. A new version
//     re-runs complete batch allocations this way.
//   - A batch allocation reported complete at its version is kept as is,
//     whatever its device has become: it is never restarted or re-placed.
//     Failed allocations are kept too (no rescheduling in this version).
//   - Terminal allocations (reported complete or failed at their version)
//     reserve nothing. A report about another version is about the previous
//     run, so it does not make an updated allocation terminal.
//   - Free slots are placed on the best feasible online device that has room;
//     see rank.go. System groups get one allocation on every such device.
//   - Groups has an entry for every job that is not stopped. Desired is the
//     count for service and batch groups; for system groups it is the number
//     of devices that either run the group already or pass every
//     feasibility check but resources. Placed counts the group's allocations
//     in Plan.Allocations (kept, updated and placed). Unplaced explains the
//     difference; see unplacedMessage.
func Compute(s Snapshot, now time.Time) Plan {
	p := newPlanner(s.Devices)
	jobs := latestJobs(s.Jobs)
	byID := make(map[string]*Job, len(jobs))
	for i := range jobs {
		byID[jobs[i].Job.ID] = &jobs[i]
	}

	// Match existing allocations to their group, in slot order.
	allocs := slices.Clone(s.Allocations)
	slices.SortFunc(allocs, func(a, b Alloc) int {
		return cmp.Or(cmp.Compare(a.Job, b.Job), cmp.Compare(a.Group, b.Group),
			cmp.Compare(a.Index, b.Index), cmp.Compare(a.ID, b.ID), cmp.Compare(a.Device, b.Device))
	})
	type groupKey struct{ job, group string }
	existing := map[groupKey][]Alloc{}
	seen := map[string]string{} // id → device
	for _, a := range allocs {
		if dev, dup := seen[a.ID]; dup {
			if dev != a.Device {
				p.stop = append(p.stop, a) // same id elsewhere: ids must be unique
			}
			continue // an exact duplicate is the same allocation
		}
		seen[a.ID] = a.Device
		j := byID[a.Job]
		if j == nil || j.Stopped || !slices.ContainsFunc(j.Job.Groups, func(g protocol.Group) bool { return g.Name == a.Group }) {
			p.stop = append(p.stop, a)
			continue
		}
		k := groupKey{a.Job, a.Group}
		existing[k] = append(existing[k], a)
	}

	var groups []*groupPlan
	for i := range jobs {
		j := &jobs[i]
		if j.Stopped {
			continue
		}
		for gi := range j.Job.Groups {
			gp := newGroupPlan(j, &j.Job.Groups[gi])
			p.keepPass(gp, existing[groupKey{j.Job.ID, gp.group.Name}])
			groups = append(groups, gp)
		}
	}
	for _, gp := range groups {
		p.updatePass(gp)
	}
	for _, gp := range groups {
		p.placePass(gp)
	}

	plan := Plan{
		Place:  sortByDevice(p.place),
		Update: sortByDevice(p.update),
		Stop:   sortByDevice(p.stop),
		Keep:   sortByDevice(p.keep),
		Groups: map[string][]protocol.GroupStatus{},
		Now:    now,
	}
	all := make([]Alloc, 0, len(p.keep)+len(p.update)+len(p.place))
	all = append(append(append(all, p.keep...), p.update...), p.place...)
	plan.Allocations = sortByDevice(all)
	for i := range jobs {
		if !jobs[i].Stopped {
			plan.Groups[jobs[i].Job.ID] = make([]protocol.GroupStatus, 0, len(jobs[i].Job.Groups))
		}
	}
	for _, gp := range groups {
		plan.Groups[gp.job.Job.ID] = append(plan.Groups[gp.job.Job.ID], gp.status)
	}
	return plan
}

// planner is the working state of one Compute.
type planner struct {
	devices   map[string]*Device
	deviceIDs []string             // sorted
	used      map[string]resources // reserved so far, by device
	keep      []Alloc
	update    []Alloc
	place     []Alloc
	stop      []Alloc
}

func newPlanner(devices []Device) *planner {
	p := &planner{devices: make(map[string]*Device, len(devices)), used: map[string]resources{}}
	for i := range devices {
		d := &devices[i]
		if _, dup := p.devices[d.ID]; dup {
			continue // the first entry of a device wins
		}
		p.devices[d.ID] = d
		p.deviceIDs = append(p.deviceIDs, d.ID)
	}
	slices.Sort(p.deviceIDs)
	return p
}

// groupPlan is the plan of one group of one job.
type groupPlan struct {
	job     *Job
	group   *protocol.Group
	typ     protocol.JobType
	taken   map[string]bool  // slots held: instance index, or device for system groups
	pending []slotCandidates // update candidates, in slot order
	status  protocol.GroupStatus
}

// slotCandidates are the stale allocations claiming one slot, in order.
type slotCandidates struct {
	slot   string
	allocs []Alloc
}

func newGroupPlan(j *Job, g *protocol.Group) *groupPlan {
	typ := j.Job.Type
	if typ == "" {
		typ = protocol.JobService
	}
	return &groupPlan{job: j, group: g, typ: typ, taken: map[string]bool{}, status: protocol.GroupStatus{Name: g.Name}}
}

func (gp *groupPlan) system() bool { return gp.typ == protocol.JobSystem }

// count is the desired number of instances of a service or batch group.
func (gp *groupPlan) count() int { return max(gp.group.Instances(), 0) }

// slot is the place an allocation holds in its group: its index, or for
// system groups its device. ok is false when the index is out of range.
func (gp *groupPlan) slot(a Alloc) (slot string, ok bool) {
	if gp.system() {
		return a.Device, a.Index == 0
	}
	return strconv.Itoa(a.Index), a.Index >= 0 && a.Index < gp.count()
}

// done reports whether a batch allocation already ran the job's current
// spec to completion: it is kept as is, wherever it is.
func (gp *groupPlan) done(dev *Device, a Alloc) bool {
	return gp.typ == protocol.JobBatch && gp.current(a) && reportedAs(dev, a, protocol.AllocComplete)
}

// current reports whether an allocation runs exactly what the job asks.
func (gp *groupPlan) current(a Alloc) bool {
	return a.JobVersion == gp.job.Version && a.Type == gp.typ && sameTasks(a.Tasks, gp.group.Tasks)
}

// keepPass judges the existing allocations of one group, given in index,
// then id order. Invalid ones stop: out-of-range index, vanished device,
// device no longer feasible (presence aside; a complete batch allocation is
// exempt). The valid ones are grouped by slot and judgeSlot picks at most one
// per slot.
func (p *planner) keepPass(gp *groupPlan, allocs []Alloc) {
	var order []string
	bySlot := map[string][]Alloc{}
	for _, a := range allocs {
		slot, ok := gp.slot(a)
		dev := p.devices[a.Device]
		if !ok || dev == nil || (!gp.done(dev, a) && infeasible(keepChecks, dev, gp.group) != "") {
			p.stop = append(p.stop, a)
			continue
		}
		if _, seen := bySlot[slot]; !seen {
			order = append(order, slot)
		}
		bySlot[slot] = append(bySlot[slot], a)
	}
	for _, slot := range order {
		p.judgeSlot(gp, slot, bySlot[slot])
	}
}

// judgeSlot chooses among the valid allocations claiming one slot (normally
// just one): a complete batch allocation, else the first current one that
// still fits (reserving its demand), which are kept; else every stale one
// becomes an update candidate, tried in order by updatePass. The others stop.
// Keeping the stale alternatives until updatePass means that a slot whose
// update fails is never placed again on a device where an allocation of the
// same id was just stopped: every such device lacks room.
func (p *planner) judgeSlot(gp *groupPlan, slot string, cands []Alloc) {
	keepAt := slices.IndexFunc(cands, func(a Alloc) bool { return gp.done(p.devices[a.Device], a) })
	var stale []Alloc
	for i, a := range cands {
		switch {
		case i == keepAt:
		case keepAt >= 0:
			p.stop = append(p.stop, a)
		case !gp.current(a):
			stale = append(stale, a)
		case p.reserve(p.devices[a.Device], a):
			keepAt = i
		default:
			p.stop = append(p.stop, a) // no longer fits
		}
	}
	switch {
	case keepAt >= 0:
		p.stop = append(p.stop, stale...)
		gp.taken[slot] = true
		p.keep = append(p.keep, cands[keepAt])
	case len(stale) > 0:
		gp.taken[slot] = true
		gp.pending = append(gp.pending, slotCandidates{slot: slot, allocs: stale})
	}
}

// updatePass gives, for each slot with update candidates, the first one whose
// new demand fits its device the job's version, type and tasks; the others
// stop. A slot where none fits is freed for placement.
func (p *planner) updatePass(gp *groupPlan) {
	for _, sc := range gp.pending {
		updated := false
		for _, a := range sc.allocs {
			if updated {
				p.stop = append(p.stop, a)
				continue
			}
			u := a
			u.JobVersion = gp.job.Version
			u.Type = gp.typ
			u.Tasks = slices.Clone(gp.group.Tasks)
			if !p.reserve(p.devices[a.Device], u) {
				p.stop = append(p.stop, a)
				continue
			}
			p.update = append(p.update, u)
			updated = true
		}
		if !updated {
			delete(gp.taken, sc.slot)
		}
	}
}

// reserve takes the demand of a non-terminal allocation on its device, if it
// fits, and reports whether it did. Terminal allocations take nothing.
func (p *planner) reserve(dev *Device, a Alloc) bool {
	if terminal(dev, a) {
		return true
	}
	want := demand(a.Tasks)
	if fitReason(capacity(dev), p.used[dev.ID], want) != "" {
		return false
	}
	p.used[dev.ID] = p.used[dev.ID].add(want)
	return true
}

// placePass places the free slots of one group and records its status.
func (p *planner) placePass(gp *groupPlan) {
	want := demand(gp.group.Tasks)
	unplaced := 0
	var seen survey
	if gp.system() {
		seen = newSurvey(len(p.deviceIDs))
		for _, id := range p.deviceIDs {
			dev := p.devices[id]
			if gp.taken[id] {
				seen.feasible++
				continue
			}
			if r := infeasible(placeChecks, dev, gp.group); r != "" {
				seen.filtered[r]++
				continue
			}
			seen.feasible++
			if r := fitReason(capacity(dev), p.used[id], want); r != "" {
				seen.exhausted[r]++
				unplaced++
				continue
			}
			p.placeOn(gp, dev, 0, id, want)
		}
		gp.status.Desired = seen.feasible
	} else {
		gp.status.Desired = gp.count()
		for idx := range gp.count() {
			slot := strconv.Itoa(idx)
			if gp.taken[slot] {
				continue
			}
			if unplaced > 0 {
				unplaced++ // nothing was placed since the first failure: same outcome
				continue
			}
			best, s := p.rank(gp.group, want)
			if best == nil {
				unplaced, seen = 1, s
				continue
			}
			p.placeOn(gp, best, idx, slot, want)
		}
	}
	gp.status.Placed = len(gp.taken)
	if unplaced > 0 {
		gp.status.Unplaced = unplacedMessage(unplaced, gp.status.Desired, seen)
	}
}

// rank finds the best device for one new allocation of a group: among the
// devices passing placeChecks that have room for want, the highest
// binPackScore, ties to the lowest device id. best is nil when none
// qualifies; the survey says why.
func (p *planner) rank(g *protocol.Group, want resources) (best *Device, s survey) {
	s = newSurvey(len(p.deviceIDs))
	bestScore := 0.0
	for _, id := range p.deviceIDs {
		dev := p.devices[id]
		if r := infeasible(placeChecks, dev, g); r != "" {
			s.filtered[r]++
			continue
		}
		s.feasible++
		c, used := capacity(dev), p.used[id]
		if r := fitReason(c, used, want); r != "" {
			s.exhausted[r]++
			continue
		}
		// Devices are visited in id order and only a strictly better score
		// replaces the best, so ties go to the lowest id.
		if score := binPackScore(c, used.add(want)); best == nil || score > bestScore {
			best, bestScore = dev, score
		}
	}
	return best, s
}

// placeOn records a new allocation of a group on a device; the caller has
// checked that want fits.
func (p *planner) placeOn(gp *groupPlan, dev *Device, index int, slot string, want resources) {
	p.used[dev.ID] = p.used[dev.ID].add(want)
	gp.taken[slot] = true
	p.place = append(p.place, Alloc{
		ID:         AllocID(gp.job.Job.ID, gp.group.Name, index, dev.ID),
		Job:        gp.job.Job.ID,
		JobVersion: gp.job.Version,
		Group:      gp.group.Name,
		Index:      index,
		Type:       gp.typ,
		Device:     dev.ID,
		Tasks:      slices.Clone(gp.group.Tasks),
	})
}

// terminal reports whether the device reports the allocation, at its
// version, as complete or failed: it runs nothing and reserves nothing.
func terminal(dev *Device, a Alloc) bool {
	return reportedAs(dev, a, protocol.AllocComplete) || reportedAs(dev, a, protocol.AllocFailed)
}

// reportedAs reports whether the device's last report gives the allocation,
// at the allocation's version, the given state.
func reportedAs(dev *Device, a Alloc, state protocol.AllocState) bool {
	st, ok := dev.Reported[a.ID]
	return ok && st.JobVersion == a.JobVersion && st.State == state
}

// sameTasks compares task lists by protocol.SpecHash, the comparison edged
// uses, so that encodings of the same spec (nil or empty slices and maps)
// compare equal.
func sameTasks(a, b []protocol.Task) bool {
	return slices.EqualFunc(a, b, func(x, y protocol.Task) bool { return protocol.SpecHash(x) == protocol.SpecHash(y) })
}

// latestJobs returns the jobs sorted by id, one per id: the highest version,
// the first of equal versions.
func latestJobs(in []Job) []Job {
	jobs := slices.Clone(in)
	slices.SortStableFunc(jobs, func(a, b Job) int {
		return cmp.Or(cmp.Compare(a.Job.ID, b.Job.ID), cmp.Compare(b.Version, a.Version))
	})
	return slices.CompactFunc(jobs, func(a, b Job) bool { return a.Job.ID == b.Job.ID })
}

// sortByDevice sorts allocations by device, then id, and returns them.
func sortByDevice(allocs []Alloc) []Alloc {
	slices.SortFunc(allocs, func(a, b Alloc) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), cmp.Compare(a.ID, b.ID))
	})
	return allocs
}
