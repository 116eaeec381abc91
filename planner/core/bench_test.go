package core

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// Benchmarks of the scheduling core. The large ones take seconds per plan;
// run them once each:
//
//	go test -run '^$' -bench . -benchtime 1x ./planner/core
//
// Metrics: placements/s (instances placed per second of Compute), and for
// the fleet benchmarks heap-B/device, the live heap held by the snapshot and
// the plan (what the planner holds while it plans) divided by the number of
// devices.

// benchFleet is n online devices of 4000 MHz / 4096 MB / 20 GB, spread over
// 10 sites and 100 racks, with labels as a real fleet has.
func benchFleet(n int) []Device {
	devices := make([]Device, n)
	for i := range devices {
		id := fmt.Sprintf("dev-%06d", i)
		devices[i] = dev(id, withLabels("site", fmt.Sprintf("site-%d", i%10), "rack", fmt.Sprintf("rack-%d", i%100), "role", "edge"))
		devices[i].DiskMB = 20000
	}
	return devices
}

// benchJob is a job of the given type with groups of count instances each of
// a 100 MHz / 64 MB task.
func benchJob(id string, typ protocol.JobType, groups, count int, opts ...groupOpt) Job {
	j := Job{Version: 1, Job: protocol.Job{ID: id, Type: typ}}
	for g := range groups {
		c := count
		grp := protocol.Group{
			Name: fmt.Sprintf("g%d", g), Count: &c,
			Tasks: []protocol.Task{{Name: "t", Driver: protocol.DriverPodman, Config: protocol.TaskConfig{Image: "img"}, Resources: protocol.Resources{CPU: 100, Memory: 64}}},
		}
		for _, o := range opts {
			o(&grp)
		}
		j.Job.Groups = append(j.Job.Groups, grp)
	}
	return j
}

// benchSnapshot is a fleet of n devices and one service job asking for
// instances placements of a 100 MHz / 64 MB task.
func benchSnapshot(n, instances int) Snapshot {
	return Snapshot{Devices: benchFleet(n), Jobs: []Job{benchJob("web", protocol.JobService, 1, instances)}}
}

// asDecoded gives every allocation its own copy of its task list, as when
// the shell reads them from its store, so that comparing them with the job
// cannot take the shortcut of a shared slice.
func asDecoded(allocs []Alloc) []Alloc {
	out := slices.Clone(allocs)
	for i := range out {
		out[i].Tasks = slices.Clone(out[i].Tasks)
	}
	return out
}

func reportPlacements(b *testing.B, perPlan int) {
	b.ReportMetric(float64(perPlan)*float64(b.N)/b.Elapsed().Seconds(), "placements/s")
}

// reportHeap reports the live heap per device while s and p are alive,
// relative to base (runtime.MemStats.HeapAlloc before s was built).
func reportHeap(b *testing.B, base uint64, devices int, keep ...any) {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	b.ReportMetric(float64(m.HeapAlloc-min(base, m.HeapAlloc))/float64(devices), "heap-B/device")
	runtime.KeepAlive(keep)
}

func heapNow() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkComputePlace measures a cold placement: every instance is new.
func BenchmarkComputePlace(b *testing.B) {
	for _, size := range []struct{ devices, instances int }{{100, 1000}, {1000, 10000}} {
		b.Run(fmt.Sprintf("devices=%d/instances=%d", size.devices, size.instances), func(b *testing.B) {
			s := benchSnapshot(size.devices, size.instances)
			b.ReportAllocs()
			for b.Loop() {
				p := Compute(s, t0)
				if len(p.Place) != size.instances {
					b.Fatalf("placed %d", len(p.Place))
				}
			}
			reportPlacements(b, size.instances)
		})
	}
}

// BenchmarkComputeSteady measures the common case: nothing changed since the
// last plan, which is what every report from a device triggers.
func BenchmarkComputeSteady(b *testing.B) {
	s := benchSnapshot(1000, 10000)
	s.Allocations = asDecoded(Compute(s, t0).Allocations)
	b.ReportAllocs()
	for b.Loop() {
		p := Compute(s, t0)
		if len(p.Place)+len(p.Stop)+len(p.Update) != 0 {
			b.Fatal("steady state changed")
		}
	}
}

// BenchmarkComputeService places a service job of 100,000 instances (ten
// groups of 10,000, the most a group may ask for) over 10,000 devices, plain
// and with a spread over sites and an affinity.
func BenchmarkComputeService(b *testing.B) {
	const devices, groups, count = 10000, 10, 10000
	for _, v := range []struct {
		name string
		opts []groupOpt
	}{
		{"plain", nil},
		{"spread+affinity", []groupOpt{
			func(g *protocol.Group) {
				g.Spreads = []protocol.Spread{{Attribute: "${device.labels.site}", Weight: 50}}
				g.Affinities = []protocol.Affinity{{Attribute: "${device.labels.rack}", Operator: "=", Value: "rack-7", Weight: 50}}
			},
		}},
		{"distinct_hosts", []groupOpt{constrain("", protocol.OpDistinctHosts, "")}},
	} {
		b.Run(fmt.Sprintf("%s/devices=%d/instances=%d", v.name, devices, groups*count), func(b *testing.B) {
			base := heapNow()
			s := Snapshot{Devices: benchFleet(devices), Jobs: []Job{benchJob("web", protocol.JobService, groups, count, v.opts...)}}
			b.ReportAllocs()
			var p Plan
			for b.Loop() {
				p = Compute(s, t0)
				if len(p.Place) != groups*count {
					b.Fatalf("placed %d", len(p.Place))
				}
			}
			reportPlacements(b, groups*count)
			reportHeap(b, base, devices, s, p)
		})
	}
}

// BenchmarkComputeSystem places a system job on every one of 100,000
// devices.
func BenchmarkComputeSystem(b *testing.B) {
	const devices = 100000
	base := heapNow()
	s := Snapshot{Devices: benchFleet(devices), Jobs: []Job{benchJob("agent", protocol.JobSystem, 1, 1, constrain("${device.labels.role}", "=", "edge"))}}
	b.ReportAllocs()
	var p Plan
	for b.Loop() {
		p = Compute(s, t0)
		if len(p.Place) != devices {
			b.Fatalf("placed %d", len(p.Place))
		}
	}
	reportPlacements(b, devices)
	reportHeap(b, base, devices, s, p)
}

// fleetSnapshot is 100,000 devices with 1,000,000 allocations' worth of
// jobs: five system jobs (500,000) and fifty service jobs of 10,000. The
// system jobs sort first, so they are placed before the service jobs fill
// devices up.
func fleetSnapshot() Snapshot {
	s := Snapshot{Devices: benchFleet(100000)}
	for i := range 5 {
		s.Jobs = append(s.Jobs, benchJob(fmt.Sprintf("agent-%d", i), protocol.JobSystem, 1, 1))
	}
	for i := range 50 {
		s.Jobs = append(s.Jobs, benchJob(fmt.Sprintf("svc-%02d", i), protocol.JobService, 1, 10000))
	}
	return s
}

// BenchmarkComputeFleet plans 1,000,000 allocations over 100,000 devices:
// cold (every allocation new) and steady (nothing to change, with
// allocations as read from the store).
func BenchmarkComputeFleet(b *testing.B) {
	const devices, allocs = 100000, 1000000
	b.Run("cold", func(b *testing.B) {
		base := heapNow()
		s := fleetSnapshot()
		b.ReportAllocs()
		var p Plan
		for b.Loop() {
			p = Compute(s, t0)
			if len(p.Place) != allocs {
				b.Fatalf("placed %d", len(p.Place))
			}
		}
		reportPlacements(b, allocs)
		reportHeap(b, base, devices, s, p)
	})
	b.Run("steady", func(b *testing.B) {
		base := heapNow()
		s := fleetSnapshot()
		s.Allocations = asDecoded(Compute(s, t0).Allocations)
		b.ReportAllocs()
		var p Plan
		for b.Loop() {
			p = Compute(s, t0)
			if len(p.Keep) != allocs || len(p.Place)+len(p.Stop)+len(p.Update) != 0 {
				b.Fatal("steady state changed")
			}
		}
		reportHeap(b, base, devices, s, p)
	})
}

// BenchmarkComputeLost measures the steady state of a fleet a tenth of
// which is lost: 1,000 devices, 10,000 instances, the 100 devices offline
// for an hour holding 1,000 lost instances, each replaced elsewhere; what
// every report triggers until those devices return.
func BenchmarkComputeLost(b *testing.B) {
	s := benchSnapshot(1000, 10000)
	s.Allocations = asDecoded(Compute(s, t0).Allocations)
	s.Devices = slices.Clone(s.Devices)
	for i := 0; i < len(s.Devices); i += 10 {
		s.Devices[i].Presence, s.Devices[i].OfflineSince = protocol.Offline, t0.Add(-time.Hour)
	}
	p := Compute(s, t0)
	if len(p.Lost) == 0 || len(p.Place) != len(p.Lost) {
		b.Fatalf("lost %d, replaced %d", len(p.Lost), len(p.Place))
	}
	s.Allocations = asDecoded(p.Allocations)
	b.ReportAllocs()
	for b.Loop() {
		p := Compute(s, t0)
		if len(p.Place)+len(p.Stop)+len(p.Update) != 0 {
			b.Fatal("steady state changed")
		}
	}
}

// BenchmarkComputeRollout rolls a new version of a system job out to 10,000
// devices, max_parallel 500: plan, every allocation the plan updated reports
// healthy, plan again, until the rollout succeeds (21 plans). Metrics:
// plans/s, and ns/device, the time of one plan divided by the number of
// devices.
func BenchmarkComputeRollout(b *testing.B) {
	const devices, maxParallel = 10000, 500
	update := func(g *protocol.Group) { g.Update = &protocol.Update{MaxParallel: maxParallel} }
	v1 := benchJob("agent", protocol.JobSystem, 1, 1, update)
	v2 := benchJob("agent", protocol.JobSystem, 1, 1, update, func(g *protocol.Group) {
		g.Tasks = []protocol.Task{g.Tasks[0]}
		g.Tasks[0].Config.Image = "img:2"
	})
	v2.Version = 2
	start := Compute(Snapshot{Devices: benchFleet(devices), Jobs: []Job{v1}}, t0).Allocations
	healthy := func(d *Device, a Alloc) {
		d.Reported[a.ID] = protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, State: protocol.AllocRunning, Health: protocol.Healthy}
	}
	plans := 0
	var elapsed time.Duration
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		s := Snapshot{Devices: benchFleet(devices), Jobs: []Job{v2}, Allocations: asDecoded(start)}
		byID := map[string]*Device{}
		for i := range s.Devices {
			d := &s.Devices[i]
			d.Reported = map[string]protocol.AllocStatus{}
			byID[d.ID] = d
		}
		for _, a := range s.Allocations {
			healthy(byID[a.Device], a)
		}
		now := t0
		for step := 0; ; step++ {
			b.StartTimer()
			began := time.Now()
			p := Compute(s, now)
			elapsed += time.Since(began)
			b.StopTimer()
			plans++
			r := p.Rollouts["agent"]
			if r.State == protocol.RolloutSuccessful {
				if step != devices/maxParallel {
					b.Fatalf("successful after %d plans", step+1)
				}
				break
			}
			if r.State != protocol.RolloutRunning || len(p.Update) != maxParallel {
				b.Fatalf("plan %d: %s, %d updated", step+1, r.State, len(p.Update))
			}
			for _, a := range p.Update {
				healthy(byID[a.Device], a)
			}
			s = feedBack(s, p)
			now = now.Add(time.Minute)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(plans)/elapsed.Seconds(), "plans/s")
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(plans)/devices, "ns/device")
}
