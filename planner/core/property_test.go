package core

import (
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/tether-edge/tether/protocol"
	"pgregory.net/rapid"
)

// Property tests: random jobs, devices, existing allocations and reports.
// Existing allocations are either random (stale versions, vanished jobs,
// groups and devices, out-of-range indices, over-committed devices) or the
// plan of another random world, as after jobs and devices changed.

func TestPropertyPlanInvariants(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(t *rapid.T) {
		s := genSnapshot(t)
		p := Compute(s, t0)
		checkInvariants(t, s, p)
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
			t.Fatalf("feeding the plan back changed it: %+v (first plan %+v)", o, outcomeOf(p))
		}
		if !reflect.DeepEqual(again.Allocations, p.Allocations) {
			t.Fatalf("allocations changed:\n %s\n %s", shorts(p.Allocations), shorts(again.Allocations))
		}
		for id, gs := range p.Groups {
			for i, g := range gs {
				h := again.Groups[id][i]
				if g.Desired != h.Desired || g.Placed != h.Placed || unplacedCount(t, g) != unplacedCount(t, h) {
					t.Fatalf("status of %s changed: %+v → %+v", id, g, h)
				}
			}
		}
	})
}

// checkInvariants asserts what every plan must satisfy.
func checkInvariants(t *rapid.T, s Snapshot, p Plan) {
	devices := map[string]*Device{}
	for i := range s.Devices {
		devices[s.Devices[i].ID] = &s.Devices[i]
	}
	jobs := map[string]Job{}
	for _, j := range s.Jobs {
		jobs[j.Job.ID] = j
	}

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
				t.Fatalf("%s is in %s and %s", a.ID, prev, name)
			}
			fate[a.ID] = name
			old, existed := before[a.ID]
			switch {
			case name == "place" && existed:
				t.Fatalf("placed %s reuses an existing id", a.ID)
			case name != "place" && !existed:
				t.Fatalf("%s %s was not an existing allocation", name, a.ID)
			case name == "keep" && !reflect.DeepEqual(a, old):
				t.Fatalf("kept %s changed", a.ID)
			case name == "update" && (a.Device != old.Device || a.Index != old.Index):
				t.Fatalf("updated %s moved", a.ID)
			}
		}
	}
	for id := range before {
		if fate[id] == "" {
			t.Fatalf("existing %s is in no bucket", id)
		}
	}
	all := slices.Concat(p.Keep, p.Update, p.Place)
	sortByDevice(all)
	if len(all) != len(p.Allocations) || (len(all) > 0 && !reflect.DeepEqual(all, p.Allocations)) {
		t.Fatalf("Allocations is not Keep + Update + Place")
	}

	// Never over-commit; every allocation runs its job's current spec on a
	// known device that may run it.
	used := map[string]resources{}
	perGroup := map[[2]string][]Alloc{}
	for _, a := range p.Allocations {
		d := devices[a.Device]
		if d == nil {
			t.Fatalf("%s on unknown device", short(a))
		}
		j, ok := jobs[a.Job]
		if !ok || j.Stopped {
			t.Fatalf("%s of a stopped or absent job", short(a))
		}
		gi := slices.IndexFunc(j.Job.Groups, func(g protocol.Group) bool { return g.Name == a.Group })
		if gi < 0 {
			t.Fatalf("%s of an absent group", short(a))
		}
		g := j.Job.Groups[gi]
		if a.JobVersion != j.Version || a.Type != j.Job.Type || !sameTasks(a.Tasks, g.Tasks) {
			t.Fatalf("%s does not run the current spec", short(a))
		}
		st, reported := d.Reported[a.ID]
		done := reported && st.JobVersion == a.JobVersion && st.State == protocol.AllocComplete
		isTerminal := reported && st.JobVersion == a.JobVersion && (st.State == protocol.AllocComplete || st.State == protocol.AllocFailed)
		if !isTerminal {
			for _, tk := range a.Tasks {
				used[a.Device] = used[a.Device].add(resources{tk.Resources.CPU, tk.Resources.Memory})
			}
		}
		if !(done && a.Type == protocol.JobBatch) {
			if r := infeasible(keepChecks, d, &g); r != "" {
				t.Fatalf("%s on a device that cannot run it: %s", short(a), r)
			}
		}
		perGroup[[2]string{a.Job, a.Group}] = append(perGroup[[2]string{a.Job, a.Group}], a)
	}
	for id, u := range used {
		if c := capacity(devices[id]); u.CPU > c.CPU || u.Memory > c.Memory {
			t.Fatalf("device %s over-committed: %+v > %+v", id, u, c)
		}
	}
	for _, a := range p.Place {
		d := devices[a.Device]
		g := jobs[a.Job].Job.Groups[slices.IndexFunc(jobs[a.Job].Job.Groups, func(g protocol.Group) bool { return g.Name == a.Group })]
		if r := infeasible(placeChecks, d, &g); r != "" {
			t.Fatalf("placed %s on an infeasible device: %s", short(a), r)
		}
		if a.ID != AllocID(a.Job, a.Group, a.Index, a.Device) {
			t.Fatalf("placed %s with id %s", short(a), a.ID)
		}
	}

	// Every desired instance is placed or counted unplaced.
	for _, j := range s.Jobs {
		gs, ok := p.Groups[j.Job.ID]
		if j.Stopped {
			if ok {
				t.Fatalf("status for stopped job %s", j.Job.ID)
			}
			continue
		}
		if !ok || len(gs) != len(j.Job.Groups) {
			t.Fatalf("status of %s: %+v", j.Job.ID, gs)
		}
		for gi, g := range j.Job.Groups {
			st := gs[gi]
			allocs := perGroup[[2]string{j.Job.ID, g.Name}]
			if st.Name != g.Name || st.Placed != len(allocs) {
				t.Fatalf("status %+v, %d allocations", st, len(allocs))
			}
			if n := unplacedCount(t, st); st.Placed+n != st.Desired {
				t.Fatalf("status %+v: placed + unplaced != desired", st)
			}
			slots := map[string]bool{}
			for _, a := range allocs {
				slot := fmt.Sprint(a.Index)
				if j.Job.Type == protocol.JobSystem {
					slot = a.Device
					if a.Index != 0 {
						t.Fatalf("system allocation %s with index %d", short(a), a.Index)
					}
				} else if a.Index < 0 || a.Index >= g.Instances() {
					t.Fatalf("%s out of range", short(a))
				}
				if slots[slot] {
					t.Fatalf("two allocations for slot %s of %s.%s", slot, j.Job.ID, g.Name)
				}
				slots[slot] = true
			}
			if j.Job.Type != protocol.JobSystem && st.Desired != g.Instances() {
				t.Fatalf("desired %d, count %d", st.Desired, g.Instances())
			}
		}
	}
	if len(p.Groups) != len(jobs)-countStopped(s.Jobs) {
		t.Fatalf("groups for %d jobs", len(p.Groups))
	}
}

func countStopped(jobs []Job) int {
	n := 0
	for _, j := range jobs {
		if j.Stopped {
			n++
		}
	}
	return n
}

// unplacedCount reads the count from an Unplaced message, 0 when empty.
func unplacedCount(t *rapid.T, st protocol.GroupStatus) int {
	if st.Unplaced == "" {
		return 0
	}
	var n, desired int
	if _, err := fmt.Sscanf(st.Unplaced, "%d of %d instances unplaced:", &n, &desired); err != nil || desired != st.Desired || n <= 0 {
		t.Fatalf("bad unplaced message %q for %+v: %v", st.Unplaced, st, err)
	}
	return n
}

// Generators. Ids come from small pools so that allocations, jobs and
// devices meet often.

var (
	jobIDs    = []string{"j0", "j1", "j2", "j3"}
	groupIDs  = []string{"g0", "g1", "g2"}
	deviceIDs = []string{"d0", "d1", "d2", "d3", "d4", "d5"}
	jobTypes  = []protocol.JobType{protocol.JobService, protocol.JobBatch, protocol.JobSystem}
)

func genSnapshot(t *rapid.T) Snapshot {
	s := Snapshot{Jobs: genJobs(t, "now"), Devices: genDevices(t, "now")}
	if rapid.Bool().Draw(t, "existing from a previous plan") {
		prev := Snapshot{Jobs: genJobs(t, "before"), Devices: genDevices(t, "before")}
		prev.Allocations = genAllocs(t, prev.Jobs)
		s.Allocations = Compute(prev, t0).Allocations
	} else {
		s.Allocations = genAllocs(t, s.Jobs)
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
		d := &s.Devices[i]
		if d.Reported == nil {
			d.Reported = map[string]protocol.AllocStatus{}
		}
		d.Reported[a.ID] = protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: v, Group: a.Group, State: state}
	}
	return s
}

func genDevices(t *rapid.T, label string) []Device {
	var out []Device
	for _, id := range deviceIDs[:rapid.IntRange(0, len(deviceIDs)-1).Draw(t, label+" devices")] {
		d := Device{ID: id, Presence: rapid.SampledFrom([]protocol.PresenceStatus{protocol.Online, protocol.Online, protocol.Online, protocol.Offline, ""}).Draw(t, "presence")}
		if rapid.IntRange(0, 9).Draw(t, "no facts") > 0 {
			d.HasFacts = true
			d.Facts = protocol.Facts{
				Device:   id,
				Arch:     rapid.SampledFrom([]string{"amd64", "arm64"}).Draw(t, "arch"),
				OS:       "linux",
				CPUCores: 4,
				CPUMHz:   rapid.SampledFrom([]int{0, 500, 1000, 2000, 4000}).Draw(t, "cpu"),
				MemoryMB: rapid.SampledFrom([]int{0, 256, 512, 1024, 4096}).Draw(t, "memory"),
			}
			for _, drv := range []string{protocol.DriverPodman, protocol.DriverExec} {
				if rapid.IntRange(0, 4).Draw(t, "lacks "+drv) > 0 {
					d.Facts.Drivers = append(d.Facts.Drivers, drv)
				}
			}
			if zone := rapid.SampledFrom([]string{"", "north", "south"}).Draw(t, "zone"); zone != "" {
				d.Facts.Labels = map[string]string{"zone": zone}
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
			n := rapid.IntRange(0, 4).Draw(t, "count")
			g := protocol.Group{Name: name, Count: &n, Tasks: genTasks(t)}
			if c := rapid.IntRange(0, 4).Draw(t, "constraint"); c > 0 {
				g.Constraints = []protocol.Constraint{
					{Attribute: "${device.arch}", Operator: "=", Value: "arm64"},
					{Attribute: "${device.labels.zone}", Operator: "=", Value: "north"},
					{Attribute: "${device.labels.zone}", Operator: "!=", Value: "south"},
					{Attribute: "${device.os}", Operator: "==", Value: "linux"},
				}[c-1 : c]
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
		ts = append(ts, task(fmt.Sprintf("t%d", i),
			rapid.SampledFrom([]string{protocol.DriverPodman, protocol.DriverExec}).Draw(t, "driver"),
			rapid.SampledFrom([]int{0, 100, 300, 600, 1200}).Draw(t, "task cpu"),
			rapid.SampledFrom([]int{0, 64, 200, 500}).Draw(t, "task memory")))
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
	return out
}
