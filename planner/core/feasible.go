package core

import (
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/tether-edge/tether/protocol"
)

// checker is one feasibility check, in the manner of Nomad's
// FeasibilityChecker: it looks at one device for one compiled group and
// returns "" when the device qualifies, else the reason it does not. Reasons
// are aggregated into GroupStatus.Unplaced, so they must be short and stable;
// they are built once per group (see compileGroup), so a check allocates
// nothing.
type checker interface {
	check(d *Device, g *groupSpec) string
}

// Reasons given by the checkers other than constraints (whose reason is
// "constraint " and the constraint's String form) and by the resource check.
const (
	reasonNoFacts    = "no facts yet"
	reasonOffline    = "offline"
	reasonIneligible = "ineligible"
	reasonNoDriver   = "lack driver "
	reasonNoDevice   = "lack device "
	reasonNoCPU      = "exhausted cpu"
	reasonNoMemory   = "exhausted memory"
	reasonNoDisk     = "exhausted disk"
	reasonDevice     = "exhausted device "
	constraintLabel  = "constraint "
)

// hasFacts rejects devices that never published their facts: nothing is known
// of what they can run.
type hasFacts struct{}

func (hasFacts) check(d *Device, _ *groupSpec) string {
	if !d.HasFacts {
		return reasonNoFacts
	}
	return ""
}

// isOnline rejects devices that are not connected. It only applies to new
// placements: allocations already on an offline device are kept.
type isOnline struct{}

func (isOnline) check(d *Device, _ *groupSpec) string {
	if d.Presence != protocol.Online {
		return reasonOffline
	}
	return ""
}

// isEligible rejects devices the operator made ineligible or is draining
// (protocol.Scheduling). Like presence, it only applies to new placements:
// what such a device runs stays (but see drainPass).
type isEligible struct{}

func (isEligible) check(d *Device, _ *groupSpec) string {
	if d.Ineligible || d.Draining {
		return reasonIneligible
	}
	return ""
}

// hasDrivers rejects devices missing the driver of any task, naming the first
// missing one in task order.
type hasDrivers struct{}

func (hasDrivers) check(d *Device, g *groupSpec) string {
	for i, drv := range g.drivers {
		if !d.Facts.HasDriver(drv) {
			return g.driverReasons[i]
		}
	}
	return ""
}

// meetsConstraints rejects devices failing any of the group's constraints
// other than distinct_hosts and distinct_property, naming the first failing
// one in document order.
type meetsConstraints struct{}

func (meetsConstraints) check(d *Device, g *groupSpec) string {
	for i := range g.constraints {
		if !g.constraints[i].holds(d) {
			return g.constraints[i].reason
		}
	}
	return ""
}

// hasDevices rejects devices that report none of a device resource the
// group's tasks request ("lack device nvidia/gpu"). How many are free is the
// resource check's business.
type hasDevices struct{}

func (hasDevices) check(d *Device, g *groupSpec) string {
	for i, dc := range g.demand.devices {
		if d.Resources[dc.name] <= 0 {
			return g.deviceReasons[i]
		}
	}
	return ""
}

// Checker chains. placeChecks decide where new allocations may go;
// keepChecks decide whether an existing allocation may stay, which is the
// same minus presence and eligibility: allocations on offline or ineligible
// devices are not moved for that (a draining device's are, see drainPass). Both depend only on the device and the group, so Compute runs
// keepChecks once per device and group signature (see feasMemo); the checks
// that depend on what is placed (distinct_hosts, distinct_property) and the
// resource check come after them.
var (
	placeChecks = []checker{hasFacts{}, isOnline{}, isEligible{}, hasDrivers{}, meetsConstraints{}, hasDevices{}}
	keepChecks  = []checker{hasFacts{}, hasDrivers{}, meetsConstraints{}, hasDevices{}}
)

// infeasible runs a chain and returns the first reason, or "" when the device
// passes every check.
func infeasible(chain []checker, d *Device, g *groupSpec) string {
	for _, c := range chain {
		if r := c.check(d, g); r != "" {
			return r
		}
	}
	return ""
}

// constraint is a compiled constraint (or an affinity's condition): the
// attribute it reads and the predicate its value must satisfy.
type constraint struct {
	attr   attribute
	pred   predicate
	reason string // "constraint " + the constraint's String form
}

func (c *constraint) holds(d *Device) bool {
	if c.attr.kind == attrUnknown {
		return false // validated jobs have none
	}
	v, set := c.attr.value(d)
	return c.pred.holds(v, set)
}

// predicate is one compiled operator: whether an attribute's value satisfies
// it. set is false when the device does not have the attribute (a label it
// does not report, an empty text attribute); value is then "".
type predicate interface {
	holds(value string, set bool) bool
}

// compileConstraint compiles a constraint with one of the matching operators.
// An unknown operator or an operand that does not parse never holds
// (validated jobs have neither).
func compileConstraint(c protocol.Constraint) constraint {
	return constraint{attr: parseAttribute(c.Attribute), pred: compilePredicate(c.Operator, c.Value), reason: constraintLabel + c.String()}
}

func compilePredicate(op, value string) predicate {
	switch op {
	case "", protocol.OpEqual, protocol.OpEqualEqual:
		return equals{want: value}
	case protocol.OpNotEqual:
		return equals{want: value, negate: true}
	case protocol.OpLess, protocol.OpLessEqual, protocol.OpGreater, protocol.OpGreaterEqual:
		n, err := protocol.ParseNumber(value)
		if err != nil {
			return never{}
		}
		return compare{op: op, operand: n}
	case protocol.OpVersion:
		r, err := protocol.ParseVersionRange(value)
		if err != nil {
			return never{}
		}
		return inVersionRange{r}
	case protocol.OpRegexp:
		re, err := regexp.Compile(value)
		if err != nil {
			return never{}
		}
		return matches{re}
	case protocol.OpSetContains, protocol.OpSetContainsAny:
		items := protocol.SplitSet(value)
		if len(items) == 0 {
			return never{}
		}
		return setContains{items: items, any: op == protocol.OpSetContainsAny}
	case protocol.OpIsSet:
		return isSet{want: true}
	case protocol.OpIsNotSet:
		return isSet{want: false}
	}
	return never{}
}

// equals compares as strings. A missing label reads as "", so "=" fails and
// "!=" holds, as before the other operators existed.
type equals struct {
	want   string
	negate bool
}

func (p equals) holds(v string, _ bool) bool { return (v == p.want) != p.negate }

// compare is a numeric comparison; an attribute that is not a number never
// satisfies it.
type compare struct {
	op      string
	operand float64
}

func (p compare) holds(v string, set bool) bool {
	if !set {
		return false
	}
	n, err := protocol.ParseNumber(v)
	if err != nil {
		return false
	}
	switch p.op {
	case protocol.OpLess:
		return n < p.operand
	case protocol.OpLessEqual:
		return n <= p.operand
	case protocol.OpGreater:
		return n > p.operand
	default:
		return n >= p.operand
	}
}

// inVersionRange reads the attribute as a version (see protocol.SemVer); one
// that is not a version never satisfies it.
type inVersionRange struct{ r protocol.VersionRange }

func (p inVersionRange) holds(v string, set bool) bool {
	if !set {
		return false
	}
	ver, err := protocol.ParseVersion(v)
	return err == nil && p.r.Contains(ver)
}

// matches is an unanchored regular expression match, as in Nomad.
type matches struct{ re *regexp.Regexp }

func (p matches) holds(v string, set bool) bool { return set && p.re.MatchString(v) }

// setContains reads the attribute as a comma-separated set and requires every
// item (any item) of the operand.
type setContains struct {
	items []string
	any   bool
}

func (p setContains) holds(v string, set bool) bool {
	if !set {
		return false
	}
	have := protocol.SplitSet(v)
	for _, item := range p.items {
		found := slices.Contains(have, item)
		if found && p.any {
			return true
		}
		if !found && !p.any {
			return false
		}
	}
	return !p.any
}

// isSet is is_set (want true) or is_not_set (want false).
type isSet struct{ want bool }

func (p isSet) holds(_ string, set bool) bool { return set == p.want }

// never is an operator that cannot be evaluated.
type never struct{}

func (never) holds(string, bool) bool { return false }

// attrKind is which ${device.*} attribute a constraint reads.
type attrKind uint8

const (
	attrUnknown attrKind = iota
	attrArch
	attrOS
	attrKernel
	attrID
	attrHostname
	attrCores
	attrMHz
	attrMemory
	attrLabel
)

// attribute is a parsed ${device.*} attribute.
type attribute struct {
	kind  attrKind
	label string // the key of ${device.labels.KEY}
}

var attrKinds = map[string]attrKind{
	"arch": attrArch, "os": attrOS, "kernel": attrKernel, "id": attrID, "hostname": attrHostname,
	"cpu.cores": attrCores, "cpu.mhz": attrMHz, "memory": attrMemory,
}

// parseAttribute parses "${device.NAME}"; the kind is attrUnknown when the
// attribute is not one of protocol v1.
func parseAttribute(s string) attribute {
	name, ok := strings.CutPrefix(s, "${device.")
	if !ok {
		return attribute{}
	}
	name, ok = strings.CutSuffix(name, "}")
	if !ok {
		return attribute{}
	}
	if k, ok := attrKinds[name]; ok {
		return attribute{kind: k}
	}
	if key, ok := strings.CutPrefix(name, "labels."); ok && key != "" {
		return attribute{kind: attrLabel, label: key}
	}
	return attribute{}
}

// value resolves the attribute on a device. set is false for a label the
// device does not report and for an empty text attribute; numbers are always
// set.
func (a attribute) value(d *Device) (value string, set bool) {
	f := &d.Facts
	switch a.kind {
	case attrArch:
		return f.Arch, f.Arch != ""
	case attrOS:
		return f.OS, f.OS != ""
	case attrKernel:
		return f.Kernel, f.Kernel != ""
	case attrID:
		return d.ID, true
	case attrHostname:
		return f.Hostname, f.Hostname != ""
	case attrCores:
		return strconv.Itoa(f.CPUCores), true
	case attrMHz:
		return strconv.Itoa(f.CPUMHz), true
	case attrMemory:
		return strconv.Itoa(f.MemoryMB), true
	case attrLabel:
		v, ok := f.Labels[a.label]
		return v, ok
	}
	return "", false
}
