package core

import (
	"fmt"
	"sort"
	"strings"
)

// survey is what one placement attempt saw over every device: how many
// passed the feasibility checks, why the others did not, and why feasible
// ones could not take the allocation.
type survey struct {
	devices   int            // devices looked at: every device of the snapshot
	feasible  int            // devices passing every check but resources
	filtered  map[string]int // feasibility reason → devices
	exhausted map[string]int // "exhausted cpu" / "exhausted memory" / ... → devices
}

func newSurvey(devices int) survey {
	return survey{devices: devices, filtered: map[string]int{}, exhausted: map[string]int{}}
}

// unplacedMessage explains why instances of a group could not be placed.
// The format is fixed, operators and tests read it:
//
//	<u> of <n> instances unplaced: <f> of <d> devices feasible[: <filtered>][; <exhausted>]
//
// u is the number of unplaced instances, n the desired number, d the number
// of devices in the snapshot and f how many of them passed every feasibility
// check (facts, presence, eligibility, drivers, constraints, device
// resources present, distinct_hosts, distinct_property) whatever their free
// resources. For
// system and sysbatch groups a device already running the group also counts
// as feasible, so f equals n. <filtered> lists the feasibility reasons of the
// d-f other devices and <exhausted> the resource reasons of the feasible
// devices that lacked room, each as "<count> <reason>" joined by ", ", by
// count descending then reason ascending. Empty lists are left out with
// their separator. Examples:
//
//	2 of 3 instances unplaced: 0 of 3 devices feasible: 2 lack driver podman, 1 constraint ${device.arch} = arm64
//	1 of 3 instances unplaced: 1 of 3 devices feasible: 2 offline; 1 exhausted memory
//	1 of 1 instances unplaced: 0 of 0 devices feasible
//	1 of 3 instances unplaced: 0 of 3 devices feasible: 2 distinct_hosts, 1 offline
//	1 of 4 instances unplaced: 2 of 4 devices feasible: 2 lack device nvidia/gpu; 2 exhausted device nvidia/gpu
//
// The reasons are those seen by the first instance that could not be placed;
// no later instance of the group can see anything else, since nothing is
// placed in between.
func unplacedMessage(unplaced, desired int, s survey) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d instances unplaced: %d of %d devices feasible", unplaced, desired, s.feasible, s.devices)
	var parts []string
	for _, m := range []map[string]int{s.filtered, s.exhausted} {
		if list := countList(m); list != "" {
			parts = append(parts, list)
		}
	}
	if len(parts) > 0 {
		b.WriteString(": ")
		b.WriteString(strings.Join(parts, "; "))
	}
	return b.String()
}

// countList renders reason counts as "2 offline, 1 lack driver podman", by
// count descending then reason ascending.
func countList(m map[string]int) string {
	reasons := make([]string, 0, len(m))
	for r, n := range m {
		if n > 0 {
			reasons = append(reasons, r)
		}
	}
	sort.Slice(reasons, func(i, j int) bool {
		if m[reasons[i]] != m[reasons[j]] {
			return m[reasons[i]] > m[reasons[j]]
		}
		return reasons[i] < reasons[j]
	})
	items := make([]string, len(reasons))
	for i, r := range reasons {
		items[i] = fmt.Sprintf("%d %s", m[r], r)
	}
	return strings.Join(items, ", ")
}
