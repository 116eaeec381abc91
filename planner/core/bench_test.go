package core

import (
	"fmt"
	"testing"

	"github.com/tether-edge/tether/protocol"
)

// benchSnapshot is a fleet of n devices and one service job asking for
// instances placements of a 100 MHz / 64 MB task.
func benchSnapshot(n, instances int) Snapshot {
	var s Snapshot
	for i := 0; i < n; i++ {
		s.Devices = append(s.Devices, dev(fmt.Sprintf("dev-%05d", i), withLabels("site", fmt.Sprintf("site-%d", i%10))))
	}
	c := instances
	s.Jobs = []Job{{Version: 1, Job: protocol.Job{ID: "web", Type: protocol.JobService, Groups: []protocol.Group{{
		Name: "g", Count: &c,
		Tasks: []protocol.Task{{Name: "t", Driver: protocol.DriverPodman, Config: protocol.TaskConfig{Image: "img"}, Resources: protocol.Resources{CPU: 100, Memory: 64}}},
	}}}}}
	return s
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
			b.ReportMetric(float64(size.instances)*float64(b.N)/b.Elapsed().Seconds(), "placements/s")
		})
	}
}

// BenchmarkComputeSteady measures the common case: nothing changed since the
// last plan, which is what every report from a device triggers.
func BenchmarkComputeSteady(b *testing.B) {
	s := benchSnapshot(1000, 10000)
	s.Allocations = Compute(s, t0).Allocations
	b.ReportAllocs()
	for b.Loop() {
		p := Compute(s, t0)
		if len(p.Place)+len(p.Stop)+len(p.Update) != 0 {
			b.Fatal("steady state changed")
		}
	}
}
