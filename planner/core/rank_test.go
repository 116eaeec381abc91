package core

import (
	"math"
	"testing"
)

func TestBinPackScore(t *testing.T) {
	t.Parallel()
	c := resources{CPU: 1000, Memory: 1000}
	tests := []struct {
		name string
		used resources
		want float64
	}{
		{"full", resources{1000, 1000}, 18},
		{"empty", resources{0, 0}, 0},
		{"half", resources{500, 500}, 20 - 2*math.Sqrt(10)},
		{"cpu full memory empty", resources{1000, 0}, 20 - 1 - 10},
	}
	for _, tt := range tests {
		if got := binPackScore(c, tt.used); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("%s: score = %v, want %v", tt.name, got, tt.want)
		}
	}
	if got := binPackScore(resources{}, resources{}); got != 18 {
		t.Errorf("zero capacity: score = %v, want 18 (counted as full)", got)
	}
	if binPackScore(c, resources{600, 600}) <= binPackScore(c, resources{500, 600}) {
		t.Error("a fuller device must score higher")
	}
}

func TestFitReason(t *testing.T) {
	t.Parallel()
	c := resources{CPU: 1000, Memory: 512}
	tests := []struct {
		used, want resources
		reason     string
	}{
		{resources{900, 500}, resources{100, 12}, ""},
		{resources{900, 500}, resources{101, 12}, "exhausted cpu"},
		{resources{900, 500}, resources{100, 13}, "exhausted memory"},
		{resources{900, 500}, resources{200, 200}, "exhausted cpu"}, // cpu is checked first
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
