package core

import (
	"slices"
	"strconv"
	"strings"

	"github.com/tether-edge/tether/protocol"
)

// groupSpec is a group compiled once per Compute: everything the checkers
// and rankers read, with every reason string built in advance.
type groupSpec struct {
	drivers       []string // distinct, in task order
	driverReasons []string // "lack driver X", parallel to drivers
	constraints   []constraint
	deviceReasons []string // "lack device X", parallel to demand.devices
	// deviceExhausted are the reasons "exhausted device X", parallel to
	// demand.devices.
	deviceExhausted []string
	demand          demand

	// Constraints that depend on what is placed.
	distinctHosts bool
	distinctProps []distinctProperty

	// Rankers.
	affinities  []affinity
	affinityAbs int // sum of the absolute weights
	spreads     []spreadSpec
	spreadSum   int // sum of the spread weights

	// signature identifies what the static checks (keepChecks) read: two
	// groups with the same signature are feasible on the same devices.
	signature string
}

// distinctProperty is a compiled distinct_property constraint.
type distinctProperty struct {
	attr   attribute
	limit  int
	reason string // "distinct_property ${device.labels.site}"
}

// affinity is a compiled affinity.
type affinity struct {
	cond   constraint
	weight int
}

// spreadSpec is a compiled spread.
type spreadSpec struct {
	attr    attribute
	weight  int
	targets map[string]int // value → percent; nil for an even spread
	percent int            // sum of the target percentages
}

// reasonDistinctHosts is the reason of a device that already runs an
// instance of a group with a distinct_hosts constraint.
const reasonDistinctHosts = protocol.OpDistinctHosts

// compileGroup compiles a group of a normalized job.
func compileGroup(g *protocol.Group) *groupSpec {
	s := &groupSpec{demand: demandOf(g.Tasks)}
	var sig strings.Builder
	for _, t := range g.Tasks {
		if !slices.Contains(s.drivers, t.Driver) {
			s.drivers = append(s.drivers, t.Driver)
			s.driverReasons = append(s.driverReasons, reasonNoDriver+t.Driver)
			sig.WriteString(t.Driver)
			sig.WriteByte(0)
		}
	}
	sig.WriteByte(1)
	for _, c := range g.Constraints {
		switch c.Operator {
		case protocol.OpDistinctHosts:
			s.distinctHosts = true
			continue
		case protocol.OpDistinctProperty:
			limit, err := protocol.DistinctLimit(c.Value)
			if err != nil {
				limit = 1
			}
			s.distinctProps = append(s.distinctProps, distinctProperty{attr: parseAttribute(c.Attribute), limit: limit, reason: c.String()})
			continue
		}
		s.constraints = append(s.constraints, compileConstraint(c))
		for _, part := range []string{c.Attribute, c.Operator, c.Value} {
			sig.WriteString(strconv.Quote(part))
		}
		sig.WriteByte(0)
	}
	sig.WriteByte(1)
	for _, dc := range s.demand.devices {
		s.deviceReasons = append(s.deviceReasons, reasonNoDevice+dc.name)
		s.deviceExhausted = append(s.deviceExhausted, reasonDevice+dc.name)
		sig.WriteString(dc.name)
		sig.WriteByte(0)
	}
	s.signature = sig.String()
	for _, a := range g.Affinities {
		if a.Weight == 0 {
			continue
		}
		s.affinities = append(s.affinities, affinity{cond: compileConstraint(a.Constraint()), weight: a.Weight})
		s.affinityAbs += abs(a.Weight)
	}
	for _, sp := range g.Spreads {
		w := sp.Weight
		if w <= 0 {
			w = protocol.DefaultSpreadWeight
		}
		ss := spreadSpec{attr: parseAttribute(sp.Attribute), weight: w}
		if len(sp.Targets) > 0 {
			ss.targets = make(map[string]int, len(sp.Targets))
			for _, t := range sp.Targets {
				ss.targets[t.Value] += max(t.Percent, 0)
				ss.percent += max(t.Percent, 0)
			}
		}
		s.spreads = append(s.spreads, ss)
		s.spreadSum += w
	}
	return s
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}
