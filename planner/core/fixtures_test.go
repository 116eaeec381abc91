package core

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// Fixture builders. A device defaults to an online linux/amd64 device with
// facts, both drivers, 4000 MHz and 4096 MB; a job to version 1 of a service
// with one group "g" of one podman task of 100 MHz and 64 MB.

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

type devOpt func(*Device)

func dev(id string, opts ...devOpt) Device {
	d := Device{
		ID:       id,
		HasFacts: true,
		Presence: protocol.Online,
		Facts: protocol.Facts{
			Device: id, Hostname: id + ".local", Arch: "amd64", OS: "linux", Kernel: "6.1.0",
			CPUCores: 4, CPUMHz: 4000, MemoryMB: 4096,
			Drivers: []string{protocol.DriverPodman, protocol.DriverExec},
		},
	}
	for _, o := range opts {
		o(&d)
	}
	return d
}

func withArch(a string) devOpt { return func(d *Device) { d.Facts.Arch = a } }

func withOS(os string) devOpt { return func(d *Device) { d.Facts.OS = os } }

func withKernel(k string) devOpt { return func(d *Device) { d.Facts.Kernel = k } }

func withHostname(h string) devOpt { return func(d *Device) { d.Facts.Hostname = h } }

func withCores(n int) devOpt { return func(d *Device) { d.Facts.CPUCores = n } }

// withLabels sets labels from key, value pairs.
func withLabels(kv ...string) devOpt {
	return func(d *Device) {
		d.Facts.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			d.Facts.Labels[kv[i]] = kv[i+1]
		}
	}
}

func withDrivers(drivers ...string) devOpt { return func(d *Device) { d.Facts.Drivers = drivers } }

func withCapacity(cpu, mem int) devOpt {
	return func(d *Device) { d.Facts.CPUMHz, d.Facts.MemoryMB = cpu, mem }
}

// withResources sets the device resources from name, count pairs.
func withResources(kv ...any) devOpt {
	return func(d *Device) {
		d.Resources = map[string]int{}
		for i := 0; i+1 < len(kv); i += 2 {
			d.Resources[kv[i].(string)] = kv[i+1].(int)
		}
	}
}

func withDisk(mb int) devOpt { return func(d *Device) { d.DiskMB = mb } }

func offline(d *Device) { d.Presence = protocol.Offline }

func neverSeen(d *Device) { d.Presence = "" }

func noFacts(d *Device) { d.HasFacts, d.Facts = false, protocol.Facts{} }

// withReport records the device's reported state of an allocation.
func withReport(a Alloc, state protocol.AllocState) devOpt {
	return func(d *Device) {
		if d.Reported == nil {
			d.Reported = map[string]protocol.AllocStatus{}
		}
		d.Reported[a.ID] = protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, State: state}
	}
}

type jobOpt func(*Job)

func job(id string, opts ...jobOpt) Job {
	j := Job{Job: protocol.Job{ID: id, Type: protocol.JobService}, Version: 1}
	for _, o := range opts {
		o(&j)
	}
	if len(j.Job.Groups) == 0 {
		j.Job.Groups = []protocol.Group{group("g")}
	}
	return j
}

func typ(t protocol.JobType) jobOpt { return func(j *Job) { j.Job.Type = t } }

func version(v uint64) jobOpt { return func(j *Job) { j.Version = v } }

func stopped(j *Job) { j.Stopped = true }

func groups(gs ...protocol.Group) jobOpt { return func(j *Job) { j.Job.Groups = gs } }

type groupOpt func(*protocol.Group)

func group(name string, opts ...groupOpt) protocol.Group {
	one := 1
	g := protocol.Group{Name: name, Count: &one}
	for _, o := range opts {
		o(&g)
	}
	if len(g.Tasks) == 0 {
		g.Tasks = []protocol.Task{task("t", protocol.DriverPodman, 100, 64)}
	}
	return g
}

func count(n int) groupOpt { return func(g *protocol.Group) { g.Count = &n } }

func constrain(attr, op, value string) groupOpt {
	return func(g *protocol.Group) {
		g.Constraints = append(g.Constraints, protocol.Constraint{Attribute: attr, Operator: op, Value: value})
	}
}

func tasks(ts ...protocol.Task) groupOpt { return func(g *protocol.Group) { g.Tasks = ts } }

// task builds a valid task of the driver with the given demand.
func task(name, driver string, cpu, mem int) protocol.Task {
	t := protocol.Task{Name: name, Driver: driver, Resources: protocol.Resources{CPU: cpu, Memory: mem}}
	if driver == protocol.DriverExec {
		t.Config.Command = []string{"/bin/true"}
	} else {
		t.Config.Image = "docker.io/library/busybox:1"
	}
	return t
}

// withDevices adds a device request to a task.
func withDevices(t protocol.Task, name string, count int) protocol.Task {
	t.Resources.Devices = append(t.Resources.Devices, protocol.DeviceRequest{Name: name, Count: count})
	return t
}

// allocOf is instance index of a group of j on a device, as the planner
// would have placed it for j's current version.
func allocOf(j Job, groupName string, index int, device string) Alloc {
	for _, g := range j.Job.Groups {
		if g.Name == groupName {
			return Alloc{
				ID: AllocID(j.Job.ID, g.Name, index, device), Job: j.Job.ID, JobVersion: j.Version,
				Group: g.Name, Index: index, Type: j.Job.Type, Device: device, Tasks: g.Tasks,
			}
		}
	}
	panic("no group " + groupName)
}

// short names an allocation readably: job.group.index@device.
func short(a Alloc) string { return fmt.Sprintf("%s.%s.%d@%s", a.Job, a.Group, a.Index, a.Device) }

func shorts(allocs []Alloc) string {
	s := make([]string, len(allocs))
	for i, a := range allocs {
		s[i] = short(a)
	}
	return strings.Join(s, " ")
}

// outcome is a plan's buckets, each as space-separated short names in plan
// order (device, then id).
type outcome struct{ Keep, Update, Place, Stop string }

func outcomeOf(p Plan) outcome {
	return outcome{Keep: shorts(p.Keep), Update: shorts(p.Update), Place: shorts(p.Place), Stop: shorts(p.Stop)}
}

// feedBack is the snapshot of the next evaluation: same jobs and devices,
// the plan's allocations in place and its rollouts persisted, as the shell
// does.
func feedBack(s Snapshot, p Plan) Snapshot {
	s.Allocations = p.Allocations
	s.Jobs = slices.Clone(s.Jobs)
	for i := range s.Jobs {
		s.Jobs[i].Rollout = nil
		if r, ok := p.Rollouts[s.Jobs[i].Job.ID]; ok {
			s.Jobs[i].Rollout = &r
		}
	}
	return s
}

// dumpSnapshot renders a snapshot for a failing property's message.
func dumpSnapshot(s Snapshot) string {
	var b strings.Builder
	for _, j := range s.Jobs {
		fmt.Fprintf(&b, "job %s v%d %s stopped=%v rollout=%+v\n", j.Job.ID, j.Version, j.Job.Type, j.Stopped, j.Rollout)
		for _, g := range j.Job.Groups {
			fmt.Fprintf(&b, "  group %s count=%v update=%+v constraints=%v tasks=%+v disc=%+v\n", g.Name, *g.Count, g.Update, g.Constraints, g.Tasks, g.Disconnect)
		}
	}
	for _, d := range s.Devices {
		fmt.Fprintf(&b, "dev %s %s facts=%v cpu=%d mem=%d disk=%d res=%v inel=%v drain=%v since=%v drivers=%v\n", d.ID, d.Presence, d.HasFacts, d.Facts.CPUMHz, d.Facts.MemoryMB, d.DiskMB, d.Resources, d.Ineligible, d.Draining, d.OfflineSince, d.Facts.Drivers)
		for id, st := range d.Reported {
			fmt.Fprintf(&b, "  rep %s v%d %s %s\n", id, st.JobVersion, st.State, st.Health)
		}
	}
	for _, a := range s.Allocations {
		fmt.Fprintf(&b, "alloc %s id=%s v%d %s repl=%s tasks=%+v\n", short(a), a.ID, a.JobVersion, a.Type, a.Replaces, a.Tasks)
	}
	return b.String()
}
