package core

import (
	"math"

	"github.com/tether-edge/tether/protocol"
)

// resources is an amount of cpu (MHz) and memory (MB).
type resources struct {
	CPU    int
	Memory int
}

func (r resources) add(o resources) resources {
	return resources{CPU: r.CPU + o.CPU, Memory: r.Memory + o.Memory}
}

// demand is what a set of tasks reserves: the sum of their resources.
func demand(tasks []protocol.Task) resources {
	var r resources
	for _, t := range tasks {
		r.CPU += t.Resources.CPU
		r.Memory += t.Resources.Memory
	}
	return r
}

// capacity is what a device offers.
func capacity(d *Device) resources {
	return resources{CPU: d.Facts.CPUMHz, Memory: d.Facts.MemoryMB}
}

// fitReason says whether want fits on a device of capacity c on which used is
// already reserved: "" when it does, else "exhausted cpu" (checked first, as
// Nomad does) or "exhausted memory".
func fitReason(c, used, want resources) string {
	after := used.add(want)
	if after.CPU > c.CPU {
		return reasonNoCPU
	}
	if after.Memory > c.Memory {
		return reasonNoMemory
	}
	return ""
}

// binPackScore is Nomad's ScoreFitBinPack (nomad/structs/funcs.go), the
// "BestFit v3" score, over the utilization after placement:
//
//	score = 20 - (10^freeCPU + 10^freeMem), clamped to [0, 18]
//
// where freeX = 1 - usedX/capacityX. A device left full scores 18, an empty
// one 0: higher is better, so the fullest device that fits wins. A zero
// capacity counts as full (nothing is free), which only matters for a zero
// demand.
func binPackScore(c, usedAfter resources) float64 {
	total := math.Pow(10, freeFraction(c.CPU, usedAfter.CPU)) + math.Pow(10, freeFraction(c.Memory, usedAfter.Memory))
	score := 20.0 - total
	switch {
	case score > 18:
		return 18
	case score < 0 || math.IsNaN(score):
		return 0
	}
	return score
}

func freeFraction(capacity, used int) float64 {
	if capacity <= 0 {
		return 0
	}
	return 1 - float64(used)/float64(capacity)
}
