package core

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/tether-edge/tether/protocol"
)

// AllocID is the deterministic id of instance index of a job's group on a
// device: "<job>.<group>.<index>-<first 12 hex digits of sha256(device)>".
// System and sysbatch allocations use index 0. The device hash keeps ids
// unique when an instance moves to another device, so a stop and its
// replacement never share an id. Should two devices' hashes share their
// first 48 bits (for 100,000 devices, about one chance in 50,000), Compute
// gives the later placement the whole hash instead, so that ids stay unique;
// ids of earlier versions, with 6 hex digits, remain valid.
func AllocID(job, group string, index int, device string) string {
	return allocID(job, group, index, deviceSuffix(device))
}

func deviceSuffix(device string) string {
	sum := sha256.Sum256([]byte(device))
	return hex.EncodeToString(sum[:6])
}

func allocID(job, group string, index int, suffix string) string {
	var b strings.Builder
	b.Grow(len(job) + len(group) + len(suffix) + 24)
	b.WriteString(job)
	b.WriteByte('.')
	b.WriteString(group)
	b.WriteByte('.')
	var num [20]byte
	b.Write(strconv.AppendInt(num[:0], int64(index), 10))
	b.WriteByte('-')
	b.WriteString(suffix)
	return b.String()
}

// Compute plans the allocations of every job over every device at time now.
// It is pure and deterministic: it does not modify s, does no I/O, reads no
// clock, and the same s and now always yield the same Plan, whatever the
// order of its slices (now only decides which allocations are lost and
// which failed ones are rescheduled, see below, and is copied into
// Plan.Now). The Plan shares task data with s and
// must be treated as read-only; Plan.Allocations may share its array with
// Plan.Keep or Plan.Place. See the package documentation for the flow; the
// rules in short:
//
//   - Jobs are handled in id order (for duplicate ids the highest version
//     wins), groups in document order. Every existing allocation is judged
//     (keep, update or stop) before any new one is placed, so that existing
//     allocations keep their resources.
//   - An existing allocation is stopped when its job is stopped or absent,
//     its group is gone, its index is out of range (index >= count, or not 0
//     for a system or sysbatch group), its device is gone or no longer passes
//     the feasibility checks other than presence, it would break a
//     distinct_hosts or distinct_property constraint given the allocations
//     kept before it (in slot order), or it no longer fits its device.
//     Allocations on offline devices are kept (but see the disconnect
//     policy below). When several allocations
//     claim one slot (an index, or a device for system and sysbatch groups),
//     one survives: a complete batch or sysbatch allocation, else the first
//     current one (by id) that is admitted, else the first stale one (by id)
//     whose update is.
//   - An allocation whose version, type or tasks (by protocol.Task.Equal,
//     which agrees with protocol.SpecHash) differ from the job's is updated
//     in place (same id and device, the job's version, type and tasks) when
//     the new demand fits its device; otherwise it is stopped and its slot
//     placed again. A new version re-runs complete batch and sysbatch
//     allocations this way.
//   - A batch or sysbatch allocation reported complete at its version is
//     kept as is, whatever its device has become: it is never restarted or
//     re-placed. Failed allocations are kept too, unless their group
//     reschedules them (see below).
//   - Terminal allocations (reported complete or failed at their version)
//     reserve nothing and do not count for distinct_hosts,
//     distinct_property or spread. A report about another version is about
//     the previous run, so it does not make an updated allocation terminal.
//   - Free slots are placed on the best feasible online device that has room;
//     see rank.go. System and sysbatch groups get one allocation on every
//     such device.
//   - Disconnect policy (protocol.Disconnect). An allocation that is not
//     terminal, on a device that is not online, is disconnected; it is lost
//     once the device has been offline (Device.OfflineSince) for its group's
//     lost_after. Disconnected allocations, and lost ones of groups that do
//     not replace (system and sysbatch groups never do), are ordinary
//     allocations. A lost allocation of a service or batch group that
//     replaces stays in the plan as it is (never updated, its own demand
//     still reserved on its device), but does not count as an instance nor
//     for distinct_hosts, distinct_property or spread: its index is placed
//     again on another (online) device, the new allocation's Replaces naming
//     it. While its device is offline, an allocation a replacement names
//     stays like that even when it is no longer lost (its device came back
//     and went again before a plan saw it online). When its device is
//     online, original and replacement claim the same index and one
//     survives, chosen by the group's reconcile strategy (see
//     replacementWins), except that a complete batch allocation always
//     wins, one running the job's current spec beats a stale one (a
//     replacement updated while the original was away beats it whatever the
//     strategy, as in Nomad), and a failed one loses; the other stops, and
//     the survivor's Replaces mark is cleared (an Update). A mark is kept
//     only while it names an allocation of the plan of the same index on
//     another device. An allocation that finished an older version (complete
//     or failed) on a lost device of a group that replaces is stopped, so
//     that the new version runs elsewhere. An allocation that was not
//     replaced is never stopped because its device came back (a lost one
//     no replacement could be placed for gets then the update it was
//     spared while frozen, if any).
//   - Groups has an entry for every job that is not stopped. Desired is the
//     count for service and batch groups; for system and sysbatch groups it
//     is the number of devices that either run the group already or pass
//     every feasibility check but resources. Placed counts the group's
//     allocations in Plan.Allocations (kept, updated and placed) but for the
//     lost (or replaced) ones above. Unplaced explains the difference; see
//     unplacedMessage.
//   - Lost, Disconnected, LostByJob and NextEval describe the plan's
//     allocations on devices that are not online; see Plan.
//   - Rollouts. In a group of a service or system job with an update block,
//     a destructive update (the tasks or type change) waits its turn:
//     max_parallel minus the allocations in flight (at the job's version,
//     on an online device, health undecided) and the missing instances,
//     canaries first. What waits stays as it is and is listed in
//     Plan.Deferred; Plan.Rollouts reports each rollout, and NextEval
//     includes its progress deadline. New slots and in-place updates are
//     never gated. See the package documentation.
//   - Rescheduling (protocol.Reschedule). A failed allocation running the
//     job's spec in a service or batch group whose policy reschedules is
//     stopped once its delay (from its tasks' latest FinishedAt, else
//     Device.ReportedAt) has passed and its attempts allow, and its index
//     placed again with Alloc.Reschedules extended by now, on another device
//     when one can take it, else its own, else it stays; until then it
//     stays and NextEval includes the time. Not while the version's rollout
//     failed. See the package documentation.
//   - Ineligible and draining devices get no new allocation; a draining
//     device's service and batch allocations are stopped and placed
//     elsewhere, max_parallel at a time with an update block. See drain.go.
func Compute(s Snapshot, now time.Time) Plan {
	return compute(s, now, nil)
}

// compute is Compute with the choice of the best device replaceable, so that
// tests can check the ranker against a scan of every device.
func compute(s Snapshot, now time.Time, pick func(*planner, *groupPlan) (int32, bool)) Plan {
	p := newPlanner(s.Devices, s.Allocations)
	p.pick = pick
	p.now = now
	jobs := latestJobs(s.Jobs)
	byID := make(map[string]*jobPlan, len(jobs))
	var groups []*groupPlan
	for i := range jobs {
		j := &jobs[i]
		jp := &jobPlan{}
		byID[j.Job.ID] = jp
		if j.Stopped {
			continue
		}
		for gi := range j.Job.Groups {
			gp := p.newGroupPlan(j, &j.Job.Groups[gi])
			jp.groups = append(jp.groups, gp)
			groups = append(groups, gp)
		}
	}
	p.route(byID)
	for _, gp := range groups {
		p.keepPass(gp)
	}
	for _, gp := range groups {
		p.disconnectPass(gp)
	}
	for _, gp := range groups {
		p.updatePass(gp)
	}
	if p.draining {
		for _, gp := range groups {
			p.drainPass(gp)
		}
		p.dropStopped()
	}
	if p.rolling {
		var chosen []chosenUpdate
		for i := range jobs {
			chosen = p.gateJob(&jobs[i], byID[jobs[i].Job.ID].groups, chosen)
		}
		p.applyUpdates(chosen)
	}
	for _, gp := range groups {
		p.placePass(gp)
	}
	if p.rolling {
		for i := range jobs {
			p.finishRollout(&jobs[i], byID[jobs[i].Job.ID].groups)
		}
	}

	keep := seg{allocs: p.allocs, idx: p.keep, devs: p.keepDev}
	update := seg{allocs: p.update, devs: p.updateDev}
	var place []seg
	placed := 0
	for _, gp := range groups {
		if len(gp.placed) > 0 {
			place = append(place, seg{allocs: gp.placed, devs: gp.placedDev})
			placed += len(gp.placed)
		}
	}
	plan := Plan{
		Place:  p.byDevice(place...),
		Update: p.byDevice(update),
		Keep:   p.byDevice(keep),
		Stop:   sortStops(p.stop),
		Groups: map[string][]protocol.GroupStatus{},
		Now:    now,
	}
	// When only one bucket has allocations, Allocations is that bucket:
	// share the (read-only) slice.
	switch {
	case len(p.update)+placed == 0:
		plan.Allocations = plan.Keep
	case len(p.keep)+len(p.update) == 0:
		plan.Allocations = plan.Place
	default:
		plan.Allocations = p.byDevice(append([]seg{keep, update}, place...)...)
	}
	if plan.Allocations == nil {
		plan.Allocations = []Alloc{}
	}
	for i := range jobs {
		if !jobs[i].Stopped {
			plan.Groups[jobs[i].Job.ID] = make([]protocol.GroupStatus, 0, len(jobs[i].Job.Groups))
		}
	}
	for _, gp := range groups {
		plan.Groups[gp.job.Job.ID] = append(plan.Groups[gp.job.Job.ID], gp.status)
	}
	p.connectivity(&plan, byID)
	var reschedEval time.Time
	reschedEval, plan.RescheduleAt = p.rescheduleEval()
	for _, at := range []time.Time{p.rolloutEval, reschedEval} {
		if !at.IsZero() && (plan.NextEval.IsZero() || at.Before(plan.NextEval)) {
			plan.NextEval = at
		}
	}
	plan.Rollouts = p.rollouts
	if len(p.deferred) > 0 {
		slices.SortFunc(p.deferred, func(a, b deferral) int {
			return cmp.Or(cmp.Compare(a.di, b.di), strings.Compare(a.alloc.ID, b.alloc.ID))
		})
		plan.Deferred = make([]Deferred, len(p.deferred))
		for i, d := range p.deferred {
			plan.Deferred[i] = Deferred{Alloc: d.alloc, Reason: d.reason}
		}
	}
	return plan
}

// planner is the working state of one Compute. Devices are known by their
// index in devs, which is sorted by id, so that visiting indices in order
// visits ids in order and per-device state lives in slices.
type planner struct {
	devs    []*Device        // sorted by id; the first entry of a duplicate id wins
	index   map[string]int32 // device id → index in devs
	used    []resources      // reserved so far, by device
	usedDev []map[string]int // device resources reserved so far, by device; nil until needed
	suffix  []string         // deviceSuffix by device, computed when first needed
	memos   map[string]*feasMemo
	binPack binPackMemo
	pick    func(*planner, *groupPlan) (int32, bool) // replaces the ranker in tests
	now     time.Time

	allocs []Alloc // the snapshot's, read-only
	ids    *idSet  // every allocation id in use: the snapshot's and those placed

	keep               []int32 // indices in allocs of the kept allocations
	update             []Alloc
	keepDev, updateDev []int32 // device index of each, in parallel
	stop               []Alloc

	// Buffers reused by the ranker of one group after another.
	rankBuf []rankEntry
	heapBuf []heapEntry
	devBuf  []int32
	// Buffers reused by judgeDisconnect from one slot to the next.
	dinfo           []dcand
	dsurvivor       []bool
	dpresent, daway []int

	// Rollouts and drain (rollout.go, drain.go).
	rolling     bool // some group has a rollout
	draining    bool // some device is draining
	dropDrained bool // drainPass stopped kept or updated allocations (see dropStopped)
	deferred    []deferral
	rollouts    map[string]protocol.Rollout
	rolloutEval time.Time // the earliest progress deadline of a running rollout

	// Rescheduling (reschedule.go).
	waiting []waitingFailed // failed allocations kept until they may be rescheduled
	avoid   int32           // the device the placement being chosen avoids; -1 for none
}

// feasMemo holds the result of keepChecks for every device, for the groups
// sharing one signature, computed when first needed.
type feasMemo struct {
	done   []bool
	reason []string
}

func newPlanner(devices []Device, allocs []Alloc) *planner {
	p := &planner{index: make(map[string]int32, len(devices)), memos: map[string]*feasMemo{}, binPack: binPackMemo{}, allocs: allocs, avoid: -1}
	p.devs = make([]*Device, 0, len(devices))
	for i := range devices {
		d := &devices[i]
		if _, dup := p.index[d.ID]; dup {
			continue // the first entry of a device wins
		}
		p.index[d.ID] = 0
		p.devs = append(p.devs, d)
		p.draining = p.draining || d.Draining
	}
	slices.SortFunc(p.devs, func(a, b *Device) int { return strings.Compare(a.ID, b.ID) })
	for i, d := range p.devs {
		p.index[d.ID] = int32(i)
	}
	p.used = make([]resources, len(p.devs))
	p.suffix = make([]string, len(p.devs))
	p.keep = make([]int32, 0, len(allocs))
	p.keepDev = make([]int32, 0, len(allocs))
	return p
}

// jobPlan holds the group plans of one job (none when it is stopped).
type jobPlan struct {
	groups []*groupPlan
}

func (jp *jobPlan) group(name string) *groupPlan {
	if jp == nil {
		return nil
	}
	for _, gp := range jp.groups {
		if gp.group.Name == name {
			return gp
		}
	}
	return nil
}

// groupPlan is the plan of one group of one job.
type groupPlan struct {
	job   *Job
	group *protocol.Group
	typ   protocol.JobType
	spec  *groupSpec
	memo  *feasMemo
	tasks []protocol.Task // the group's tasks, shared by its new and updated allocations

	existing []int32 // indices in planner.allocs of the group's allocations
	taken    []bool  // slots held: by instance index, or by device for system and sysbatch groups
	takenN   int
	pending  []pendingSlot // update candidates, in slot order

	// What the distinct constraints and spreads count: the group's
	// non-terminal allocations kept, updated and placed so far.
	hostCount []int32          // by device; nil without distinct_hosts
	propCount []map[string]int // by distinct_property, by value
	live      []int32          // devices, in order; only kept with spreads

	placed    []Alloc // new allocations
	placedDev []int32 // their devices

	// The disconnect policy (see disconnect.go).
	replace     bool           // lost allocations are replaced
	lostAfter   time.Duration  // offline for this long: lost
	strategy    string         // reconcile strategy
	disconnects []pendingSlot  // slots judged by judgeDisconnect, in slot order
	dcands      []cand         // their candidates
	targets     map[int]string // free slot → id of the away allocation its replacement replaces

	roll *rolloutGroup // nil without an update block (see rollout.go)

	// Rescheduling (see reschedule.go).
	reschedule  protocol.ReschedulePolicy
	reschedules bool // failed allocations are rescheduled
	// A failed rollout holds them (they still count for NextEval).
	rescheduleHeld bool
	rescheds       map[int]rescheduled // slots whose failed allocation is replaced
	drainable      []drainRef          // kept allocations on draining devices (see drain.go)

	status protocol.GroupStatus
}

// pendingSlot is a slot whose allocations are all stale: the candidates for
// an update, in order.
type pendingSlot struct {
	slot  int
	cands []cand
}

// cand is an existing allocation being judged.
type cand struct {
	i     int32               // index in planner.allocs
	di    int32               // device index
	state protocol.AllocState // reported state at the allocation's version; "" when none
	cur   bool                // runs exactly what the job asks
}

func (p *planner) newGroupPlan(j *Job, g *protocol.Group) *groupPlan {
	typ := j.Job.Type
	if typ == "" {
		typ = protocol.JobService
	}
	gp := &groupPlan{job: j, group: g, typ: typ, spec: compileGroup(g), tasks: slices.Clip(g.Tasks), status: protocol.GroupStatus{Name: g.Name},
		replace: g.ReplacesLost(typ), lostAfter: g.LostAfter(), strategy: g.ReconcileStrategy(), roll: newRolloutGroup(typ, g)}
	p.rolling = p.rolling || gp.roll != nil
	gp.reschedule, gp.reschedules = g.ReschedulePolicy(typ)
	gp.rescheduleHeld = rescheduleHeld(j, gp.roll != nil)
	m := p.memos[gp.spec.signature]
	if m == nil {
		m = &feasMemo{}
		p.memos[gp.spec.signature] = m
	}
	gp.memo = m
	if gp.everyDevice() {
		gp.taken = make([]bool, len(p.devs))
	} else {
		gp.taken = make([]bool, gp.count())
	}
	if len(gp.spec.distinctProps) > 0 {
		gp.propCount = make([]map[string]int, len(gp.spec.distinctProps))
		for i := range gp.propCount {
			gp.propCount[i] = map[string]int{}
		}
	}
	return gp
}

func (gp *groupPlan) everyDevice() bool { return gp.typ.OnEveryDevice() }

// count is the desired number of instances of a service or batch group.
func (gp *groupPlan) count() int { return max(gp.group.Instances(), 0) }

// done reports whether a batch or sysbatch allocation already ran the job's
// current spec to completion: it is kept as is, wherever it is.
func (gp *groupPlan) done(c cand) bool {
	return gp.typ.RunsToCompletion() && c.cur && c.state == protocol.AllocComplete
}

// current reports whether an allocation runs exactly what the job asks.
func (gp *groupPlan) current(a *Alloc) bool {
	return a.JobVersion == gp.job.Version && a.Type == gp.typ && sameTasks(a.Tasks, gp.group.Tasks)
}

func (gp *groupPlan) take(slot int) {
	if !gp.taken[slot] {
		gp.taken[slot] = true
		gp.takenN++
	}
}

func (gp *groupPlan) free(slot int) {
	if gp.taken[slot] {
		gp.taken[slot] = false
		gp.takenN--
	}
}

// distinctReason says whether another instance of the group may go on a
// device given the group's live allocations: "" when it may, else the
// distinct_hosts or distinct_property constraint it would break. A device
// without the property's attribute is never eligible.
func (p *planner) distinctReason(gp *groupPlan, di int32) string {
	if gp.spec.distinctHosts && gp.hostCount != nil && gp.hostCount[di] > 0 {
		return reasonDistinctHosts
	}
	for k := range gp.spec.distinctProps {
		dp := &gp.spec.distinctProps[k]
		v, set := dp.attr.value(p.devs[di])
		if !set || gp.propCount[k][v] >= dp.limit {
			return dp.reason
		}
	}
	return ""
}

// noteLive counts a non-terminal allocation of the group on a device.
func (p *planner) noteLive(gp *groupPlan, di int32) {
	if gp.spec.distinctHosts {
		if gp.hostCount == nil {
			gp.hostCount = make([]int32, len(p.devs))
		}
		gp.hostCount[di]++
	}
	for k := range gp.spec.distinctProps {
		if v, set := gp.spec.distinctProps[k].attr.value(p.devs[di]); set {
			gp.propCount[k][v]++
		}
	}
	if len(gp.spec.spreads) > 0 {
		gp.live = append(gp.live, di)
	}
}

// staticReason is the keepChecks reason of a device for a group, memoized
// by group signature.
func (p *planner) staticReason(gp *groupPlan, di int32) string {
	m := gp.memo
	if m.done == nil {
		m.done = make([]bool, len(p.devs))
		m.reason = make([]string, len(p.devs))
	}
	if !m.done[di] {
		m.reason[di] = infeasible(keepChecks, p.devs[di], gp.spec)
		m.done[di] = true
	}
	return m.reason[di]
}

// placeReason is the placeChecks reason of a device for a group: keepChecks
// with presence checked right after facts.
func (p *planner) placeReason(gp *groupPlan, di int32) string {
	d := p.devs[di]
	if !d.HasFacts {
		return reasonNoFacts
	}
	if r := (isOnline{}).check(d, gp.spec); r != "" {
		return r
	}
	if r := (isEligible{}).check(d, gp.spec); r != "" {
		return r
	}
	return p.staticReason(gp, di)
}

// fitReason says whether one more instance of a group fits on a device:
// "", or the first exhausted resource (cpu, memory, disk, then device
// resources in request order).
func (p *planner) fitReason(gp *groupPlan, di int32) string {
	d := p.devs[di]
	if r := fitReason(capacity(d), p.used[di], gp.spec.demand.res); r != "" {
		return r
	}
	for i, dc := range gp.spec.demand.devices {
		var used int
		if p.usedDev != nil && p.usedDev[di] != nil {
			used = p.usedDev[di][dc.name]
		}
		if used+dc.count > d.Resources[dc.name] {
			return gp.spec.deviceExhausted[i]
		}
	}
	return ""
}

// reserve takes one instance's demand of a group on a device.
func (p *planner) reserve(gp *groupPlan, di int32) { p.reserveDemand(di, &gp.spec.demand) }

// reserveDemand takes a demand on a device.
func (p *planner) reserveDemand(di int32, dem *demand) {
	p.used[di] = p.used[di].add(dem.res)
	if len(dem.devices) == 0 {
		return
	}
	if p.usedDev == nil {
		p.usedDev = make([]map[string]int, len(p.devs))
	}
	if p.usedDev[di] == nil {
		p.usedDev[di] = map[string]int{}
	}
	for _, dc := range dem.devices {
		p.usedDev[di][dc.name] += dc.count
	}
}

// admit decides whether an allocation of a group that runs (or is updated
// to) the group's current tasks may stay on its device: a terminal one always
// may and takes nothing; another must respect the distinct constraints and
// fit, and then reserves its demand and counts as live.
func (p *planner) admit(gp *groupPlan, di int32, terminal bool) bool {
	if terminal {
		return true
	}
	if p.distinctReason(gp, di) != "" || p.fitReason(gp, di) != "" {
		return false
	}
	p.reserve(gp, di)
	p.noteLive(gp, di)
	return true
}

// route hands every existing allocation to its group, or stops it: its job
// is stopped or absent, its group is gone, or another allocation has its id
// (of allocations sharing an id, the first in (job, group, index, id,
// device) order is the one; the others stop unless they are on its device,
// where they are the same allocation).
func (p *planner) route(byID map[string]*jobPlan) {
	allocs := p.allocs
	p.ids = newIDSet(allocs)
	dup := p.ids.duplicates()
	var jp *jobPlan
	var gp *groupPlan
	for i := range allocs {
		a := &allocs[i]
		if dup != nil {
			if w, isDup := dup[int32(i)]; isDup && w != int32(i) {
				if allocs[w].Device != a.Device {
					p.stop = append(p.stop, *a)
				}
				continue
			}
		}
		// Allocations of one group often come together: reuse the last lookup.
		if gp == nil || gp.job.Job.ID != a.Job || gp.group.Name != a.Group {
			jp = byID[a.Job]
			gp = jp.group(a.Group)
		}
		if gp == nil {
			p.stop = append(p.stop, *a)
			continue
		}
		gp.existing = append(gp.existing, int32(i))
	}
}

// allocOrder orders allocations by job, group, index, id, device, then
// version and type.
func allocOrder(a, b *Alloc) int {
	if c := strings.Compare(a.Job, b.Job); c != 0 {
		return c
	}
	if c := strings.Compare(a.Group, b.Group); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Index, b.Index); c != 0 {
		return c
	}
	if c := strings.Compare(a.ID, b.ID); c != 0 {
		return c
	}
	if c := strings.Compare(a.Device, b.Device); c != 0 {
		return c
	}
	if c := cmp.Compare(a.JobVersion, b.JobVersion); c != 0 {
		return c
	}
	return strings.Compare(string(a.Type), string(b.Type))
}

// keepPass judges the existing allocations of one group in slot order (by
// index, or by device for system and sysbatch groups), then id, then device.
// Invalid ones stop: out-of-range index, vanished device, device no longer
// feasible (presence aside; a complete batch or sysbatch allocation is
// exempt). The valid ones are grouped by slot and judgeSlot picks at most one
// per slot.
func (p *planner) keepPass(gp *groupPlan) {
	type entry struct{ slot, i, di int32 }
	entries := make([]entry, 0, len(gp.existing))
	for _, i := range gp.existing {
		a := &p.allocs[i]
		di, known := p.index[a.Device]
		slot, ok := int32(a.Index), a.Index >= 0 && a.Index < len(gp.taken)
		if gp.everyDevice() {
			slot, ok = di, a.Index == 0
		}
		if !ok || !known {
			p.stop = append(p.stop, *a)
			continue
		}
		entries = append(entries, entry{slot: slot, i: i, di: di})
	}
	// Slots are small integers: a counting sort by slot, then the few
	// allocations sharing a slot by id and device.
	if len(entries) > 1 {
		start := make([]int32, len(gp.taken)+1)
		for _, e := range entries {
			start[e.slot+1]++
		}
		for s := 1; s < len(start); s++ {
			start[s] += start[s-1]
		}
		sorted := make([]entry, len(entries))
		for _, e := range entries {
			sorted[start[e.slot]] = e
			start[e.slot]++
		}
		entries = sorted
		for lo := 0; lo < len(entries); {
			hi := lo + 1
			for hi < len(entries) && entries[hi].slot == entries[lo].slot {
				hi++
			}
			if hi-lo > 1 {
				slices.SortFunc(entries[lo:hi], func(x, y entry) int {
					a, b := &p.allocs[x.i], &p.allocs[y.i]
					return cmp.Or(strings.Compare(a.ID, b.ID), strings.Compare(a.Device, b.Device))
				})
			}
			lo = hi
		}
	}
	var cands []cand
	for k := 0; k < len(entries); {
		slot := entries[k].slot
		cands = cands[:0]
		disconnect := false
		for ; k < len(entries) && entries[k].slot == slot; k++ {
			c := cand{i: entries[k].i, di: entries[k].di}
			a := &p.allocs[c.i]
			d := p.devs[c.di]
			if st, ok := d.Reported[a.ID]; ok && st.JobVersion == a.JobVersion {
				c.state = st.State
			}
			c.cur = gp.current(a)
			if !gp.done(c) && p.staticReason(gp, c.di) != "" {
				p.stop = append(p.stop, *a)
				continue
			}
			if a.Replaces != "" || (d.Presence != protocol.Online && gp.replace && p.lost(gp, d)) {
				disconnect = true
			}
			cands = append(cands, c)
		}
		switch {
		case len(cands) == 0:
		case disconnect:
			// One buffer for every such slot of the group: earlier slots
			// keep the array they were appended to.
			from := len(gp.dcands)
			gp.dcands = append(gp.dcands, cands...)
			gp.disconnects = append(gp.disconnects, pendingSlot{slot: int(slot), cands: gp.dcands[from:len(gp.dcands):len(gp.dcands)]})
		default:
			p.judgeSlot(gp, int(slot), cands)
		}
	}
}

// judgeSlot chooses among the valid allocations claiming one slot (normally
// just one): a complete batch or sysbatch allocation, else the first current
// one that is admitted (reserving its demand), which are kept; else every
// stale one becomes an update candidate, tried in order by updatePass. The
// others stop. Keeping the stale alternatives until updatePass means that a
// slot whose update fails is never placed again on a device where an
// allocation of the same id was just stopped: every such device lacks room
// or breaks a distinct constraint.
func (p *planner) judgeSlot(gp *groupPlan, slot int, cands []cand) {
	keepAt := slices.IndexFunc(cands, gp.done)
	var stale []cand
	for k, c := range cands {
		switch {
		case k == keepAt:
		case keepAt >= 0:
			p.stop = append(p.stop, p.allocs[c.i])
		case !c.cur:
			stale = append(stale, c)
		case p.admit(gp, c.di, isTerminal(c.state)):
			keepAt = k
		default:
			p.stop = append(p.stop, p.allocs[c.i]) // no longer fits, or breaks a distinct constraint
		}
	}
	switch {
	case keepAt >= 0:
		for _, c := range stale {
			p.stop = append(p.stop, p.allocs[c.i])
		}
		if p.reschedule(gp, slot, cands[keepAt]) {
			return // the slot stays free: placeCount replaces the failed allocation
		}
		gp.take(slot)
		p.keep = append(p.keep, cands[keepAt].i)
		p.keepDev = append(p.keepDev, cands[keepAt].di)
		p.count(gp, cands[keepAt].di, p.allocs[cands[keepAt].i].ID)
		p.noteDrainable(gp, drainKept, len(p.keep)-1, slot, cands[keepAt], isTerminal(cands[keepAt].state))
	case len(stale) > 0:
		gp.take(slot)
		gp.pending = append(gp.pending, pendingSlot{slot: slot, cands: stale})
	}
}

// updatePass gives, for each slot with update candidates, the first one that
// is admitted with the new demand the job's version, type and tasks; the
// others stop. A slot where none is admitted is freed for placement.
func (p *planner) updatePass(gp *groupPlan) {
	for _, ps := range gp.pending {
		updated := false
		for _, c := range ps.cands {
			a := p.allocs[c.i]
			if updated {
				p.stop = append(p.stop, a)
				continue
			}
			if gp.roll != nil && !gp.inPlace(&a) && p.hold(gp, c, ps.slot, "") {
				// A destructive update: the rollout decides (gateJob).
				// One that cannot stay as it is goes on as without an
				// update block.
				p.noteDrainable(gp, drainHeld, len(gp.roll.held)-1, ps.slot, c, isTerminal(c.state))
				updated = true
				continue
			}
			u := a
			u.JobVersion = gp.job.Version
			u.Type = gp.typ
			u.Tasks = gp.tasks
			if !p.admit(gp, c.di, p.terminalAt(c.di, u.ID, u.JobVersion)) {
				p.stop = append(p.stop, a)
				continue
			}
			p.update = append(p.update, u)
			p.updateDev = append(p.updateDev, c.di)
			p.count(gp, c.di, u.ID)
			p.noteDrainable(gp, drainUpdated, len(p.update)-1, ps.slot, c, p.terminalAt(c.di, u.ID, u.JobVersion))
			updated = true
		}
		if !updated {
			gp.free(ps.slot)
		}
	}
}

// terminalAt reports whether a device reports an allocation, at a version,
// as complete or failed.
func (p *planner) terminalAt(di int32, id string, version uint64) bool {
	st, ok := p.devs[di].Reported[id]
	return ok && st.JobVersion == version && isTerminal(st.State)
}

func isTerminal(s protocol.AllocState) bool {
	return s == protocol.AllocComplete || s == protocol.AllocFailed
}

// placePass places the free slots of one group and records its status.
func (p *planner) placePass(gp *groupPlan) {
	if gp.everyDevice() {
		p.placeEveryDevice(gp)
	} else {
		p.placeCount(gp)
	}
	gp.status.Placed = gp.takenN
}

// placeEveryDevice places one allocation (index 0) of a system or sysbatch
// group on every feasible device that has none yet and room for it, in
// device id order, then surveys the devices for the status. Surveying after
// placing matters with distinct_property: a device without room takes no
// share of its property value, and whether it counts as feasible depends on
// what was placed, as it will in the next plan.
func (p *planner) placeEveryDevice(gp *groupPlan) {
	targets := p.devBuf[:0]
	for i := range p.devs {
		di := int32(i)
		if !gp.taken[di] && p.placeReason(gp, di) == "" && p.distinctReason(gp, di) == "" && p.fitReason(gp, di) == "" {
			if len(gp.spec.distinctProps) > 0 {
				p.placeOn(gp, di, 0, int(di), "") // what was placed decides about the next device
				continue
			}
			targets = append(targets, di)
		}
	}
	p.devBuf = targets
	gp.grow(len(targets))
	for _, di := range targets {
		p.placeOn(gp, di, 0, int(di), "")
	}
	seen := newSurvey(len(p.devs))
	unplaced := 0
	for i := range p.devs {
		di := int32(i)
		if gp.taken[di] {
			seen.feasible++
			continue
		}
		if r := p.placeReason(gp, di); r != "" {
			seen.filtered[r]++
			continue
		}
		if r := p.distinctReason(gp, di); r != "" {
			seen.filtered[r]++
			continue
		}
		seen.feasible++
		if r := p.fitReason(gp, di); r != "" {
			seen.exhausted[r]++
			unplaced++
		}
	}
	gp.status.Desired = seen.feasible
	if unplaced > 0 {
		gp.status.Unplaced = unplacedMessage(unplaced, gp.status.Desired, seen)
	}
}

// placeCount places the free indices of a service or batch group, each on
// the best device (see ranker).
func (p *planner) placeCount(gp *groupPlan) {
	gp.status.Desired = gp.count()
	gp.grow(gp.count() - gp.takenN)
	unplaced := 0
	var seen survey
	var r *ranker
	for idx := range gp.count() {
		if gp.taken[idx] {
			continue
		}
		rs, resched := gp.rescheds[idx]
		if unplaced > 0 {
			if resched {
				p.keepFailed(gp, idx, rs)
				continue
			}
			unplaced++ // nothing was placed since the first failure: same outcome
			continue
		}
		if r == nil && p.pick == nil {
			r = p.newRanker(gp)
		}
		if resched {
			// Another device first; the failed one only when no other can
			// take it.
			p.avoid = rs.di
		}
		var di int32
		var ok bool
		if p.pick != nil {
			di, ok = p.pick(p, gp)
		} else {
			di, ok = r.best()
		}
		if resched && !ok {
			p.avoid = -1
			if r != nil {
				r.restore()
				di, ok = r.best()
			} else {
				di, ok = p.pick(p, gp)
			}
		}
		switch {
		case !ok && resched:
			p.keepFailed(gp, idx, rs)
			continue
		case !ok:
			unplaced, seen = 1, p.survey(gp)
			continue
		}
		p.placeOn(gp, di, idx, idx, gp.targets[idx])
		if resched {
			gp.placed[len(gp.placed)-1].Reschedules = rs.times
			p.stop = append(p.stop, p.allocs[rs.i])
		}
		if r != nil {
			r.placed(di)
			r.restore()
		}
		p.avoid = -1
	}
	if unplaced > 0 {
		gp.status.Unplaced = unplacedMessage(unplaced, gp.status.Desired, seen)
	}
}

// survey looks at every device for one more instance of a group, to explain
// why it cannot be placed.
func (p *planner) survey(gp *groupPlan) survey {
	s := newSurvey(len(p.devs))
	for i := range p.devs {
		di := int32(i)
		if r := p.placeReason(gp, di); r != "" {
			s.filtered[r]++
			continue
		}
		if r := p.distinctReason(gp, di); r != "" {
			s.filtered[r]++
			continue
		}
		s.feasible++
		if r := p.fitReason(gp, di); r != "" {
			s.exhausted[r]++
		}
	}
	return s
}

// placeOn records a new allocation of a group on a device, replacing the
// allocation named by replaces (or none); the caller has checked that it is
// feasible and fits.
func (p *planner) placeOn(gp *groupPlan, di int32, index, slot int, replaces string) {
	p.reserve(gp, di)
	p.noteLive(gp, di)
	gp.take(slot)
	if p.suffix[di] == "" {
		p.suffix[di] = deviceSuffix(p.devs[di].ID)
	}
	id := allocID(gp.job.Job.ID, gp.group.Name, index, p.suffix[di])
	if p.idTaken(di, id) {
		// Two devices share the hash prefix, or the device reports the id:
		// use the whole hash, and should that be taken too (an id made up
		// by someone else), a counter.
		sum := sha256.Sum256([]byte(p.devs[di].ID))
		full := hex.EncodeToString(sum[:])
		id = allocID(gp.job.Job.ID, gp.group.Name, index, full)
		for n := 2; ; n++ {
			if !p.idTaken(di, id) {
				break
			}
			id = allocID(gp.job.Job.ID, gp.group.Name, index, full+"-"+strconv.Itoa(n))
		}
	}
	p.ids.addPlaced(id)
	gp.placed = append(gp.placed, Alloc{
		ID:         id,
		Job:        gp.job.Job.ID,
		JobVersion: gp.job.Version,
		Group:      gp.group.Name,
		Index:      index,
		Type:       gp.typ,
		Device:     p.devs[di].ID,
		Tasks:      gp.tasks,
		Replaces:   replaces,
	})
	gp.placedDev = append(gp.placedDev, di)
	p.count(gp, di, id)
}

// idTaken reports whether a new allocation on a device may not have an id:
// an allocation has it, or the device still reports it (an allocation
// stopped there, whose report must not pass for the new one's: a failed
// allocation rescheduled back to its device, say).
func (p *planner) idTaken(di int32, id string) bool {
	if p.ids.has(id) {
		return true
	}
	if rep := p.devs[di].Reported; len(rep) > 0 {
		_, ok := rep[id]
		return ok
	}
	return false
}

// grow makes room for n more new allocations of a group.
func (gp *groupPlan) grow(n int) {
	gp.placed = slices.Grow(gp.placed, n)
	gp.placedDev = slices.Grow(gp.placedDev, n)
}

// sameTasks compares task lists as protocol.SpecHash would, the comparison
// edged uses, so that encodings of the same spec (nil or empty slices and
// maps) compare equal.
func sameTasks(a, b []protocol.Task) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b) {
		return true
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
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

// seg is a list of allocations with the device index of each: allocs, or
// when idx is set, the allocations of allocs at those indices.
type seg struct {
	allocs []Alloc
	idx    []int32
	devs   []int32
}

func (s seg) at(k int) *Alloc {
	if s.idx != nil {
		return &s.allocs[s.idx[k]]
	}
	return &s.allocs[k]
}

// byDevice returns the allocations of the segments in one slice sorted by
// device, then id, or nil when there are none. Devices are known by index,
// so this is a counting sort by device followed by sorting each device's few
// allocations by id; references are sorted, and each allocation is copied
// once. A single segment of the planner's own allocations that is already
// in order (a system group's placements are made in device order) is
// returned as it is.
func (p *planner) byDevice(segs ...seg) []Alloc {
	n := 0
	for _, s := range segs {
		n += len(s.devs)
	}
	if n == 0 {
		return nil
	}
	if len(segs) == 1 && segs[0].idx == nil && inDeviceOrder(segs[0]) {
		return slices.Clip(segs[0].allocs)
	}
	start := make([]int32, len(p.devs)+1)
	for _, s := range segs {
		for _, di := range s.devs {
			start[di+1]++
		}
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	type ref struct{ seg, k int32 }
	order := make([]ref, n)
	next := slices.Clone(start[:len(p.devs)])
	for si, s := range segs {
		for k, di := range s.devs {
			order[next[di]] = ref{int32(si), int32(k)}
			next[di]++
		}
	}
	id := func(r ref) string { return segs[r.seg].at(int(r.k)).ID }
	for d := range p.devs {
		lo, hi := int(start[d]), int(start[d+1])
		switch {
		case hi-lo < 2:
		case hi-lo <= 12:
			for i := lo + 1; i < hi; i++ { // insertion sort
				for j := i; j > lo && id(order[j]) < id(order[j-1]); j-- {
					order[j], order[j-1] = order[j-1], order[j]
				}
			}
		default:
			slices.SortFunc(order[lo:hi], func(a, b ref) int { return strings.Compare(id(a), id(b)) })
		}
	}
	out := make([]Alloc, n)
	for i, r := range order {
		out[i] = *segs[r.seg].at(int(r.k))
	}
	return out
}

// inDeviceOrder reports whether a segment is sorted by device, then id.
func inDeviceOrder(s seg) bool {
	for k := 1; k < len(s.devs); k++ {
		if d := s.devs[k] - s.devs[k-1]; d < 0 || d == 0 && s.at(k).ID <= s.at(k-1).ID {
			return false
		}
	}
	return true
}

// sortStops sorts stopped allocations by device, then id (their devices may
// be unknown), then the rest of allocOrder for duplicates.
func sortStops(allocs []Alloc) []Alloc {
	slices.SortFunc(allocs, func(a, b Alloc) int {
		return cmp.Or(strings.Compare(a.Device, b.Device), strings.Compare(a.ID, b.ID), allocOrder(&a, &b))
	})
	return allocs
}

// sortByDevice sorts allocations by device, then id, and returns them.
func sortByDevice(allocs []Alloc) []Alloc {
	slices.SortFunc(allocs, func(a, b Alloc) int {
		return cmp.Or(cmp.Compare(a.Device, b.Device), cmp.Compare(a.ID, b.ID))
	})
	return allocs
}
