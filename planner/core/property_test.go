package core

import (
	"cmp"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
	"pgregory.net/rapid"
)

// Property tests: random jobs, devices, existing allocations and reports.
// Existing allocations are either random (stale versions, vanished jobs,
// groups and devices, out-of-range indices, over-committed devices) or the
// plan of another random world, as after jobs and devices changed. Jobs use
// every constraint operator, affinities, spreads, disk and device requests
// (also on system and sysbatch groups, which validation would refuse, to see
// that the core copes).

func TestPropertyPlanInvariants(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		p := Compute(s, t0)
		if err := invariantViolation(s, p); err != "" {
			t.Fatal(err, "\n", dumpSnapshot(s), outcomeOf(p))
		}
	})
}

func TestPropertyDeterministic(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		p := Compute(s, t0)
		shuffled := Snapshot{
			Jobs:        rapid.Permutation(s.Jobs).Draw(t, "jobs order"),
			Devices:     rapid.Permutation(s.Devices).Draw(t, "devices order"),
			Allocations: rapid.Permutation(s.Allocations).Draw(t, "allocations order"),
		}
		if q := Compute(shuffled, t0); !reflect.DeepEqual(p, q) {
			t.Fatalf("input order changed the plan:\n %+v\n %+v", outcomeOf(p), outcomeOf(q))
		}
	})
}

func TestPropertyIdempotent(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		p := Compute(s, t0)
		again := Compute(feedBack(s, p), t0)
		if o := outcomeOf(again); o.Place != "" || o.Update != "" || o.Stop != "" {
			t.Fatalf("feeding the plan back changed it: %+v (first plan %+v)\n%s", o, outcomeOf(p), dumpSnapshot(s))
		}
		if !reflect.DeepEqual(again.Allocations, p.Allocations) {
			t.Fatalf("allocations changed:\n %s\n %s", shorts(p.Allocations), shorts(again.Allocations))
		}
		if !reflect.DeepEqual(again.Rollouts, p.Rollouts) || !reflect.DeepEqual(again.Deferred, p.Deferred) {
			t.Fatalf("rollouts changed:\n %+v %+v\n %+v %+v\n%s", p.Rollouts, p.Deferred, again.Rollouts, again.Deferred, dumpSnapshot(s))
		}
		if !reflect.DeepEqual(again.Lost, p.Lost) || !reflect.DeepEqual(again.Disconnected, p.Disconnected) || !again.NextEval.Equal(p.NextEval) {
			t.Fatalf("connectivity changed: lost %s → %s, disconnected %s → %s, next eval %s → %s\n%s%+v",
				shorts(p.Lost), shorts(again.Lost), shorts(p.Disconnected), shorts(again.Disconnected), p.NextEval, again.NextEval, dumpSnapshot(s), outcomeOf(p))
		}
		for id, gs := range p.Groups {
			for i, g := range gs {
				h := again.Groups[id][i]
				n, err1 := unplacedCount(g)
				m, err2 := unplacedCount(h)
				if g.Desired != h.Desired || g.Placed != h.Placed || n != m || err1 != nil || err2 != nil {
					t.Fatalf("status of %s changed: %+v → %+v", id, g, h)
				}
			}
		}
	})
}

// Once every device is back online, one plan leaves at most one allocation
// per slot and no Replaces mark, and the next plan changes nothing.
func TestPropertyOneSurvivorOnceOnline(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		p := Compute(s, t0)
		back := feedBack(s, p)
		back.Devices = slices.Clone(back.Devices)
		stopped := map[string]bool{}
		for _, a := range p.Stop {
			stopped[a.ID] = true
		}
		for i := range back.Devices {
			d := &back.Devices[i]
			d.Presence, d.OfflineSince = protocol.Online, time.Time{}
			// Devices report stopped allocations gone. (Ids are per slot
			// and device, so the report of a stopped one would otherwise
			// describe a new one placed in its slot on its device, which
			// matters here because generated versions may go down.)
			d.Reported = maps.Clone(d.Reported)
			maps.DeleteFunc(d.Reported, func(id string, _ protocol.AllocStatus) bool { return stopped[id] })
		}
		q := Compute(back, t0)
		if err := invariantViolation(back, q); err != "" {
			t.Fatal(err)
		}
		slots := map[string]Alloc{}
		for _, a := range q.Allocations {
			if a.Replaces != "" {
				t.Fatalf("%s still replaces %s", short(a), a.Replaces)
			}
			slot := fmt.Sprintf("%s.%s.%d", a.Job, a.Group, a.Index)
			if a.Type.OnEveryDevice() {
				slot += "@" + a.Device
			}
			if prev, dup := slots[slot]; dup {
				t.Fatalf("%s and %s survive", short(prev), short(a))
			}
			slots[slot] = a
		}
		// Only a rollout's progress deadline and reschedule delays are left
		// to wait for.
		want := rolloutDeadline(back, q, awayOf(back, q))
		if at := rescheduleEval(back, q); !at.IsZero() && (want.IsZero() || at.Before(want)) {
			want = at
		}
		if len(q.Lost)+len(q.Disconnected) > 0 || !q.NextEval.Equal(want) {
			t.Fatalf("online fleet with lost %s, disconnected %s, next eval %s", shorts(q.Lost), shorts(q.Disconnected), q.NextEval)
		}
		again := Compute(feedBack(back, q), t0)
		if o := outcomeOf(again); o.Place != "" || o.Update != "" || o.Stop != "" {
			t.Fatalf("feeding the reconciled plan back changed it: %+v (reconciled %+v)\n%s", o, outcomeOf(q), dumpSnapshot(back))
		}
	})
}

// The ranker (buckets of heaps) must choose exactly what a scan of every
// device for every instance chooses.
func TestPropertyRankerMatchesFullScan(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		fast, slow := Compute(s, t0), compute(s, t0, scanBest)
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("ranker and full scan differ:\n ranker %+v\n scan   %+v", outcomeOf(fast), outcomeOf(slow))
		}
	})
}

// scanBest is the reference ranking: every device scored from scratch.
func scanBest(p *planner, gp *groupPlan) (int32, bool) {
	spec := gp.spec
	total := float64(gp.count())
	// Live instances per spread value, and every value seen on a feasible
	// device.
	counts := make([]map[string]int, len(spec.spreads))
	seen := make([]map[string]bool, len(spec.spreads))
	for k := range spec.spreads {
		counts[k], seen[k] = map[string]int{}, map[string]bool{}
		for _, di := range gp.live {
			if v, set := spec.spreads[k].attr.value(p.devs[di]); set {
				counts[k][v]++
			}
		}
		for i := range p.devs {
			if p.placeReason(gp, int32(i)) == "" {
				if v, set := spec.spreads[k].attr.value(p.devs[i]); set {
					seen[k][v] = true
				}
			}
		}
	}
	best, bestTotal := int32(-1), int64(0)
	for i := range p.devs {
		di := int32(i)
		if di == p.avoid || p.placeReason(gp, di) != "" || p.distinctReason(gp, di) != "" || p.fitReason(gp, di) != "" {
			continue
		}
		d := p.devs[di]
		score := binPackKey(capacity(d), p.used[di].add(spec.demand.res)) + quantize(affinityScore(d, spec))
		if len(spec.spreads) > 0 {
			sum := 0.0
			for k := range spec.spreads {
				ss := &spec.spreads[k]
				rel := float64(ss.weight) / float64(spec.spreadSum)
				v, set := ss.attr.value(d)
				var sc float64
				switch {
				case !set:
					sc = spreadScore(false, false, 0, 0, 0, 0)
				case ss.targets != nil:
					if pct, listed := ss.targets[v]; listed {
						sc = spreadScore(true, true, counts[k][v], float64(pct)/100*total, 0, 0)
					} else {
						rest, want := 0, 0.0
						for val, n := range counts[k] {
							if _, listed := ss.targets[val]; !listed {
								rest += n
							}
						}
						if ss.percent < 100 {
							want = float64(100-ss.percent) / 100 * total
						}
						sc = spreadScore(true, true, rest, want, 0, 0)
					}
				default:
					first := true
					lo, hi := 0, 0
					for val := range seen[k] {
						n := counts[k][val]
						if first {
							lo, hi, first = n, n, false
						}
						lo, hi = min(lo, n), max(hi, n)
					}
					sc = spreadScore(false, true, counts[k][v], 0, lo, hi)
				}
				sum += rel * sc
			}
			score += quantize(sum)
		}
		if best < 0 || score > bestTotal {
			best, bestTotal = di, score
		}
	}
	return best, best >= 0
}

// invariantViolation says what a plan breaks of what every plan must
// satisfy, or "".
func invariantViolation(s Snapshot, p Plan) string {
	devices := devicesByID(s)
	jobs := jobsByID(s)

	// Buckets: every existing allocation is kept, updated or stopped, once;
	// placements are new.
	before := map[string]Alloc{}
	for _, a := range s.Allocations {
		before[a.ID] = a
	}
	fate := map[string]string{}
	buckets := [][]Alloc{p.Keep, p.Update, p.Stop, p.Place}
	for bi, name := range []string{"keep", "update", "stop", "place"} {
		for _, a := range buckets[bi] {
			if prev, dup := fate[a.ID]; dup {
				return fmt.Sprintf("%s is in %s and %s", a.ID, prev, name)
			}
			fate[a.ID] = name
			old, existed := before[a.ID]
			switch {
			case name == "place" && existed:
				return fmt.Sprintf("placed %s reuses an existing id", a.ID)
			case name != "place" && !existed:
				return fmt.Sprintf("%s %s was not an existing allocation", name, a.ID)
			case name == "keep" && !reflect.DeepEqual(a, old):
				return fmt.Sprintf("kept %s changed", a.ID)
			case name == "update" && (a.Device != old.Device || a.Index != old.Index):
				return fmt.Sprintf("updated %s moved", a.ID)
			}
		}
	}
	for id := range before {
		if fate[id] == "" {
			return fmt.Sprintf("existing %s is in no bucket", id)
		}
	}
	all := slices.Concat(p.Keep, p.Update, p.Place)
	sortByDevice(all)
	if len(all) != len(p.Allocations) || (len(all) > 0 && !reflect.DeepEqual(all, p.Allocations)) {
		return "Allocations is not Keep + Update + Place"
	}

	// Away allocations: lost ones of groups that replace, and those a
	// replacement names, on devices that are not online. Every Replaces
	// mark names an allocation of the same slot on another device. Away
	// allocations keep the spec they had and are not counted.
	groupOf := func(a Alloc) (protocol.Group, bool) {
		j, ok := jobs[a.Job]
		if !ok {
			return protocol.Group{}, false
		}
		gi := slices.IndexFunc(j.Job.Groups, func(g protocol.Group) bool { return g.Name == a.Group })
		if gi < 0 {
			return protocol.Group{}, false
		}
		return j.Job.Groups[gi], true
	}
	terminal := func(a Alloc) bool {
		d := devices[a.Device]
		st, ok := d.Reported[a.ID]
		return ok && st.JobVersion == a.JobVersion && (st.State == protocol.AllocComplete || st.State == protocol.AllocFailed)
	}
	inPlan := map[string]Alloc{}
	named := map[string]bool{}
	for _, a := range p.Allocations {
		if devices[a.Device] == nil {
			return fmt.Sprintf("%s on unknown device", short(a))
		}
		inPlan[a.ID] = a
	}
	for _, a := range p.Allocations {
		if a.Replaces == "" {
			continue
		}
		o, ok := inPlan[a.Replaces]
		if !ok || o.Job != a.Job || o.Group != a.Group || o.Index != a.Index || o.Device == a.Device {
			return fmt.Sprintf("%s replaces %q, not another allocation of its slot in the plan", short(a), a.Replaces)
		}
		named[a.Replaces] = true
	}
	deferred := map[string]bool{}
	for _, d := range p.Deferred {
		a, ok := inPlan[d.Alloc.ID]
		if !ok || !reflect.DeepEqual(a, d.Alloc) || d.Reason == "" {
			return fmt.Sprintf("deferred %s (%q) is not an allocation of the plan", short(d.Alloc), d.Reason)
		}
		if old := before[a.ID]; old.JobVersion != a.JobVersion || !reflect.DeepEqual(old.Tasks, a.Tasks) {
			return fmt.Sprintf("deferred %s changed", short(a))
		}
		if deferred[a.ID] {
			return fmt.Sprintf("%s deferred twice", short(a))
		}
		deferred[a.ID] = true
	}
	if err := rolloutViolation(s, p); err != "" {
		return err
	}
	away := map[string]bool{}
	var lost, disconnected []Alloc
	var nextEval time.Time
	for _, a := range p.Allocations {
		d := devices[a.Device]
		g, ok := groupOf(a)
		if !ok || d.Presence == protocol.Online || terminal(a) {
			continue
		}
		isLost := false
		if !d.OfflineSince.IsZero() {
			at := d.OfflineSince.Add(g.LostAfter())
			if isLost = !p.Now.Before(at); !isLost && (nextEval.IsZero() || at.Before(nextEval)) {
				nextEval = at
			}
		}
		if isLost {
			lost = append(lost, a)
		} else {
			disconnected = append(disconnected, a)
		}
		if isLost && g.ReplacesLost(jobs[a.Job].Job.Type) || named[a.ID] {
			away[a.ID] = true
		}
	}
	for _, a := range p.Allocations {
		// An away allocation may name one that is back (a chain: it is
		// judged against it when its own device returns); a counted one
		// names an away one.
		if a.Replaces != "" && !away[a.ID] && !away[a.Replaces] {
			return fmt.Sprintf("%s and %s it replaces are both counted", short(a), short(inPlan[a.Replaces]))
		}
	}
	if at := rolloutDeadline(s, p, away); !at.IsZero() && (nextEval.IsZero() || at.Before(nextEval)) {
		nextEval = at
	}
	if at := rescheduleEval(s, p); !at.IsZero() && (nextEval.IsZero() || at.Before(nextEval)) {
		nextEval = at
	}
	if shorts(lost) != shorts(p.Lost) || shorts(disconnected) != shorts(p.Disconnected) || !nextEval.Equal(p.NextEval) {
		return fmt.Sprintf("connectivity: lost %s, disconnected %s, next eval %s; want %s, %s, %s",
			shorts(p.Lost), shorts(p.Disconnected), p.NextEval, shorts(lost), shorts(disconnected), nextEval)
	}
	byJob := map[string]int{}
	for _, a := range lost {
		byJob[a.Job]++
	}
	if len(byJob) == 0 {
		byJob = nil
	}
	if !reflect.DeepEqual(byJob, p.LostByJob) {
		return fmt.Sprintf("LostByJob %v, want %v", p.LostByJob, byJob)
	}

	// Never over-commit any resource (away allocations reserve their own
	// tasks' demand); every other allocation runs its job's current spec on
	// a known device that may run it.
	type use struct {
		res  resources
		devs map[string]int
	}
	used := map[string]*use{}
	perGroup := map[[2]string][]Alloc{}
	live := map[[2]string][]Alloc{} // non-terminal allocations, by group
	for _, a := range p.Allocations {
		d := devices[a.Device]
		if d == nil {
			return fmt.Sprintf("%s on unknown device", short(a))
		}
		j, ok := jobs[a.Job]
		if !ok || j.Stopped {
			return fmt.Sprintf("%s of a stopped or absent job", short(a))
		}
		gi := slices.IndexFunc(j.Job.Groups, func(g protocol.Group) bool { return g.Name == a.Group })
		if gi < 0 {
			return fmt.Sprintf("%s of an absent group", short(a))
		}
		g := j.Job.Groups[gi]
		if !away[a.ID] && !deferred[a.ID] && (a.JobVersion != j.Version || a.Type != j.Job.Type || !slices.EqualFunc(a.Tasks, g.Tasks, func(x, y protocol.Task) bool { return protocol.SpecHash(x) == protocol.SpecHash(y) })) {
			return fmt.Sprintf("%s does not run the current spec", short(a))
		}
		st, reported := d.Reported[a.ID]
		done := reported && st.JobVersion == a.JobVersion && st.State == protocol.AllocComplete
		isTerminal := reported && st.JobVersion == a.JobVersion && (st.State == protocol.AllocComplete || st.State == protocol.AllocFailed)
		key := [2]string{a.Job, a.Group}
		if !isTerminal {
			u := used[a.Device]
			if u == nil {
				u = &use{devs: map[string]int{}}
				used[a.Device] = u
			}
			for _, tk := range a.Tasks {
				u.res = u.res.add(resources{CPU: tk.Resources.CPU, Memory: tk.Resources.Memory, Disk: tk.Resources.Disk})
				for _, r := range tk.Resources.Devices {
					u.devs[r.Name] += max(r.Count, 1)
				}
			}
			if !away[a.ID] {
				live[key] = append(live[key], a)
			}
		}
		if !(done && a.Type.RunsToCompletion()) {
			if r := infeasible(keepChecks, d, compileGroup(&g)); r != "" {
				return fmt.Sprintf("%s on a device that cannot run it: %s", short(a), r)
			}
		}
		if !away[a.ID] {
			perGroup[key] = append(perGroup[key], a)
		}
	}
	for id, u := range used {
		d := devices[id]
		if c := capacity(d); u.res.CPU > c.CPU || u.res.Memory > c.Memory || u.res.Disk > c.Disk {
			return fmt.Sprintf("device %s over-committed: %+v > %+v", id, u.res, c)
		}
		for name, n := range u.devs {
			if n > d.Resources[name] {
				return fmt.Sprintf("device %s over-committed: %d %s, has %d", id, n, name, d.Resources[name])
			}
		}
	}
	for _, a := range p.Place {
		d := devices[a.Device]
		g := jobs[a.Job].Job.Groups[slices.IndexFunc(jobs[a.Job].Job.Groups, func(g protocol.Group) bool { return g.Name == a.Group })]
		if r := infeasible(placeChecks, d, compileGroup(&g)); r != "" {
			return fmt.Sprintf("placed %s on an infeasible device: %s", short(a), r)
		}
		// The canonical id, unless it is taken (AllocID): by an allocation
		// of the snapshot (a drain can free a slot whose other claimant
		// just stopped on the device placePass picks), another placement,
		// or a report of the device (an allocation stopped there).
		id := AllocID(a.Job, a.Group, a.Index, a.Device)
		if _, reported := d.Reported[id]; a.ID != id && !reported && !canonicalTaken(s, p, id) {
			return fmt.Sprintf("placed %s with id %s", short(a), a.ID)
		}
	}

	// Every desired instance is placed or counted unplaced; distinct
	// constraints hold; system and sysbatch groups run on every feasible
	// device or say why not.
	stopped := 0
	for _, j := range jobs {
		gs, ok := p.Groups[j.Job.ID]
		if j.Stopped {
			stopped++
			if ok {
				return fmt.Sprintf("status for stopped job %s", j.Job.ID)
			}
			continue
		}
		if !ok || len(gs) != len(j.Job.Groups) {
			return fmt.Sprintf("status of %s: %+v", j.Job.ID, gs)
		}
		for gi, g := range j.Job.Groups {
			st := gs[gi]
			key := [2]string{j.Job.ID, g.Name}
			allocs := perGroup[key]
			if st.Name != g.Name || st.Placed != len(allocs) {
				return fmt.Sprintf("status %+v, %d allocations", st, len(allocs))
			}
			unplaced, err := unplacedCount(st)
			if err != nil {
				return err.Error()
			}
			if st.Placed+unplaced != st.Desired {
				return fmt.Sprintf("status %+v: placed + unplaced != desired", st)
			}
			slots := map[string]bool{}
			for _, a := range allocs {
				slot := fmt.Sprint(a.Index)
				if j.Job.Type.OnEveryDevice() {
					slot = a.Device
					if a.Index != 0 {
						return fmt.Sprintf("%s allocation %s with index %d", j.Job.Type, short(a), a.Index)
					}
				} else if a.Index < 0 || a.Index >= g.Instances() {
					return fmt.Sprintf("%s out of range", short(a))
				}
				if slots[slot] {
					return fmt.Sprintf("two allocations for slot %s of %s.%s", slot, j.Job.ID, g.Name)
				}
				slots[slot] = true
			}
			if !j.Job.Type.OnEveryDevice() && st.Desired != g.Instances() {
				return fmt.Sprintf("desired %d, count %d", st.Desired, g.Instances())
			}
			if err := distinctViolation(g, live[key], devices); err != "" {
				return err
			}
			if j.Job.Type.OnEveryDevice() && !slices.ContainsFunc(g.Constraints, func(c protocol.Constraint) bool { return c.Operator == protocol.OpDistinctProperty }) {
				spec := compileGroup(&g)
				missing, union := 0, len(slots)
				for id, d := range devices {
					if infeasible(placeChecks, d, spec) == "" && !slots[id] {
						missing++
						union++
					}
				}
				if unplaced != missing || st.Desired != union {
					return fmt.Sprintf("%s group %s.%s: %d feasible devices without it, %d unplaced; desired %d, want %d",
						j.Job.Type, j.Job.ID, g.Name, missing, unplaced, st.Desired, union)
				}
			}
		}
	}
	if len(p.Groups) != len(jobs)-stopped {
		return fmt.Sprintf("groups for %d jobs", len(p.Groups))
	}
	return ""
}

// healthOf is a device's verdict on an allocation at its version, failed
// counting as unhealthy, as the core reads it.
func healthOf(d *Device, a Alloc) protocol.Health {
	st, ok := d.Reported[a.ID]
	switch {
	case !ok || st.JobVersion != a.JobVersion:
		return ""
	case st.Health == "" && st.State == protocol.AllocFailed:
		return protocol.Unhealthy
	}
	return st.Health
}

// rolledGroups are the groups of a job whose updates a rollout gates.
func rolledGroups(j Job) []protocol.Group {
	if j.Stopped || (j.Job.Type != protocol.JobService && j.Job.Type != protocol.JobSystem) {
		return nil
	}
	var gs []protocol.Group
	for _, g := range j.Job.Groups {
		if g.Update != nil {
			gs = append(gs, g)
		}
	}
	return gs
}

// rolloutCounts counts a group's allocations of the plan at the job's
// version, as RolloutGroup does, leaving out the away ones.
func rolloutCounts(s Snapshot, p Plan, j Job, g protocol.Group, away map[string]bool) (n protocol.RolloutGroup, inFlight int) {
	devices := devicesByID(s)
	pol, _ := g.UpdatePolicy()
	for _, a := range p.Allocations {
		if a.Job != j.Job.ID || a.Group != g.Name || away[a.ID] || a.JobVersion != j.Version || a.Type != j.Job.Type || !sameTasks(a.Tasks, g.Tasks) {
			continue
		}
		d := devices[a.Device]
		n.Updated++
		switch healthOf(d, a) {
		case protocol.Healthy:
			n.Healthy++
		case protocol.Unhealthy:
			n.Unhealthy++
		default:
			if d.Presence == protocol.Online {
				inFlight++
			} else if !pol.OfflineWait {
				n.PendingOffline++
			}
		}
	}
	return n, inFlight
}

// awayOf is the set of allocations a plan keeps frozen: lost ones of groups
// that replace, and those a replacement names, on devices that are not
// online.
func awayOf(s Snapshot, p Plan) map[string]bool {
	devices := devicesByID(s)
	jobs := jobsByID(s)
	named := namedByReplaces(p)
	away := map[string]bool{}
	for _, a := range p.Allocations {
		d, j := devices[a.Device], jobs[a.Job]
		gi := slices.IndexFunc(j.Job.Groups, func(g protocol.Group) bool { return g.Name == a.Group })
		if d == nil || gi < 0 || d.Presence == protocol.Online {
			continue
		}
		if st, ok := d.Reported[a.ID]; ok && st.JobVersion == a.JobVersion && (st.State == protocol.AllocComplete || st.State == protocol.AllocFailed) {
			continue
		}
		g := j.Job.Groups[gi]
		lost := !d.OfflineSince.IsZero() && !p.Now.Before(d.OfflineSince.Add(g.LostAfter()))
		if lost && g.ReplacesLost(j.Job.Type) || named[a.ID] {
			away[a.ID] = true
		}
	}
	return away
}

// rescheduleEval is the earliest time a failed allocation of the plan may
// be rescheduled, after now (zero when none waits): every one that runs the
// job's spec, in a group that reschedules, that no Replaces mark ties to
// another allocation (failed allocations are never away, even on lost
// devices).
func rescheduleEval(s Snapshot, p Plan) time.Time {
	devices := devicesByID(s)
	jobs := jobsByID(s)
	named := namedByReplaces(p)
	var next time.Time
	for _, a := range p.Allocations {
		d, j := devices[a.Device], jobs[a.Job]
		gi := slices.IndexFunc(j.Job.Groups, func(g protocol.Group) bool { return g.Name == a.Group })
		if d == nil || gi < 0 {
			continue
		}
		g := j.Job.Groups[gi]
		st, reported := d.Reported[a.ID]
		if !reported || st.JobVersion != a.JobVersion || st.State != protocol.AllocFailed ||
			a.JobVersion != j.Version || !sameTasks(a.Tasks, g.Tasks) || a.Replaces != "" || named[a.ID] {
			continue
		}
		typ := cmp.Or(j.Job.Type, protocol.JobService)
		if a.Type != typ {
			continue
		}
		pol, ok := g.ReschedulePolicy(typ)
		if !ok {
			continue
		}
		if at := rescheduleAt(pol, a.Reschedules, failedAt(d, st)); p.Now.Before(at) && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	return next
}

// rolloutDeadline is the earliest progress deadline of a running rollout
// with allocations in flight, zero when there is none.
func rolloutDeadline(s Snapshot, p Plan, away map[string]bool) time.Time {
	var at time.Time
	for _, j := range latestJobs(s.Jobs) {
		r, ok := p.Rollouts[j.Job.ID]
		if !ok || r.State != protocol.RolloutRunning {
			continue
		}
		for _, g := range rolledGroups(j) {
			if _, inFlight := rolloutCounts(s, p, j, g, away); inFlight > 0 {
				pol, _ := g.UpdatePolicy()
				if t := r.ProgressAt.Add(pol.ProgressDeadline); at.IsZero() || t.Before(at) {
					at = t
				}
			}
		}
	}
	return at
}

// rolloutViolation checks Plan.Rollouts against the plan's allocations.
func rolloutViolation(s Snapshot, p Plan) string {
	away := awayOf(s, p)
	jobs := latestJobs(s.Jobs)
	want := 0
	for _, j := range jobs {
		gs := rolledGroups(j)
		r, ok := p.Rollouts[j.Job.ID]
		if len(gs) == 0 {
			if ok {
				return fmt.Sprintf("rollout for %s, which has none", j.Job.ID)
			}
			continue
		}
		want++
		if !ok || r.Version != j.Version || len(r.Groups) != len(gs) {
			return fmt.Sprintf("rollout of %s: %+v", j.Job.ID, r)
		}
		for k, g := range gs {
			n, _ := rolloutCounts(s, p, j, g, away)
			rg := r.Groups[k]
			n.Name, n.Total, n.Canaries, n.Promoted = g.Name, rg.Total, rg.Canaries, rg.Promoted
			if rg != n {
				return fmt.Sprintf("rollout group %s.%s: %+v, counted %+v", j.Job.ID, g.Name, rg, n)
			}
			gi := slices.IndexFunc(j.Job.Groups, func(x protocol.Group) bool { return x.Name == g.Name })
			if rg.Total != p.Groups[j.Job.ID][gi].Desired {
				return fmt.Sprintf("rollout group %s.%s: total %d, desired %d", j.Job.ID, g.Name, rg.Total, p.Groups[j.Job.ID][gi].Desired)
			}
		}
		if in := j.Rollout; in != nil && in.Version == j.Version && in.Done() && (r.State != in.State) {
			return fmt.Sprintf("rollout of %s left %s for %s", j.Job.ID, in.State, r.State)
		}
	}
	if len(p.Rollouts) != want {
		return fmt.Sprintf("%d rollouts, want %d", len(p.Rollouts), want)
	}
	return ""
}

// canonicalTaken reports whether an allocation id is used by an allocation
// of the snapshot or placed by the plan.
func canonicalTaken(s Snapshot, p Plan, id string) bool {
	used := func(a Alloc) bool { return a.ID == id }
	return slices.ContainsFunc(s.Allocations, used) || slices.ContainsFunc(p.Place, used)
}

// distinctViolation checks the distinct constraints of a group over its
// non-terminal allocations.
func distinctViolation(g protocol.Group, live []Alloc, devices map[string]*Device) string {
	for _, c := range g.Constraints {
		switch c.Operator {
		case protocol.OpDistinctHosts:
			per := map[string]int{}
			for _, a := range live {
				if per[a.Device]++; per[a.Device] > 1 {
					return fmt.Sprintf("distinct_hosts: two instances of %s.%s on %s", a.Job, a.Group, a.Device)
				}
			}
		case protocol.OpDistinctProperty:
			limit, _ := protocol.DistinctLimit(c.Value)
			attr := parseAttribute(c.Attribute)
			per := map[string]int{}
			for _, a := range live {
				v, set := attr.value(devices[a.Device])
				if !set {
					return fmt.Sprintf("%s: %s on a device without the attribute", c, short(a))
				}
				if per[v]++; per[v] > limit {
					return fmt.Sprintf("%s: %d instances of %s.%s on %s", c, per[v], a.Job, a.Group, v)
				}
			}
		}
	}
	return ""
}

// unplacedCount reads the count from an Unplaced message, 0 when empty.
func unplacedCount(st protocol.GroupStatus) (int, error) {
	if st.Unplaced == "" {
		return 0, nil
	}
	var n, desired int
	if _, err := fmt.Sscanf(st.Unplaced, "%d of %d instances unplaced:", &n, &desired); err != nil || desired != st.Desired || n <= 0 {
		return 0, fmt.Errorf("bad unplaced message %q for %+v: %v", st.Unplaced, st, err)
	}
	return n, nil
}

// Generators. Ids come from small pools so that allocations, jobs and
// devices meet often.

var (
	jobIDs    = []string{"j0", "j1", "j2", "j3"}
	groupIDs  = []string{"g0", "g1", "g2"}
	deviceIDs = []string{"d0", "d1", "d2", "d3", "d4", "d5"}
	jobTypes  = []protocol.JobType{protocol.JobService, protocol.JobBatch, protocol.JobSystem, protocol.JobSysBatch}

	constraintPool = []protocol.Constraint{
		{Attribute: "${device.arch}", Operator: "=", Value: "arm64"},
		{Attribute: "${device.labels.zone}", Operator: "=", Value: "north"},
		{Attribute: "${device.labels.zone}", Operator: "!=", Value: "south"},
		{Attribute: "${device.os}", Operator: "==", Value: "linux"},
		{Attribute: "${device.cpu.cores}", Operator: ">=", Value: "4"},
		{Attribute: "${device.memory}", Operator: "<", Value: "1024"},
		{Attribute: "${device.kernel}", Operator: "version", Value: ">= 6.0, < 6.5"},
		{Attribute: "${device.labels.features}", Operator: "set_contains", Value: "gpu, camera"},
		{Attribute: "${device.labels.features}", Operator: "set_contains_any", Value: "camera,npu"},
		{Attribute: "${device.labels.site}", Operator: "is_set"},
		{Attribute: "${device.labels.site}", Operator: "is_not_set"},
		{Attribute: "${device.hostname}", Operator: "regexp", Value: "^d[0-2]"},
		{Operator: "distinct_hosts"},
		{Attribute: "${device.labels.rack}", Operator: "distinct_property"},
		{Attribute: "${device.labels.site}", Operator: "distinct_property", Value: "2"},
	}
	affinityPool = []protocol.Affinity{
		{Attribute: "${device.labels.site}", Operator: "=", Value: "a", Weight: 50},
		{Attribute: "${device.arch}", Operator: "=", Value: "arm64", Weight: -30},
		{Attribute: "${device.labels.features}", Operator: "set_contains", Value: "gpu", Weight: 100},
		{Attribute: "${device.cpu.cores}", Operator: ">", Value: "2", Weight: 10},
	}
	spreadPool = []protocol.Spread{
		{Attribute: "${device.labels.site}", Weight: 50},
		{Attribute: "${device.labels.rack}", Weight: 20},
		{Attribute: "${device.labels.site}", Weight: 80, Targets: []protocol.SpreadTarget{{Value: "a", Percent: 70}, {Value: "b", Percent: 30}}},
		{Attribute: "${device.labels.site}", Weight: 100, Targets: []protocol.SpreadTarget{{Value: "b", Percent: 50}}},
		{Attribute: "${device.labels.rack}", Weight: 30, Targets: []protocol.SpreadTarget{{Value: "r1", Percent: 0}, {Value: "r2", Percent: 100}}},
	}
)

func genSnapshot(t *rapid.T) Snapshot {
	s := Snapshot{Jobs: genJobs(t, "now"), Devices: genDevices(t, "now")}
	switch rapid.IntRange(0, 2).Draw(t, "existing allocations") {
	case 0: // random
		s.Allocations = genAllocs(t, s.Jobs)
	case 1: // the plan of another world
		prev := Snapshot{Jobs: genJobs(t, "before"), Devices: genDevices(t, "before")}
		prev.Allocations = genAllocs(t, prev.Jobs)
		s.Allocations = Compute(prev, t0).Allocations
	default: // the plans of this world, devices coming and going between them
		s.Allocations = genAllocs(t, s.Jobs)
		for range rapid.IntRange(1, 3).Draw(t, "earlier plans") {
			prev := s
			prev.Devices = slices.Clone(s.Devices)
			for i := range prev.Devices {
				genPresence(t, &prev.Devices[i])
			}
			s.Allocations = Compute(prev, t0).Allocations
		}
	}
	// Reports: the state of some allocations, at their version or another.
	states := []protocol.AllocState{"", protocol.AllocPending, protocol.AllocRunning, protocol.AllocComplete, protocol.AllocFailed}
	for _, a := range s.Allocations {
		i := slices.IndexFunc(s.Devices, func(d Device) bool { return d.ID == a.Device })
		state := rapid.SampledFrom(states).Draw(t, "state")
		if i < 0 || state == "" {
			continue
		}
		v := a.JobVersion
		if rapid.IntRange(0, 3).Draw(t, "stale report") == 0 {
			v--
		}
		if state == protocol.AllocFailed && v != a.JobVersion && slices.ContainsFunc(s.Jobs, func(j Job) bool { return j.Job.ID == a.Job && j.Version == v }) {
			// Generated versions may go down: an update to the job's
			// version would make this failure of an earlier run look
			// like the updated allocation's, which real versions (only
			// ever growing) cannot.
			state = protocol.AllocRunning
		}
		d := &s.Devices[i]
		if d.Reported == nil {
			d.Reported = map[string]protocol.AllocStatus{}
		}
		st := protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: v, Group: a.Group, State: state}
		st.Health = rapid.SampledFrom([]protocol.Health{"", "", protocol.Healthy, protocol.Unhealthy}).Draw(t, "health")
		if v == a.JobVersion && runsOtherSpec(s.Jobs, a) {
			// Versions are immutable: a verdict about this version and
			// other tasks cannot exist (the allocation is generated stale),
			// nor can its failure (the core would reschedule the updated
			// allocation in the next plan).
			st.Health = ""
			if st.State == protocol.AllocFailed {
				st.State = protocol.AllocRunning
			}
		}
		for _, tk := range a.Tasks {
			ts := protocol.TaskStatus{Name: tk.Name, State: protocol.TaskRunning}
			if ago := rapid.SampledFrom([]time.Duration{-1, 0, time.Minute, time.Hour}).Draw(t, "started ago"); ago >= 0 {
				at := t0.Add(-ago)
				ts.StartedAt = &at
			}
			if state == protocol.AllocFailed {
				if ago := rapid.SampledFrom([]time.Duration{-1, 0, 20 * time.Second, 2 * time.Minute, time.Hour}).Draw(t, "finished ago"); ago >= 0 {
					at := t0.Add(-ago)
					ts.FinishedAt = &at
					ts.State = protocol.TaskFailed
				}
			}
			st.Tasks = append(st.Tasks, ts)
		}
		d.Reported[a.ID] = st
		if ago := rapid.SampledFrom([]time.Duration{-1, 0, 15 * time.Second, 10 * time.Minute}).Draw(t, "reported ago"); ago >= 0 {
			d.ReportedAt = t0.Add(-ago)
		}
	}
	genRollouts(t, s.Jobs)
	return s
}

// runsOtherSpec reports whether an allocation is at its job's version with
// another type or other tasks than that version's.
func runsOtherSpec(jobs []Job, a Alloc) bool {
	for _, j := range latestJobs(jobs) {
		if j.Job.ID != a.Job || j.Version != a.JobVersion {
			continue
		}
		for _, g := range j.Job.Groups {
			if g.Name == a.Group {
				return a.Type != j.Job.Type || !sameTasks(a.Tasks, g.Tasks)
			}
		}
	}
	return false
}

// genRollouts gives some jobs the rollout a previous plan left, of their
// version or another, in any state.
func genRollouts(t *rapid.T, jobs []Job) {
	for i := range jobs {
		j := &jobs[i]
		if rapid.IntRange(0, 2).Draw(t, "input rollout") > 0 {
			continue
		}
		r := &protocol.Rollout{
			Version:    j.Version - uint64(rapid.IntRange(0, 1).Draw(t, "rollout of an older version")),
			State:      rapid.SampledFrom([]protocol.RolloutState{protocol.RolloutRunning, protocol.RolloutPaused, protocol.RolloutSuccessful, protocol.RolloutFailed}).Draw(t, "rollout state"),
			StartedAt:  t0.Add(-time.Hour),
			ProgressAt: t0.Add(-rapid.SampledFrom([]time.Duration{0, time.Minute, 10 * time.Minute, time.Hour}).Draw(t, "progress ago")),
		}
		for _, g := range j.Job.Groups {
			if g.Update == nil {
				continue
			}
			r.Groups = append(r.Groups, protocol.RolloutGroup{
				Name:     g.Name,
				Canaries: rapid.SampledFrom([]int{0, g.Update.Canary}).Draw(t, "canaries"),
				Promoted: rapid.Bool().Draw(t, "promoted"),
				Healthy:  rapid.IntRange(0, 3).Draw(t, "healthy before"),
			})
		}
		j.Rollout = r
	}
}

// genPresence draws a device's presence and, offline, since when: often
// long enough for the default lost_after, sometimes a leftover time on an
// online device (which must be ignored).
func genPresence(t *rapid.T, d *Device) {
	d.Presence = rapid.SampledFrom([]protocol.PresenceStatus{protocol.Online, protocol.Online, protocol.Online, protocol.Offline, ""}).Draw(t, "presence")
	d.OfflineSince = time.Time{}
	if ago := rapid.SampledFrom([]time.Duration{-1, 30 * time.Second, 4 * time.Minute, 5 * time.Minute, time.Hour}).Draw(t, "offline for"); ago >= 0 {
		d.OfflineSince = t0.Add(-ago)
	}
}

func genDevices(t *rapid.T, label string) []Device {
	var out []Device
	for _, id := range deviceIDs[:rapid.IntRange(0, len(deviceIDs)-1).Draw(t, label+" devices")] {
		d := Device{ID: id}
		genPresence(t, &d)
		switch rapid.IntRange(0, 7).Draw(t, "scheduling") {
		case 0:
			d.Ineligible = true
		case 1:
			d.Draining = true
		}
		if rapid.IntRange(0, 9).Draw(t, "no facts") > 0 {
			d.HasFacts = true
			d.Facts = protocol.Facts{
				Device:   id,
				Hostname: id,
				Arch:     rapid.SampledFrom([]string{"amd64", "arm64"}).Draw(t, "arch"),
				OS:       "linux",
				Kernel:   rapid.SampledFrom([]string{"", "5.10.0", "6.1.0-18-amd64", "6.6.31+rpt-rpi-v8"}).Draw(t, "kernel"),
				CPUCores: rapid.SampledFrom([]int{1, 4, 8}).Draw(t, "cores"),
				CPUMHz:   rapid.SampledFrom([]int{0, 500, 1000, 2000, 4000}).Draw(t, "cpu"),
				MemoryMB: rapid.SampledFrom([]int{0, 256, 512, 1024, 4096}).Draw(t, "memory"),
			}
			d.DiskMB = rapid.SampledFrom([]int{0, 500, 4000}).Draw(t, "disk")
			if gpus := rapid.IntRange(0, 2).Draw(t, "gpus"); gpus > 0 {
				d.Resources = map[string]int{"nvidia/gpu": gpus}
			}
			for _, drv := range []string{protocol.DriverPodman, protocol.DriverExec} {
				if rapid.IntRange(0, 4).Draw(t, "lacks "+drv) > 0 {
					d.Facts.Drivers = append(d.Facts.Drivers, drv)
				}
			}
			labels := map[string]string{}
			for _, l := range []struct {
				key    string
				values []string
			}{
				{"zone", []string{"", "north", "south"}},
				{"site", []string{"", "a", "b", "c"}},
				{"rack", []string{"", "r1", "r2"}},
				{"features", []string{"", "gpu,camera", "camera", "npu, gpu"}},
			} {
				if v := rapid.SampledFrom(l.values).Draw(t, l.key); v != "" {
					labels[l.key] = v
				}
			}
			if len(labels) > 0 {
				d.Facts.Labels = labels
			}
		}
		out = append(out, d)
	}
	return out
}

func genJobs(t *rapid.T, label string) []Job {
	var out []Job
	for _, id := range jobIDs[:rapid.IntRange(0, len(jobIDs)-1).Draw(t, label+" jobs")] {
		j := Job{
			Job:     protocol.Job{ID: id, Type: rapid.SampledFrom(jobTypes).Draw(t, "type")},
			Version: uint64(rapid.IntRange(1, 3).Draw(t, "version")),
			Stopped: rapid.IntRange(0, 7).Draw(t, "stopped") == 0,
		}
		for _, name := range groupIDs[:rapid.IntRange(1, 2).Draw(t, "groups")] {
			n := rapid.IntRange(0, 5).Draw(t, "count")
			g := protocol.Group{Name: name, Count: &n, Tasks: genTasks(t)}
			for range rapid.IntRange(0, 2).Draw(t, "constraints") {
				g.Constraints = append(g.Constraints, rapid.SampledFrom(constraintPool).Draw(t, "constraint"))
			}
			for range rapid.IntRange(0, 2).Draw(t, "affinities") {
				g.Affinities = append(g.Affinities, rapid.SampledFrom(affinityPool).Draw(t, "affinity"))
			}
			for range rapid.IntRange(0, 2).Draw(t, "spreads") {
				g.Spreads = append(g.Spreads, rapid.SampledFrom(spreadPool).Draw(t, "spread"))
			}
			if rapid.IntRange(0, 2).Draw(t, "update block") == 0 {
				// Also on batch and sysbatch groups, which validation
				// refuses: the core must ignore them there.
				u := &protocol.Update{
					MaxParallel: rapid.IntRange(0, 3).Draw(t, "max_parallel"),
					Canary:      rapid.IntRange(0, 2).Draw(t, "canary"),
					AutoPromote: rapid.Bool().Draw(t, "auto_promote"),
					Offline:     rapid.SampledFrom([]string{"", protocol.OfflineSkip, protocol.OfflineWait}).Draw(t, "offline"),
				}
				if rapid.Bool().Draw(t, "abort") {
					u.Abort = &protocol.Abort{
						FailureRatio: rapid.SampledFrom([]float64{0, 0.3, 0.5}).Draw(t, "failure ratio"),
						MinDevices:   rapid.IntRange(0, 3).Draw(t, "min devices"),
					}
				}
				g.Update = u
			}
			if rapid.Bool().Draw(t, "disconnect policy") {
				dp := &protocol.Disconnect{
					LostAfter: protocol.Duration(rapid.SampledFrom([]time.Duration{0, time.Minute, 5 * time.Minute, time.Hour}).Draw(t, "lost after")),
					Reconcile: rapid.SampledFrom([]string{"", protocol.ReconcileKeepOriginal, protocol.ReconcileKeepReplacement, protocol.ReconcileBestScore, protocol.ReconcileLongestRunning}).Draw(t, "reconcile"),
				}
				if r := rapid.IntRange(0, 2).Draw(t, "replace"); r > 0 {
					replace := r == 1
					dp.Replace = &replace
				}
				g.Disconnect = dp
			}
			if rapid.IntRange(0, 2).Draw(t, "reschedule block") == 0 {
				// Also on system and sysbatch jobs, which validation
				// refuses: Compute must ignore it there.
				g.Reschedule = &protocol.Reschedule{
					Attempts:      rapid.IntRange(0, 2).Draw(t, "reschedule attempts"),
					Interval:      protocol.Duration(rapid.SampledFrom([]time.Duration{0, 10 * time.Minute}).Draw(t, "reschedule interval")),
					Delay:         protocol.Duration(rapid.SampledFrom([]time.Duration{0, 10 * time.Second, 5 * time.Minute}).Draw(t, "reschedule delay")),
					DelayFunction: rapid.SampledFrom([]string{"", protocol.DelayConstant}).Draw(t, "delay function"),
					Unlimited:     rapid.IntRange(0, 3).Draw(t, "unlimited") == 0,
				}
			}
			j.Job.Groups = append(j.Job.Groups, g)
		}
		out = append(out, j)
	}
	return out
}

func genTasks(t *rapid.T) []protocol.Task {
	var ts []protocol.Task
	for i := range rapid.IntRange(1, 2).Draw(t, "tasks") {
		tk := task(fmt.Sprintf("t%d", i),
			rapid.SampledFrom([]string{protocol.DriverPodman, protocol.DriverExec}).Draw(t, "driver"),
			rapid.SampledFrom([]int{0, 100, 300, 600, 1200}).Draw(t, "task cpu"),
			rapid.SampledFrom([]int{0, 64, 200, 500}).Draw(t, "task memory"))
		tk.Resources.Disk = rapid.SampledFrom([]int{0, 0, 200, 1000}).Draw(t, "task disk")
		if rapid.IntRange(0, 3).Draw(t, "gpu") == 0 {
			tk.Resources.Devices = []protocol.DeviceRequest{{Name: "nvidia/gpu", Count: 1}}
		}
		ts = append(ts, tk)
	}
	return ts
}

// genAllocs draws allocations that mostly, not always, match the jobs.
func genAllocs(t *rapid.T, jobs []Job) []Alloc {
	var out []Alloc
	seen := map[string]bool{}
	for range rapid.IntRange(0, 10).Draw(t, "allocations") {
		a := Alloc{
			Job:        rapid.SampledFrom(append(slices.Clone(jobIDs), "ghost")).Draw(t, "alloc job"),
			Group:      rapid.SampledFrom(groupIDs).Draw(t, "alloc group"),
			Index:      rapid.IntRange(0, 4).Draw(t, "alloc index"),
			Device:     rapid.SampledFrom(deviceIDs).Draw(t, "alloc device"),
			JobVersion: uint64(rapid.IntRange(1, 3).Draw(t, "alloc version")),
			Type:       rapid.SampledFrom(jobTypes).Draw(t, "alloc type"),
		}
		a.ID = AllocID(a.Job, a.Group, a.Index, a.Device)
		if seen[a.ID] {
			continue
		}
		seen[a.ID] = true
		for _, ago := range []time.Duration{time.Hour, 5 * time.Minute, time.Minute, 10 * time.Second}[rapid.IntRange(0, 4).Draw(t, "reschedules"):] {
			a.Reschedules = append(a.Reschedules, t0.Add(-ago))
		}
		a.Tasks = genTasks(t)
		for _, j := range jobs {
			for _, g := range j.Job.Groups {
				if j.Job.ID == a.Job && g.Name == a.Group && rapid.Bool().Draw(t, "current") {
					a.JobVersion, a.Type, a.Tasks = j.Version, j.Job.Type, g.Tasks
				}
			}
		}
		out = append(out, a)
	}
	// Replaces marks: mostly naming an allocation of the same slot,
	// sometimes anything.
	for i := range out {
		if len(out) < 2 || rapid.IntRange(0, 3).Draw(t, "mark") > 0 {
			continue
		}
		o := out[rapid.IntRange(0, len(out)-1).Draw(t, "marked")]
		if rapid.IntRange(0, 3).Draw(t, "other slot") > 0 {
			o.Job, o.Group, o.Index = out[i].Job, out[i].Group, out[i].Index
			o.ID = AllocID(o.Job, o.Group, o.Index, o.Device)
		}
		out[i].Replaces = o.ID
	}
	return out
}

// destructiveUpdates are the allocations of a plan's Update bucket whose
// tasks or type changed, by job and group.
func destructiveUpdates(s Snapshot, p Plan) map[[2]string][]Alloc {
	before := map[string]Alloc{}
	for _, a := range s.Allocations {
		before[a.ID] = a
	}
	out := map[[2]string][]Alloc{}
	for _, u := range p.Update {
		old := before[u.ID]
		if old.JobVersion != u.JobVersion && (old.Type != u.Type || !sameTasks(old.Tasks, u.Tasks)) {
			key := [2]string{u.Job, u.Group}
			out[key] = append(out[key], u)
		}
	}
	return out
}

// mayBeForced reports whether a destructive update may have been forced:
// an allocation that could not stay as it was (its device over-committed)
// is updated at once when the new demand fits, which needs the old demand
// to exceed the new in some resource.
func mayBeForced(s Snapshot, u Alloc) bool {
	i := slices.IndexFunc(s.Allocations, func(a Alloc) bool { return a.ID == u.ID })
	old, now := demandOf(s.Allocations[i].Tasks), demandOf(u.Tasks)
	if old.res.CPU > now.res.CPU || old.res.Memory > now.res.Memory || old.res.Disk > now.res.Disk {
		return true
	}
	for _, dc := range old.devices {
		n := 0
		for _, nc := range now.devices {
			if nc.name == dc.name {
				n = nc.count
			}
		}
		if dc.count > n {
			return true
		}
	}
	return false
}

// rolloutStepViolation checks what a plan's rollouts promise given its
// snapshot: a plan that updates a group's allocations destructively on
// online devices leaves at most max_parallel of them in flight, besides its
// placements (those updated on offline devices are pending, not in flight;
// see mayBeForced for the exception); a rollout the snapshot says failed updates nothing
// destructively; Deferred lists every allocation left at an older version
// with tasks to change.
func rolloutStepViolation(s Snapshot, p Plan) string {
	devices := devicesByID(s)
	away := awayOf(s, p)
	destructive := destructiveUpdates(s, p)
	deferred := map[string]bool{}
	for _, d := range p.Deferred {
		deferred[d.Alloc.ID] = true
	}
	for _, j := range latestJobs(s.Jobs) {
		failed := j.Rollout != nil && j.Rollout.Version == j.Version && j.Rollout.State == protocol.RolloutFailed
		for _, g := range rolledGroups(j) {
			key := [2]string{j.Job.ID, g.Name}
			// Destructive updates on online devices the rollout chose (not
			// forced): once there is one, at most max_parallel are in
			// flight, since the budget counts the forced ones too.
			online := 0
			for _, u := range destructive[key] {
				if devices[u.Device].Presence == protocol.Online && !mayBeForced(s, u) {
					online++
				}
			}
			if failed && slices.ContainsFunc(destructive[key], func(u Alloc) bool { return !mayBeForced(s, u) }) {
				return fmt.Sprintf("failed rollout of %s updated %s", j.Job.ID, shorts(destructive[key]))
			}
			// New slots are never gated: the plan's own placements are in
			// flight for the next plan's budget only.
			skip := maps.Clone(away)
			for _, a := range p.Place {
				skip[a.ID] = true
			}
			pol, _ := g.UpdatePolicy()
			if _, inFlight := rolloutCounts(s, p, j, g, skip); online > 0 && inFlight > pol.MaxParallel {
				return fmt.Sprintf("%s.%s: %d destructive updates leave %d in flight, max_parallel %d", j.Job.ID, g.Name, online, inFlight, pol.MaxParallel)
			}
			for _, a := range p.Allocations {
				stale := a.JobVersion != j.Version || a.Type != j.Job.Type || !sameTasks(a.Tasks, g.Tasks)
				if a.Job == j.Job.ID && a.Group == g.Name && !away[a.ID] && stale && !deferred[a.ID] {
					return fmt.Sprintf("%s left at version %d, not deferred", short(a), a.JobVersion)
				}
			}
		}
	}
	return ""
}

// Rollouts over several plans: health verdicts arrive for some allocations
// at their version, devices come and go, time passes, the operator promotes
// now and then; every plan keeps max_parallel, never updates a failed
// rollout, and is deterministic.
func TestPropertyRolloutSteps(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		now := t0
		for step := range rapid.IntRange(1, 6).Draw(t, "steps") {
			p := Compute(s, now)
			if err := invariantViolation(s, p); err != "" {
				t.Fatalf("step %d: %s\n%s%+v", step, err, dumpSnapshot(s), outcomeOf(p))
			}
			if err := rolloutStepViolation(s, p); err != "" {
				t.Fatalf("step %d: %s", step, err)
			}
			if q := Compute(s, now); !reflect.DeepEqual(p, q) {
				t.Fatalf("step %d: not deterministic", step)
			}
			for id, r := range p.Rollouts {
				if in := jobRollout(s, id); in != nil && in.Version == r.Version && in.Done() && r.State != in.State {
					t.Fatalf("step %d: rollout of %s went from %s to %s", step, id, in.State, r.State)
				}
			}
			s = feedBack(s, p)
			s.Devices = slices.Clone(s.Devices)
			for i := range s.Devices {
				d := &s.Devices[i]
				if rapid.IntRange(0, 5).Draw(t, "presence changes") == 0 {
					genPresence(t, d)
				}
				d.Reported = maps.Clone(d.Reported)
				for _, a := range p.Allocations {
					if a.Device != d.ID || d.Presence != protocol.Online || runsOtherSpec(s.Jobs, a) {
						continue
					}
					if v := rapid.SampledFrom([]protocol.Health{"", protocol.Healthy, protocol.Healthy, protocol.Unhealthy}).Draw(t, "verdict"); v != "" {
						if d.Reported == nil {
							d.Reported = map[string]protocol.AllocStatus{}
						}
						d.Reported[a.ID] = protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, State: protocol.AllocRunning, Health: v}
					}
				}
			}
			for i := range s.Jobs {
				if r := s.Jobs[i].Rollout; r != nil && rapid.IntRange(0, 3).Draw(t, "promote") == 0 {
					promoted := *r
					promoted.Groups = slices.Clone(r.Groups)
					for g := range promoted.Groups {
						promoted.Groups[g].Promoted = true
					}
					s.Jobs[i].Rollout = &promoted
				}
			}
			now = now.Add(rapid.SampledFrom([]time.Duration{0, time.Minute, 10 * time.Minute}).Draw(t, "tick"))
		}
	})
}

// jobRollout is the input rollout of a job of a snapshot.
func jobRollout(s Snapshot, id string) *protocol.Rollout {
	for _, j := range latestJobs(s.Jobs) {
		if j.Job.ID == id {
			return j.Rollout
		}
	}
	return nil
}

// TestInvariantCheckerCatches makes sure the invariant checker is not
// vacuous: plans broken on purpose are caught.
func TestInvariantCheckerCatches(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		group   protocol.Group
		devices []Device
	}{
		{"over-commit", group("g", count(2)), []Device{dev("a", withCapacity(150, 4096)), dev("b")}},
		{"distinct_hosts", group("g", count(2), constrain("", protocol.OpDistinctHosts, "")), []Device{dev("a"), dev("b")}},
		{"distinct_property", group("g", count(2), constrain("${device.labels.site}", protocol.OpDistinctProperty, "")),
			[]Device{dev("a", withLabels("site", "x")), dev("b", withLabels("site", "y")), dev("c", withLabels("site", "y"))}},
	} {
		s := Snapshot{Jobs: []Job{job("web", groups(tt.group))}, Devices: tt.devices}
		p := Compute(s, t0)
		if err := invariantViolation(s, p); err != "" {
			t.Fatalf("%s: good plan rejected: %s", tt.name, err)
		}
		if len(p.Place) != 2 || p.Place[0].Device != "a" || p.Place[1].Device != "b" {
			t.Fatalf("%s: unexpected plan %s", tt.name, shorts(p.Place))
		}
		// Move the second instance next to the first: over-commits a, or
		// breaks the distinct constraint.
		p.Place[1].Device, p.Place[1].ID = "a", AllocID("web", "g", p.Place[1].Index, "a")
		if tt.name == "distinct_property" {
			p.Place[1].Device, p.Place[1].ID = "c", AllocID("web", "g", p.Place[1].Index, "c")
			p.Place[0].Device, p.Place[0].ID = "b", AllocID("web", "g", p.Place[0].Index, "b")
		}
		p.Allocations = sortByDevice(slices.Concat(p.Keep, p.Update, p.Place))
		if err := invariantViolation(s, p); err == "" {
			t.Errorf("%s: not caught", tt.name)
		} else {
			t.Logf("%s: %s", tt.name, err)
		}
	}
}

// devicesByID indexes a snapshot's devices by id (the first of duplicates,
// as Compute takes them).
func devicesByID(s Snapshot) map[string]*Device {
	devices := map[string]*Device{}
	for i := range s.Devices {
		if _, dup := devices[s.Devices[i].ID]; !dup {
			devices[s.Devices[i].ID] = &s.Devices[i]
		}
	}
	return devices
}

// jobsByID indexes the jobs in force (latestJobs) by id.
func jobsByID(s Snapshot) map[string]Job {
	jobs := map[string]Job{}
	for _, j := range latestJobs(s.Jobs) {
		jobs[j.Job.ID] = j
	}
	return jobs
}

// namedByReplaces is the set of allocations a Replaces mark of the plan
// names.
func namedByReplaces(p Plan) map[string]bool {
	named := map[string]bool{}
	for _, a := range p.Allocations {
		if a.Replaces != "" {
			named[a.Replaces] = true
		}
	}
	return named
}
