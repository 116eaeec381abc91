package core

import (
	"math"
	"testing"

	"github.com/tether-edge/tether/protocol"
)

func TestBinPackScore(t *testing.T) {
	t.Parallel()
	c := resources{CPU: 1000, Memory: 1000}
	tests := []struct {
		name string
		used resources
		want float64
	}{
		{"full", resources{CPU: 1000, Memory: 1000}, 18},
		{"empty", resources{CPU: 0, Memory: 0}, 0},
		{"half", resources{CPU: 500, Memory: 500}, 20 - 2*math.Sqrt(10)},
		{"cpu full memory empty", resources{CPU: 1000, Memory: 0}, 20 - 1 - 10},
	}
	for _, tt := range tests {
		if got := binPackScore(c, tt.used); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: score = %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := binPackScore(resources{}, resources{}); got != 18 {
		t.Errorf("zero capacity: score = %v, want 18 (counted as full)", got)
	}
	if binPackScore(c, resources{CPU: 600, Memory: 600}) <= binPackScore(c, resources{CPU: 500, Memory: 600}) {
		t.Error("a fuller device must score higher")
	}
}

func TestFitReason(t *testing.T) {
	t.Parallel()
	c := resources{CPU: 1000, Memory: 512, Disk: 1000}
	tests := []struct {
		used, want resources
		reason     string
	}{
		{resources{CPU: 900, Memory: 500}, resources{CPU: 100, Memory: 12}, ""},
		{resources{CPU: 900, Memory: 500}, resources{CPU: 101, Memory: 12}, "exhausted cpu"},
		{resources{CPU: 900, Memory: 500}, resources{CPU: 100, Memory: 13}, "exhausted memory"},
		{resources{CPU: 900, Memory: 500}, resources{CPU: 200, Memory: 200}, "exhausted cpu"}, // cpu is checked first
		{resources{CPU: 900, Memory: 500, Disk: 1000}, resources{CPU: 100, Memory: 12, Disk: 1}, "exhausted disk"},
		{resources{CPU: 900, Memory: 500, Disk: 999}, resources{CPU: 100, Memory: 12, Disk: 1}, ""},
		{resources{}, resources{}, ""},
	}
	for _, tt := range tests {
		if got := fitReason(c, tt.used, tt.want); got != tt.reason {
			t.Errorf("fitReason(%v + %v) = %q, want %q", tt.used, tt.want, got, tt.reason)
		}
	}
}

func TestUnplacedMessageFormat(t *testing.T) {
	t.Parallel()
	tests := []struct {
		unplaced, desired int
		s                 survey
		want              string
	}{
		{2, 3, survey{devices: 3, filtered: map[string]int{"lack driver podman": 2, "constraint ${device.arch} = arm64": 1}},
			"2 of 3 instances unplaced: 0 of 3 devices feasible: 2 lack driver podman, 1 constraint ${device.arch} = arm64"},
		{1, 3, survey{devices: 3, feasible: 1, filtered: map[string]int{"offline": 2}, exhausted: map[string]int{"exhausted memory": 1}},
			"1 of 3 instances unplaced: 1 of 3 devices feasible: 2 offline; 1 exhausted memory"},
		{1, 1, survey{devices: 2, feasible: 2, exhausted: map[string]int{"exhausted memory": 1, "exhausted cpu": 1}},
			"1 of 1 instances unplaced: 2 of 2 devices feasible: 1 exhausted cpu, 1 exhausted memory"},
		{1, 1, survey{}, "1 of 1 instances unplaced: 0 of 0 devices feasible"},
		// Equal counts sort by text.
		{4, 4, survey{devices: 4, filtered: map[string]int{"offline": 1, "no facts yet": 1, "lack driver exec": 2}},
			"4 of 4 instances unplaced: 0 of 4 devices feasible: 2 lack driver exec, 1 no facts yet, 1 offline"},
	}
	for _, tt := range tests {
		if got := unplacedMessage(tt.unplaced, tt.desired, tt.s); got != tt.want {
			t.Errorf("got  %q\nwant %q", got, tt.want)
		}
	}
}

func TestAffinityScore(t *testing.T) {
	t.Parallel()
	g := group("g", func(g *protocol.Group) {
		g.Affinities = []protocol.Affinity{
			{Attribute: "${device.labels.site}", Operator: "=", Value: "berlin", Weight: 50},
			{Attribute: "${device.labels.power}", Operator: "=", Value: "battery", Weight: -100},
			{Attribute: "${device.cpu.cores}", Operator: ">=", Value: "4", Weight: 50},
		}
	})
	spec := compileGroup(&g)
	for _, tt := range []struct {
		dev  Device
		want float64
	}{
		{dev("a", withCores(2)), 0},
		{dev("a", withCores(8)), 50.0 / 200},
		{dev("a", withLabels("site", "berlin")), 100.0 / 200},
		{dev("a", withLabels("site", "berlin", "power", "battery")), 0},
		{dev("a", withCores(1), withLabels("power", "battery")), -100.0 / 200},
	} {
		if got := affinityScore(&tt.dev, spec); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("%v %v: score %v, want %v", tt.dev.Facts.Labels, tt.dev.Facts.CPUCores, got, tt.want)
		}
	}
	if got := affinityScore(&Device{}, compileGroup(&protocol.Group{})); got != 0 {
		t.Errorf("no affinities: %v", got)
	}
}

func TestSpreadScore(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name          string
		targeted, set bool
		count         int
		desired       float64
		lo, hi        int
		want          float64
	}{
		{"no attribute", false, false, 0, 0, 0, 0, -1},
		{"target far from met", true, true, 0, 10, 0, 0, 0.9},
		{"target met by this one", true, true, 9, 10, 0, 0, 0},
		{"target exceeded", true, true, 12, 10, 0, 0, -0.3},
		{"target exceeded a lot is -1", true, true, 40, 10, 0, 0, -1},
		{"nothing desired", true, true, 0, 0, 0, 0, -1},
		{"even: at the minimum", false, true, 2, 0, 2, 6, 1},
		{"even: at the maximum", false, true, 6, 0, 2, 6, -1},
		{"even: halfway", false, true, 4, 0, 2, 6, 0},
		{"even: all equal", false, true, 3, 0, 3, 3, 0},
	} {
		if got := spreadScore(tt.targeted, tt.set, tt.count, tt.desired, tt.lo, tt.hi); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Scores sum exactly: a device's key is the sum of its scorers' quantized
// scores, whatever the order they are added in.
func TestQuantize(t *testing.T) {
	t.Parallel()
	if quantize(1) != scoreScale || quantize(-0.5) != -scoreScale/2 || quantize(0) != 0 {
		t.Error("quantize")
	}
	c := resources{CPU: 4000, Memory: 4096}
	if k := binPackKey(c, resources{CPU: 4000, Memory: 4096}); k != scoreScale {
		t.Errorf("full device key %d, want %d", k, int64(scoreScale))
	}
	m := binPackMemo{}
	for range 2 {
		if m.key(c, resources{CPU: 100, Memory: 64}) != binPackKey(c, resources{CPU: 100, Memory: 64}) {
			t.Error("memo differs")
		}
	}
}
