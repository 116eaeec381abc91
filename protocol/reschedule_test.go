package protocol

import (
	"testing"
	"time"
)

func TestReschedulePolicy(t *testing.T) {
	g := Group{Name: "g"}
	if _, ok := g.ReschedulePolicy(JobSystem); ok {
		t.Error("system allocations are bound to their device")
	}
	if _, ok := g.ReschedulePolicy(JobBatch); ok {
		t.Error("batch groups without the block must not reschedule")
	}
	p, ok := g.ReschedulePolicy(JobService)
	if !ok || !p.Unlimited || p.Delay != 30*time.Second || !p.Exponential || p.MaxDelay != time.Hour {
		t.Errorf("service default: %+v %v", p, ok)
	}
	for prev, want := range []time.Duration{30 * time.Second, time.Minute, 2 * time.Minute, 4 * time.Minute} {
		if got := p.DelayAfter(prev); got != want {
			t.Errorf("delay after %d: %s, want %s", prev, got, want)
		}
	}
	if got := p.DelayAfter(40); got != time.Hour {
		t.Errorf("delay after 40: %s, want the 1h cap", got)
	}
	g.Reschedule = &Reschedule{Attempts: 2, Interval: Duration(10 * time.Minute), Delay: Duration(5 * time.Second), DelayFunction: DelayConstant}
	p, ok = g.ReschedulePolicy(JobBatch)
	if !ok || p.Unlimited || p.Exponential || p.DelayAfter(3) != 5*time.Second {
		t.Errorf("constant policy: %+v %v", p, ok)
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	if !p.Allows([]time.Time{now.Add(-time.Minute)}, now) {
		t.Error("1 attempt of 2 in the window: must allow")
	}
	if p.Allows([]time.Time{now.Add(-time.Minute), now.Add(-2 * time.Minute)}, now) {
		t.Error("2 attempts of 2 in the window: must refuse")
	}
	if !p.Allows([]time.Time{now.Add(-time.Minute), now.Add(-20 * time.Minute)}, now) {
		t.Error("an attempt outside the interval does not count")
	}
	g.Reschedule = &Reschedule{}
	if _, ok := g.ReschedulePolicy(JobService); ok {
		t.Error("attempts 0 without unlimited means never")
	}
}

func TestRescheduleValidation(t *testing.T) {
	for _, c := range []struct {
		doc  string
		want []string
	}{
		{`{"id":"x","groups":[{"name":"g","reschedule":{"attempts":3,"interval":"1h","delay":"10s","delay_function":"constant","max_delay":"5m"},"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`, nil},
		{`{"id":"x","groups":[{"name":"g","reschedule":{"attempts":-1,"delay":"10m","max_delay":"1m","delay_function":"fibonacci"},"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`, []string{
			"groups[0].reschedule.attempts: want 0 or more, got -1",
			"groups[0].reschedule.max_delay: want at least delay (10m0s), got 1m0s",
			`groups[0].reschedule.delay_function: unknown function "fibonacci", want exponential or constant`,
		}},
		{`{"id":"x","type":"system","groups":[{"name":"g","reschedule":{"unlimited":true},"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`, []string{
			"groups[0].reschedule: not used by system jobs, whose allocations are bound to their device",
		}},
		{`{"id":"x","groups":[{"name":"g","reschedule":{"unlimited":true,"attempts":2},"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`, []string{
			"groups[0].reschedule.attempts: not used with unlimited: true",
		}},
	} {
		checkFieldErrors(t, c.doc, c.want)
	}
}
