package core

import (
	"math"

	"github.com/tether-edge/tether/protocol"
)

// resources is an amount of cpu (MHz), memory (MB) and disk (MB).
type resources struct {
	CPU    int
	Memory int
	Disk   int
}

func (r resources) add(o resources) resources {
	return resources{CPU: r.CPU + o.CPU, Memory: r.Memory + o.Memory, Disk: r.Disk + o.Disk}
}

// deviceCount is a number of units of one device resource.
type deviceCount struct {
	name  string
	count int
}

// demand is what a set of tasks reserves: the sum of their resources, and of
// their device requests by name in order of first request.
type demand struct {
	res     resources
	devices []deviceCount
}

func demandOf(tasks []protocol.Task) demand {
	var d demand
	for _, t := range tasks {
		d.res.CPU += t.Resources.CPU
		d.res.Memory += t.Resources.Memory
		d.res.Disk += t.Resources.Disk
		for _, req := range t.Resources.Devices {
			d.addDevice(req.Name, max(req.Count, 1))
		}
	}
	return d
}

func (d *demand) addDevice(name string, n int) {
	for i := range d.devices {
		if d.devices[i].name == name {
			d.devices[i].count += n
			return
		}
	}
	d.devices = append(d.devices, deviceCount{name: name, count: n})
}

// capacity is what a device offers of cpu, memory and disk.
func capacity(d *Device) resources {
	return resources{CPU: d.Facts.CPUMHz, Memory: d.Facts.MemoryMB, Disk: d.DiskMB}
}

// fitReason says whether want fits on a device of capacity c on which used is
// already reserved: "" when it does, else "exhausted cpu" (checked first, as
// Nomad does), "exhausted memory" or "exhausted disk".
func fitReason(c, used, want resources) string {
	after := used.add(want)
	switch {
	case after.CPU > c.CPU:
		return reasonNoCPU
	case after.Memory > c.Memory:
		return reasonNoMemory
	case after.Disk > c.Disk:
		return reasonNoDisk
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
// demand. Disk and device resources are reserved but not scored, as in Nomad.
func binPackScore(c, usedAfter resources) float64 {
	total := pow10(freeFraction(c.CPU, usedAfter.CPU)) + pow10(freeFraction(c.Memory, usedAfter.Memory))
	score := 20.0 - total
	switch {
	case score > 18:
		return 18
	case score < 0 || math.IsNaN(score):
		return 0
	}
	return score
}

// pow10 is 10^x, by math.Exp, which is twice as fast as math.Pow.
func pow10(x float64) float64 { return math.Exp(x * math.Ln10) }

func freeFraction(capacity, used int) float64 {
	if capacity <= 0 {
		return 0
	}
	return 1 - float64(used)/float64(capacity)
}

// Ranking combines scorers the way Nomad's ScoreNormalizationIterator does:
// each scorer gives a device a score in [-1, 1] (bin packing its
// binPackScore / 18, in [0, 1]) and the device's score is the average of the
// scorers the group uses: bin packing always, affinity when the group has
// affinities, spread when it has spreads. Unlike Nomad, a scorer the group
// uses counts for every device, also where it scores 0, so that matching a
// positive affinity can never lower a device's score; the divisor is then
// the same for every device of a group, and ranking compares sums.
//
// Scores are summed as integers (each scorer's score times scoreScale,
// rounded), which makes the sum exact: the best device is the same whether
// all devices are compared at once or, as placeService does, the best of each
// spread bucket first.
const scoreScale = 1e9

func quantize(x float64) int64 { return int64(math.Round(x * scoreScale)) }

// binPackKey is the bin packing scorer's share of a device's score.
func binPackKey(c, usedAfter resources) int64 { return quantize(binPackScore(c, usedAfter) / 18) }

// binPackMemo remembers binPackKey by capacity and use: fleets have few
// device models, and many devices in the same state (empty, say).
type binPackMemo map[[4]int]int64

// maxBinPackMemo bounds the memo of one Compute.
const maxBinPackMemo = 1 << 16

func (m binPackMemo) key(c, usedAfter resources) int64 {
	k := [4]int{c.CPU, c.Memory, usedAfter.CPU, usedAfter.Memory}
	if v, ok := m[k]; ok {
		return v
	}
	v := binPackKey(c, usedAfter)
	if len(m) < maxBinPackMemo {
		m[k] = v
	}
	return v
}

// affinityScore is Nomad's node affinity score: the sum of the weights of
// the affinities the device matches over the sum of their absolute weights,
// in [-1, 1].
func affinityScore(d *Device, g *groupSpec) float64 {
	if g.affinityAbs == 0 {
		return 0
	}
	sum := 0
	for i := range g.affinities {
		if g.affinities[i].cond.holds(d) {
			sum += g.affinities[i].weight
		}
	}
	return float64(sum) / float64(g.affinityAbs)
}

// spreadScore is one spread's score for placing one more instance on a
// device whose attribute value has count instances of the group already,
// after Nomad's SpreadIterator:
//
//   - With targets, a value's desired count is its percentage of the
//     group's count; values not listed share what the targets leave of 100%
//     (count then sums over all of them). The score is (desired - (count +
//     1)) / desired, at least -1; -1 when nothing is desired there.
//   - Without targets (an even spread), a value with the fewest instances
//     scores 1, one with the most -1, linearly in between (min and max over
//     the values of the devices feasible for the group, ignoring values
//     that only devices out of reach have); 0 when all are equal.
//   - A device without the attribute scores -1.
//
// set is false when the device lacks the attribute; desired is the desired
// count for the value (targets only); min and max are the lowest and highest
// counts (even spread only).
func spreadScore(targeted bool, set bool, count int, desired float64, lo, hi int) float64 {
	switch {
	case !set:
		return -1
	case targeted:
		if desired <= 0 {
			return -1
		}
		return max((desired-float64(count+1))/desired, -1)
	case hi == lo:
		return 0
	default:
		return 1 - 2*float64(count-lo)/float64(hi-lo)
	}
}
