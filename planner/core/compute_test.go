package core

import (
	"cmp"
	"reflect"
	"slices"
	"testing"

	"github.com/tether-edge/tether/protocol"
)

// status is a GroupStatus, shorter to write in tables.
func status(name string, desired, placed int, unplaced string) protocol.GroupStatus {
	return protocol.GroupStatus{Name: name, Desired: desired, Placed: placed, Unplaced: unplaced}
}

func TestCompute(t *testing.T) {
	t.Parallel()
	web := job("web")
	tests := []struct {
		name   string
		snap   func() Snapshot
		want   outcome
		groups map[string][]protocol.GroupStatus // checked when not nil
	}{
		{
			name: "places on the fullest device that fits",
			snap: func() Snapshot {
				big := job("big", groups(group("g", tasks(task("t", "podman", 3000, 3000)))))
				huge := job("huge", groups(group("g", tasks(task("t", "podman", 3950, 4000)))))
				return Snapshot{
					Jobs:        []Job{web, big, huge},
					Devices:     []Device{dev("a"), dev("b"), dev("c")},
					Allocations: []Alloc{allocOf(big, "g", 0, "b"), allocOf(huge, "g", 0, "c")},
				}
			},
			// c is fuller but has no room for 100 MHz more; b is the fullest that fits.
			want: outcome{Keep: "big.g.0@b huge.g.0@c", Place: "web.g.0@b"},
		},
		{
			name: "ties go to the lowest device id and instances pack",
			snap: func() Snapshot {
				return Snapshot{Jobs: []Job{job("web", groups(group("g", count(3))))}, Devices: []Device{dev("b"), dev("a")}}
			},
			want:   outcome{Place: "web.g.0@a web.g.1@a web.g.2@a"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 3, 3, "")}},
		},
		{
			name: "existing allocations of later jobs keep their resources",
			snap: func() Snapshot {
				z := job("z", groups(group("g", tasks(task("t", "podman", 3000, 100)))))
				a := job("a", groups(group("g", tasks(task("t", "podman", 2000, 100)))))
				return Snapshot{Jobs: []Job{z, a}, Devices: []Device{dev("d")}, Allocations: []Alloc{allocOf(z, "g", 0, "d")}}
			},
			want: outcome{Keep: "z.g.0@d"},
			groups: map[string][]protocol.GroupStatus{
				"a": {status("g", 1, 0, "1 of 1 instances unplaced: 1 of 1 devices feasible: 1 exhausted cpu")},
				"z": {status("g", 1, 1, "")},
			},
		},
		{
			name: "never over-commits",
			snap: func() Snapshot {
				j := job("web", groups(group("g", count(3), tasks(task("t", "podman", 400, 100)))))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a", withCapacity(1000, 1000))}}
			},
			want:   outcome{Place: "web.g.0@a web.g.1@a"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 3, 2, "1 of 3 instances unplaced: 1 of 1 devices feasible: 1 exhausted cpu")}},
		},
		{
			name: "unplaced: no device feasible",
			snap: func() Snapshot {
				// The complete instance is kept on c although c no longer
				// matches; a and b lack podman.
				j := job("etl", typ(protocol.JobBatch), groups(group("g", count(3), constrain("${device.arch}", "=", "arm64"))))
				done := allocOf(j, "g", 0, "c")
				return Snapshot{
					Jobs:        []Job{j},
					Devices:     []Device{dev("a", withDrivers("exec")), dev("b", withDrivers()), dev("c", withReport(done, protocol.AllocComplete))},
					Allocations: []Alloc{done},
				}
			},
			want: outcome{Keep: "etl.g.0@c"},
			groups: map[string][]protocol.GroupStatus{"etl": {status("g", 3, 1,
				"2 of 3 instances unplaced: 0 of 3 devices feasible: 2 lack driver podman, 1 constraint ${device.arch} = arm64")}},
		},
		{
			name: "unplaced: feasible devices full",
			snap: func() Snapshot {
				return Snapshot{
					Jobs:    []Job{job("web", groups(group("g", count(3))))},
					Devices: []Device{dev("a", offline), dev("b", neverSeen), dev("c", withCapacity(1000, 150))},
				}
			},
			want: outcome{Place: "web.g.0@c web.g.1@c"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 3, 2,
				"1 of 3 instances unplaced: 1 of 3 devices feasible: 2 offline; 1 exhausted memory")}},
		},
		{
			name: "unplaced: no devices",
			snap: func() Snapshot { return Snapshot{Jobs: []Job{web}} },
			want: outcome{},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 1, 0,
				"1 of 1 instances unplaced: 0 of 0 devices feasible")}},
		},
		{
			name: "offline device keeps its allocations but gets no new ones",
			snap: func() Snapshot {
				j := job("web", groups(group("g", count(2))))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a", offline), dev("b")}, Allocations: []Alloc{allocOf(j, "g", 0, "a")}}
			},
			want:   outcome{Keep: "web.g.0@a", Place: "web.g.1@b"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 2, 2, "")}},
		},
		{
			name: "offline device alone",
			snap: func() Snapshot {
				j := job("web", groups(group("g", count(2))))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a", offline)}, Allocations: []Alloc{allocOf(j, "g", 0, "a")}}
			},
			want:   outcome{Keep: "web.g.0@a"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 2, 1, "1 of 2 instances unplaced: 0 of 1 devices feasible: 1 offline")}},
		},
		{
			name: "allocation on a vanished device or one without facts is replaced",
			snap: func() Snapshot {
				j := job("web", groups(group("g", count(2))))
				return Snapshot{
					Jobs:        []Job{j},
					Devices:     []Device{dev("a"), dev("b", noFacts)},
					Allocations: []Alloc{allocOf(j, "g", 0, "gone"), allocOf(j, "g", 1, "b")},
				}
			},
			want: outcome{Place: "web.g.0@a web.g.1@a", Stop: "web.g.1@b web.g.0@gone"},
		},
		{
			name: "allocation on a device that no longer matches is replaced",
			snap: func() Snapshot {
				j := job("web", groups(group("g", constrain("${device.labels.zone}", "=", "north"))))
				return Snapshot{
					Jobs:        []Job{j},
					Devices:     []Device{dev("a", withLabels("zone", "south")), dev("b", withLabels("zone", "north"))},
					Allocations: []Alloc{allocOf(j, "g", 0, "a")},
				}
			},
			want: outcome{Place: "web.g.0@b", Stop: "web.g.0@a"},
		},
		{
			name: "count lowered stops the highest indices",
			snap: func() Snapshot {
				old := job("web", groups(group("g", count(3))))
				return Snapshot{
					Jobs:        []Job{job("web", groups(group("g", count(1))))},
					Devices:     []Device{dev("a"), dev("b"), dev("c")},
					Allocations: []Alloc{allocOf(old, "g", 2, "a"), allocOf(old, "g", 0, "b"), allocOf(old, "g", 1, "c")},
				}
			},
			want:   outcome{Keep: "web.g.0@b", Stop: "web.g.2@a web.g.1@c"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 1, 1, "")}},
		},
		{
			name: "count raised places the missing indices",
			snap: func() Snapshot {
				j := job("web", groups(group("g", count(3))))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a"), dev("b")}, Allocations: []Alloc{allocOf(j, "g", 1, "b")}}
			},
			want: outcome{Keep: "web.g.1@b", Place: "web.g.0@b web.g.2@b"},
		},
		{
			name: "two allocations for one index: the first by id stays",
			snap: func() Snapshot {
				j := job("web")
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a"), dev("b")}, Allocations: []Alloc{allocOf(j, "g", 0, "a"), allocOf(j, "g", 0, "b")}}
			},
			// AllocID(web,g,0,b) = web.g.0-3e23e8160039 sorts before web.g.0-ca978112ca1b (a).
			want: outcome{Keep: "web.g.0@b", Stop: "web.g.0@a"},
		},
		{
			name: "two allocations for one index: a current one beats a stale one",
			snap: func() Snapshot {
				v2 := job("web", version(2))
				stale := allocOf(job("web"), "g", 0, "b")
				return Snapshot{Jobs: []Job{v2}, Devices: []Device{dev("a"), dev("b")}, Allocations: []Alloc{allocOf(v2, "g", 0, "a"), stale}}
			},
			want: outcome{Keep: "web.g.0@a", Stop: "web.g.0@b"},
		},
		{
			name: "two stale allocations for one index: the first whose update fits",
			snap: func() Snapshot {
				v2 := job("web", version(2), groups(group("g", tasks(task("t", "podman", 600, 64)))))
				old := job("web")
				return Snapshot{
					Jobs:        []Job{v2},
					Devices:     []Device{dev("a"), dev("b", withCapacity(500, 500))},
					Allocations: []Alloc{allocOf(old, "g", 0, "a"), allocOf(old, "g", 0, "b")},
				}
			},
			want: outcome{Update: "web.g.0@a", Stop: "web.g.0@b"},
		},
		{
			name: "two stale allocations for one index, neither fits: placed on a third device",
			snap: func() Snapshot {
				v2 := job("web", version(2), groups(group("g", tasks(task("t", "podman", 600, 64)))))
				old := job("web")
				return Snapshot{
					Jobs:        []Job{v2},
					Devices:     []Device{dev("a", withCapacity(500, 500)), dev("b", withCapacity(500, 500)), dev("c")},
					Allocations: []Alloc{allocOf(old, "g", 0, "a"), allocOf(old, "g", 0, "b")},
				}
			},
			want: outcome{Place: "web.g.0@c", Stop: "web.g.0@a web.g.0@b"},
		},
		{
			name: "an exact duplicate is one allocation",
			snap: func() Snapshot {
				return Snapshot{Jobs: []Job{web}, Devices: []Device{dev("a")}, Allocations: []Alloc{allocOf(web, "g", 0, "a"), allocOf(web, "g", 0, "a")}}
			},
			want: outcome{Keep: "web.g.0@a"},
		},
		{
			name: "stopped job: every allocation stops, no status",
			snap: func() Snapshot {
				j := job("web", stopped, groups(group("g", count(2)), group("h")))
				return Snapshot{
					Jobs:        []Job{j, job("other")},
					Devices:     []Device{dev("a"), dev("b", offline)},
					Allocations: []Alloc{allocOf(j, "g", 0, "a"), allocOf(j, "g", 1, "b"), allocOf(j, "h", 0, "a")},
				}
			},
			want:   outcome{Place: "other.g.0@a", Stop: "web.g.0@a web.h.0@a web.g.1@b"},
			groups: map[string][]protocol.GroupStatus{"other": {status("g", 1, 1, "")}},
		},
		{
			name: "allocations of absent jobs and removed groups stop",
			snap: func() Snapshot {
				old := job("web", groups(group("g"), group("gone")))
				return Snapshot{
					Jobs:        []Job{web},
					Devices:     []Device{dev("a")},
					Allocations: []Alloc{allocOf(old, "g", 0, "a"), allocOf(old, "gone", 0, "a"), allocOf(job("ghost"), "g", 0, "a")},
				}
			},
			want: outcome{Keep: "web.g.0@a", Stop: "ghost.g.0@a web.gone.0@a"},
		},
		{
			name: "new version updates in place",
			snap: func() Snapshot {
				old := job("web", groups(group("g", count(2))))
				return Snapshot{
					Jobs:        []Job{job("web", version(2), groups(group("g", count(2), tasks(task("t", "exec", 100, 64)))))},
					Devices:     []Device{dev("a"), dev("b")},
					Allocations: []Alloc{allocOf(old, "g", 0, "a"), allocOf(old, "g", 1, "b")},
				}
			},
			want: outcome{Update: "web.g.0@a web.g.1@b"},
		},
		{
			name: "new version that no longer fits moves",
			snap: func() Snapshot {
				old := job("web")
				z := job("z", groups(group("g", tasks(task("t", "podman", 800, 100)))))
				return Snapshot{
					Jobs:        []Job{job("web", version(2), groups(group("g", tasks(task("t", "podman", 300, 64))))), z},
					Devices:     []Device{dev("a", withCapacity(1000, 1000)), dev("b")},
					Allocations: []Alloc{allocOf(old, "g", 0, "a"), allocOf(z, "g", 0, "a")},
				}
			},
			want: outcome{Keep: "z.g.0@a", Place: "web.g.0@b", Stop: "web.g.0@a"},
		},
		{
			name: "new version that no longer fits anywhere",
			snap: func() Snapshot {
				old := job("web")
				return Snapshot{
					Jobs:        []Job{job("web", version(2), groups(group("g", tasks(task("t", "podman", 3000, 64)))))},
					Devices:     []Device{dev("a", withCapacity(1000, 1000))},
					Allocations: []Alloc{allocOf(old, "g", 0, "a")},
				}
			},
			want:   outcome{Stop: "web.g.0@a"},
			groups: map[string][]protocol.GroupStatus{"web": {status("g", 1, 0, "1 of 1 instances unplaced: 1 of 1 devices feasible: 1 exhausted cpu")}},
		},
		{
			name: "tasks differing at the same version are repaired in place",
			snap: func() Snapshot {
				a := allocOf(web, "g", 0, "a")
				a.Tasks = []protocol.Task{task("t", "podman", 50, 64)}
				return Snapshot{Jobs: []Job{web}, Devices: []Device{dev("a")}, Allocations: []Alloc{a}}
			},
			want: outcome{Update: "web.g.0@a"},
		},
		{
			name: "complete batch allocation is never re-placed",
			snap: func() Snapshot {
				j := job("etl", typ(protocol.JobBatch), groups(group("g", count(2), constrain("${device.labels.role}", "=", "etl"))))
				done, running := allocOf(j, "g", 0, "a"), allocOf(j, "g", 1, "b")
				return Snapshot{
					Jobs: []Job{j},
					// a is offline and no longer matches: the complete instance stays.
					Devices:     []Device{dev("a", offline, withReport(done, protocol.AllocComplete)), dev("b", withLabels("role", "etl"), withReport(running, protocol.AllocRunning))},
					Allocations: []Alloc{done, running},
				}
			},
			want:   outcome{Keep: "etl.g.0@a etl.g.1@b"},
			groups: map[string][]protocol.GroupStatus{"etl": {status("g", 2, 2, "")}},
		},
		{
			name: "new version re-runs a complete batch allocation",
			snap: func() Snapshot {
				old := job("etl", typ(protocol.JobBatch))
				done := allocOf(old, "g", 0, "a")
				return Snapshot{
					Jobs:        []Job{job("etl", typ(protocol.JobBatch), version(2))},
					Devices:     []Device{dev("a", withReport(done, protocol.AllocComplete))},
					Allocations: []Alloc{done},
				}
			},
			want: outcome{Update: "etl.g.0@a"},
		},
		{
			name: "terminal allocations are kept and reserve nothing",
			snap: func() Snapshot {
				x := job("x", groups(group("g", tasks(task("t", "podman", 900, 900)))))
				y := job("y", typ(protocol.JobBatch), groups(group("g", tasks(task("t", "podman", 900, 900)))))
				failed, done := allocOf(x, "g", 0, "a"), allocOf(y, "g", 0, "a")
				return Snapshot{
					Jobs:        []Job{x, y, job("web", groups(group("g", tasks(task("t", "podman", 1000, 1000)))))},
					Devices:     []Device{dev("a", withCapacity(1000, 1000), withReport(failed, protocol.AllocFailed), withReport(done, protocol.AllocComplete))},
					Allocations: []Alloc{failed, done},
				}
			},
			want: outcome{Keep: "x.g.0@a y.g.0@a", Place: "web.g.0@a"},
		},
		{
			name: "a report about another version is not terminal",
			snap: func() Snapshot {
				x := job("x", version(2), groups(group("g", tasks(task("t", "podman", 900, 900)))))
				a := allocOf(x, "g", 0, "a")
				old := a
				old.JobVersion = 1
				return Snapshot{
					Jobs:        []Job{x, job("web", groups(group("g", tasks(task("t", "podman", 1000, 1000)))))},
					Devices:     []Device{dev("a", withCapacity(1000, 1000), withReport(old, protocol.AllocFailed))},
					Allocations: []Alloc{a},
				}
			},
			want: outcome{Keep: "x.g.0@a"},
		},
		{
			name: "groups in document order",
			snap: func() Snapshot {
				return Snapshot{Jobs: []Job{job("web", groups(group("z", count(2)), group("a", count(0)), group("m")))}, Devices: []Device{dev("a")}}
			},
			want:   outcome{Place: "web.m.0@a web.z.0@a web.z.1@a"},
			groups: map[string][]protocol.GroupStatus{"web": {status("z", 2, 2, ""), status("a", 0, 0, ""), status("m", 1, 1, "")}},
		},
		{
			name: "system: every feasible online device",
			snap: func() Snapshot {
				j := job("mon", typ(protocol.JobSystem), groups(group("g", count(5), constrain("${device.arch}", "=", "arm64"))))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{
					dev("a", withArch("arm64")), dev("b"), dev("c", withArch("arm64"), offline), dev("d", withArch("arm64")), dev("e", noFacts),
				}}
			},
			want:   outcome{Place: "mon.g.0@a mon.g.0@d"},
			groups: map[string][]protocol.GroupStatus{"mon": {status("g", 2, 2, "")}},
		},
		{
			name: "system: a device that stops matching loses its allocation",
			snap: func() Snapshot {
				j := job("mon", typ(protocol.JobSystem), groups(group("g", constrain("${device.labels.monitor}", "!=", "no"))))
				return Snapshot{
					Jobs:        []Job{j},
					Devices:     []Device{dev("a", withLabels("monitor", "no")), dev("b")},
					Allocations: []Alloc{allocOf(j, "g", 0, "a"), allocOf(j, "g", 0, "b")},
				}
			},
			want:   outcome{Keep: "mon.g.0@b", Stop: "mon.g.0@a"},
			groups: map[string][]protocol.GroupStatus{"mon": {status("g", 1, 1, "")}},
		},
		{
			name: "system: offline device keeps its allocation and counts as desired",
			snap: func() Snapshot {
				j := job("mon", typ(protocol.JobSystem))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a", offline), dev("b")}, Allocations: []Alloc{allocOf(j, "g", 0, "a")}}
			},
			want:   outcome{Keep: "mon.g.0@a", Place: "mon.g.0@b"},
			groups: map[string][]protocol.GroupStatus{"mon": {status("g", 2, 2, "")}},
		},
		{
			name: "system: devices without room are unplaced",
			snap: func() Snapshot {
				j := job("mon", typ(protocol.JobSystem), groups(group("g", tasks(task("t", "podman", 100, 512)))))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a"), dev("b", withCapacity(1000, 256)), dev("c", withDrivers("exec"))}}
			},
			want: outcome{Place: "mon.g.0@a"},
			groups: map[string][]protocol.GroupStatus{"mon": {status("g", 2, 1,
				"1 of 2 instances unplaced: 2 of 3 devices feasible: 1 lack driver podman; 1 exhausted memory")}},
		},
		{
			name: "system: one allocation per device, index 0",
			snap: func() Snapshot {
				j := job("mon", typ(protocol.JobSystem))
				return Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a")}, Allocations: []Alloc{allocOf(j, "g", 0, "a"), allocOf(j, "g", 1, "a")}}
			},
			want: outcome{Keep: "mon.g.0@a", Stop: "mon.g.1@a"},
		},
		{
			name: "type change: service to system",
			snap: func() Snapshot {
				old := job("mon", groups(group("g", count(2))))
				return Snapshot{
					Jobs:        []Job{job("mon", typ(protocol.JobSystem), version(2))},
					Devices:     []Device{dev("a"), dev("b")},
					Allocations: []Alloc{allocOf(old, "g", 0, "a"), allocOf(old, "g", 1, "a")},
				}
			},
			want: outcome{Update: "mon.g.0@a", Place: "mon.g.0@b", Stop: "mon.g.1@a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := tt.snap()
			p := Compute(s, t0)
			if got := outcomeOf(p); got != tt.want {
				t.Errorf("outcome:\n got  %+v\n want %+v", got, tt.want)
			}
			if tt.groups != nil && !reflect.DeepEqual(p.Groups, tt.groups) {
				t.Errorf("groups:\n got  %+v\n want %+v", p.Groups, tt.groups)
			}
			checkPlan(t, s, p)
			// Feeding the plan back changes nothing.
			again := Compute(feedBack(s, p), t0)
			if got := outcomeOf(again); got.Place != "" || got.Update != "" || got.Stop != "" {
				t.Errorf("second evaluation not idempotent: %+v", got)
			}
			if !reflect.DeepEqual(again.Allocations, p.Allocations) {
				t.Errorf("second evaluation changed allocations:\n got  %s\n want %s", shorts(again.Allocations), shorts(p.Allocations))
			}
		})
	}
}

// checkPlan asserts what holds for every plan: sorting, buckets, Now.
func checkPlan(t *testing.T, s Snapshot, p Plan) {
	t.Helper()
	if !p.Now.Equal(t0) {
		t.Errorf("Now = %v, want %v", p.Now, t0)
	}
	all := slices.Concat(p.Keep, p.Update, p.Place)
	sortByDevice(all)
	if !reflect.DeepEqual(all, p.Allocations) && len(all)+len(p.Allocations) > 0 {
		t.Errorf("Allocations is not Keep + Update + Place sorted:\n got  %s\n want %s", shorts(p.Allocations), shorts(all))
	}
	for _, bucket := range [][]Alloc{p.Allocations, p.Keep, p.Update, p.Place, p.Stop} {
		if !slices.IsSortedFunc(bucket, func(a, b Alloc) int {
			if a.Device != b.Device {
				return cmp.Compare(a.Device, b.Device)
			}
			return cmp.Compare(a.ID, b.ID)
		}) {
			t.Errorf("bucket not sorted by device, id: %s", shorts(bucket))
		}
	}
	before := map[string]Alloc{}
	for _, a := range s.Allocations {
		before[a.ID] = a
	}
	for _, u := range p.Update {
		old, ok := before[u.ID]
		if !ok || old.Device != u.Device {
			t.Errorf("update %s is not an existing allocation on the same device", short(u))
		}
	}
	for _, a := range p.Place {
		if _, ok := before[a.ID]; ok {
			t.Errorf("placed %s reuses an existing id", short(a))
		}
	}
}

func TestUpdateCarriesTheNewVersion(t *testing.T) {
	t.Parallel()
	old := job("web")
	v2 := job("web", version(2), groups(group("g", tasks(task("t", "exec", 100, 64)))))
	prev := allocOf(old, "g", 0, "a")
	p := Compute(Snapshot{Jobs: []Job{v2}, Devices: []Device{dev("a")}, Allocations: []Alloc{prev}}, t0)
	if len(p.Update) != 1 {
		t.Fatalf("updates = %s, want one", shorts(p.Update))
	}
	u := p.Update[0]
	if u.ID != prev.ID || u.Device != "a" || u.JobVersion != 2 || u.Tasks[0].Driver != "exec" || u.Type != protocol.JobService {
		t.Errorf("update = %+v", u)
	}
	if !reflect.DeepEqual(p.Allocations, p.Update) {
		t.Errorf("allocations = %s", shorts(p.Allocations))
	}
}

func TestSystemJobReachesDevicesThatJoinLater(t *testing.T) {
	t.Parallel()
	j := job("mon", typ(protocol.JobSystem), groups(group("g", constrain("${device.os}", "=", "linux"))))
	s := Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a")}}
	p1 := Compute(s, t0)
	if got := outcomeOf(p1); got != (outcome{Place: "mon.g.0@a"}) {
		t.Fatalf("first plan: %+v", got)
	}
	s = feedBack(s, p1)
	s.Devices = append(s.Devices, dev("b"), dev("c", withOS("windows")))
	p2 := Compute(s, t0)
	if got := outcomeOf(p2); got != (outcome{Keep: "mon.g.0@a", Place: "mon.g.0@b"}) {
		t.Fatalf("after b and c joined: %+v", got)
	}
	if want := []protocol.GroupStatus{status("g", 2, 2, "")}; !reflect.DeepEqual(p2.Groups["mon"], want) {
		t.Errorf("groups = %+v", p2.Groups)
	}
}

func TestComputeDoesNotModifyItsInput(t *testing.T) {
	t.Parallel()
	old := job("web", groups(group("g", count(3))))
	s := Snapshot{
		Jobs:        []Job{job("z"), job("web", version(2), groups(group("g", count(2))))},
		Devices:     []Device{dev("b"), dev("a")},
		Allocations: []Alloc{allocOf(old, "g", 2, "b"), allocOf(old, "g", 0, "a")},
	}
	orig := Snapshot{
		Jobs:        slices.Clone(s.Jobs),
		Devices:     slices.Clone(s.Devices),
		Allocations: slices.Clone(s.Allocations),
	}
	p := Compute(s, t0)
	if !reflect.DeepEqual(s, orig) {
		t.Error("Compute modified its snapshot")
	}
	if !reflect.DeepEqual(p, Compute(orig, t0)) {
		t.Error("Compute is not deterministic")
	}
}

func TestDuplicateJobsTheHighestVersionWins(t *testing.T) {
	t.Parallel()
	v1 := job("web")
	v3 := job("web", version(3))
	p := Compute(Snapshot{Jobs: []Job{v1, v3, job("web", version(2))}, Devices: []Device{dev("a")}}, t0)
	if len(p.Place) != 1 || p.Place[0].JobVersion != 3 {
		t.Errorf("placed %+v, want version 3", p.Place)
	}
	if len(p.Groups) != 1 {
		t.Errorf("groups = %+v", p.Groups)
	}
}

func TestSysBatchRunsOnceOnEveryDevice(t *testing.T) {
	t.Parallel()
	j := job("patch", typ(protocol.JobSysBatch), groups(group("g", constrain("${device.os}", "=", "linux"))))
	s := Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a"), dev("b"), dev("w", withOS("windows"))}}
	p1 := Compute(s, t0)
	if got := outcomeOf(p1); got != (outcome{Place: "patch.g.0@a patch.g.0@b"}) {
		t.Fatalf("first plan: %+v", got)
	}
	// a completes; c joins; b drops out of the fleet.
	done := p1.Allocations[0]
	s = feedBack(s, p1)
	s.Devices = []Device{dev("a", withReport(done, protocol.AllocComplete), withOS("windows")), dev("c"), dev("w", withOS("windows"))}
	p2 := Compute(s, t0)
	if got := outcomeOf(p2); got != (outcome{Keep: "patch.g.0@a", Place: "patch.g.0@c", Stop: "patch.g.0@b"}) {
		t.Fatalf("second plan: %+v", got)
	}
	if want := []protocol.GroupStatus{status("g", 2, 2, "")}; !reflect.DeepEqual(p2.Groups["patch"], want) {
		t.Errorf("groups = %+v", p2.Groups)
	}
	// Complete, the allocation stays at its version; sysbatch tasks run to
	// completion, so edged must treat them like batch.
	if !done.Type.RunsToCompletion() || done.Type != protocol.JobSysBatch {
		t.Errorf("type %s", done.Type)
	}
}

func TestResourcesNeverOverCommitted(t *testing.T) {
	t.Parallel()
	gpu := withDevices(task("t", "podman", 100, 64), "nvidia/gpu", 1)
	gpu.Resources.Disk = 600
	j := job("train", groups(group("g", count(4), tasks(gpu))))
	s := Snapshot{Jobs: []Job{j}, Devices: []Device{
		dev("a", withResources("nvidia/gpu", 2), withDisk(1000)), // disk for one
		dev("b", withResources("nvidia/gpu", 1), withDisk(5000)),
		dev("c", withDisk(5000)), // no gpu
	}}
	p := Compute(s, t0)
	if got := outcomeOf(p); got != (outcome{Place: "train.g.0@a train.g.1@b"}) {
		t.Errorf("outcome %+v", got)
	}
	want := "2 of 4 instances unplaced: 2 of 3 devices feasible: 1 lack device nvidia/gpu; 1 exhausted device nvidia/gpu, 1 exhausted disk"
	if got := p.Groups["train"][0].Unplaced; got != want {
		t.Errorf("unplaced:\n got  %s\n want %s", got, want)
	}
}
