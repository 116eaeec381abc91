package core

import (
	"strconv"
	"strings"

	"github.com/tether-edge/tether/protocol"
)

// checker is one feasibility check, in the manner of Nomad's
// FeasibilityChecker: it looks at one device for one group and returns "" when
// the device qualifies, else the reason it does not. Reasons are aggregated
// into GroupStatus.Unplaced, so they must be short and stable.
type checker interface {
	check(d *Device, g *protocol.Group) string
}

// Reasons given by the checkers other than constraints (whose reason is the
// constraint's String form) and by the resource check.
const (
	reasonNoFacts   = "no facts yet"
	reasonOffline   = "offline"
	reasonNoDriver  = "lack driver "
	reasonNoCPU     = "exhausted cpu"
	reasonNoMemory  = "exhausted memory"
	constraintLabel = "constraint "
)

// hasFacts rejects devices that never published their facts: nothing is known
// of what they can run.
type hasFacts struct{}

func (hasFacts) check(d *Device, _ *protocol.Group) string {
	if !d.HasFacts {
		return reasonNoFacts
	}
	return ""
}

// isOnline rejects devices that are not connected. It only applies to new
// placements: allocations already on an offline device are kept.
type isOnline struct{}

func (isOnline) check(d *Device, _ *protocol.Group) string {
	if d.Presence != protocol.Online {
		return reasonOffline
	}
	return ""
}

// hasDrivers rejects devices missing the driver of any task, naming the first
// missing one in task order.
type hasDrivers struct{}

func (hasDrivers) check(d *Device, g *protocol.Group) string {
	for _, t := range g.Tasks {
		if !d.Facts.HasDriver(t.Driver) {
			return reasonNoDriver + t.Driver
		}
	}
	return ""
}

// meetsConstraints rejects devices failing any of the group's constraints,
// naming the first failing one in document order.
type meetsConstraints struct{}

func (meetsConstraints) check(d *Device, g *protocol.Group) string {
	for _, c := range g.Constraints {
		if !constraintHolds(d, c) {
			return constraintLabel + c.String()
		}
	}
	return ""
}

// Checker chains. placeChecks decide where new allocations may go;
// keepChecks decide whether an existing allocation may stay, which is the
// same minus presence: allocations on offline devices are never moved in this
// version.
var (
	placeChecks = []checker{hasFacts{}, isOnline{}, hasDrivers{}, meetsConstraints{}}
	keepChecks  = []checker{hasFacts{}, hasDrivers{}, meetsConstraints{}}
)

// infeasible runs a chain and returns the first reason, or "" when the device
// passes every check.
func infeasible(chain []checker, d *Device, g *protocol.Group) string {
	for _, c := range chain {
		if r := c.check(d, g); r != "" {
			return r
		}
	}
	return ""
}

// constraintHolds evaluates one constraint against a device. An unknown
// attribute or operator never holds (validated jobs have neither). A missing
// label reads as the empty string, so "=" fails and "!=" holds.
func constraintHolds(d *Device, c protocol.Constraint) bool {
	v, ok := attribute(d, c.Attribute)
	if !ok {
		return false
	}
	switch c.Operator {
	case "", "=", "==":
		return v == c.Value
	case "!=":
		return v != c.Value
	default:
		return false
	}
}

// attribute resolves a ${device.*} attribute. ok is false when the attribute
// is unknown.
func attribute(d *Device, attr string) (value string, ok bool) {
	name, ok := strings.CutPrefix(attr, "${device.")
	if !ok {
		return "", false
	}
	name, ok = strings.CutSuffix(name, "}")
	if !ok {
		return "", false
	}
	f := &d.Facts
	switch name {
	case "arch":
		return f.Arch, true
	case "os":
		return f.OS, true
	case "kernel":
		return f.Kernel, true
	case "id":
		return d.ID, true
	case "hostname":
		return f.Hostname, true
	case "cpu.cores":
		return strconv.Itoa(f.CPUCores), true
	case "cpu.mhz":
		return strconv.Itoa(f.CPUMHz), true
	case "memory":
		return strconv.Itoa(f.MemoryMB), true
	}
	if key, ok := strings.CutPrefix(name, "labels."); ok && key != "" {
		return f.Labels[key], true
	}
	return "", false
}
