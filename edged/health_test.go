package edged

import (
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

// TestJudge is the table of the pure health judgement: a policy of 10s
// min_healthy_time and a 1m deadline, judged from t0 when edged began
// applying the version.
func TestJudge(t *testing.T) {
	pol := protocol.HealthPolicy{MinHealthyTime: protocol.Duration(10 * time.Second), HealthyDeadline: protocol.Duration(time.Minute)}
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	running := func(name, inc string, since time.Duration) taskSeen {
		return taskSeen{Name: name, State: protocol.TaskRunning, Incarnation: inc, Since: at(since)}
	}
	// base is a judgement begun at t0 with task a running as "i1" and
	// task b not yet started.
	base := healthRecord{JobVersion: 2, Began: t0, Tasks: map[string]healthTask{"a": {Incarnation: "i1"}, "b": {}}}
	cases := []struct {
		name   string
		h      healthRecord
		typ    protocol.JobType
		seen   []taskSeen
		now    time.Duration
		health protocol.Health
		reason string        // a part of the reason, when decided
		wake   time.Duration // when undecided
	}{
		{name: "running from before began: counts from began", seen: []taskSeen{running("a", "i1", -time.Hour), running("b", "i2", 0)},
			now: 5 * time.Second, wake: 10 * time.Second},
		{name: "min_healthy_time since began reached", seen: []taskSeen{running("a", "i1", -time.Hour), running("b", "i2", 0)},
			now: 10 * time.Second, health: protocol.Healthy, reason: "every task running for min_healthy_time 10s"},
		{name: "started after began: counts from its start", seen: []taskSeen{running("a", "i1", -time.Hour), running("b", "i2", 3*time.Second)},
			now: 12 * time.Second, wake: 13 * time.Second},
		{name: "a task not started: wait for the deadline", seen: []taskSeen{running("a", "i1", 0), {Name: "b", State: protocol.TaskPending}},
			now: 30 * time.Second, wake: time.Minute},
		{name: "deadline with a task never started", seen: []taskSeen{running("a", "i1", 0), {Name: "b", State: protocol.TaskPending}},
			now: time.Minute, health: protocol.Unhealthy, reason: "not healthy within healthy_deadline 1m0s: task b pending"},
		{name: "deadline before min_healthy_time elapses", seen: []taskSeen{running("a", "i1", 0), running("b", "i2", 55*time.Second)},
			now: 59 * time.Second, wake: time.Minute},
		{name: "deadline passed while running too briefly", seen: []taskSeen{running("a", "i1", 0), running("b", "i2", 55*time.Second)},
			now: 2 * time.Minute, health: protocol.Unhealthy, reason: "tasks running for less than min_healthy_time 10s"},
		{name: "a late look: healthy before the deadline counts", seen: []taskSeen{running("a", "i1", 0), running("b", "i2", 5*time.Second)},
			now: time.Hour, health: protocol.Healthy},
		{name: "restart count rose", seen: []taskSeen{running("a", "i1", 0), {Name: "b", State: protocol.TaskRestarting, Restarts: 1, Message: "exited with code 1"}},
			now: 2 * time.Second, health: protocol.Unhealthy, reason: "task b restarted (exited with code 1) before min_healthy_time 10s"},
		{name: "another instance runs", seen: []taskSeen{running("a", "i9", 1*time.Second), running("b", "i2", 0)},
			now: 2 * time.Second, health: protocol.Unhealthy, reason: "task a restarted: another instance replaced the one running"},
		{name: "failed", seen: []taskSeen{running("a", "i1", 0), {Name: "b", State: protocol.TaskFailed, Restarts: 0, Message: "exited with code 2"}},
			now: 2 * time.Second, health: protocol.Unhealthy, reason: "task b failed (exited with code 2)"},
		{name: "decided stays decided", h: healthRecord{JobVersion: 2, Began: t0, Health: protocol.Healthy, Reason: "r", Tasks: base.Tasks},
			seen: []taskSeen{{Name: "a", State: protocol.TaskFailed, Restarts: 5}, {Name: "b", State: protocol.TaskPending}},
			now:  time.Hour, health: protocol.Healthy, reason: "r"},
		{name: "run to completion: complete is healthy", typ: protocol.JobBatch,
			seen: []taskSeen{{Name: "a", State: protocol.TaskComplete}, {Name: "b", State: protocol.TaskComplete}},
			now:  time.Second, health: protocol.Healthy, reason: "complete"},
		{name: "run to completion: the running task still needs its time", typ: protocol.JobBatch,
			seen: []taskSeen{{Name: "a", State: protocol.TaskComplete}, running("b", "i2", 0)},
			now:  time.Second, wake: 10 * time.Second},
		{name: "complete does not count for a service", seen: []taskSeen{{Name: "a", State: protocol.TaskComplete}, running("b", "i2", 0)},
			now: 20 * time.Second, wake: time.Minute},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := c.h
			if h.Tasks == nil {
				h = base
			}
			typ := c.typ
			if typ == "" {
				typ = protocol.JobService
			}
			got, wake := judge(h, pol, typ, c.seen, at(c.now))
			if got.Health != c.health {
				t.Fatalf("health %q (%s), want %q", got.Health, got.Reason, c.health)
			}
			if c.health != "" {
				if !wake.IsZero() {
					t.Errorf("decided, but wake at %v", wake.Sub(t0))
				}
				if !strings.Contains(got.Reason, c.reason) {
					t.Errorf("reason %q, want it to say %q", got.Reason, c.reason)
				}
				return
			}
			if !wake.Equal(at(c.wake)) {
				t.Errorf("wake at %v, want %v", wake.Sub(t0), c.wake)
			}
		})
	}
}

// TestJudgeNotesInstancesAndIsPure: the first instance of a task that was
// not running when the judgement began is not a restart but becomes the
// one a later instance is measured against; the caller's record is not
// changed.
func TestJudgeNotesInstancesAndIsPure(t *testing.T) {
	pol := protocol.HealthPolicy{MinHealthyTime: protocol.Duration(10 * time.Second), HealthyDeadline: protocol.Duration(time.Minute)}
	h := newHealthRecord(1, t0, []taskSeen{{Name: "a"}})
	next, wake := judge(h, pol, protocol.JobService, []taskSeen{{Name: "a", State: protocol.TaskRunning, Incarnation: "i1", Since: t0.Add(time.Second)}}, t0.Add(2*time.Second))
	if next.Health != "" || !wake.Equal(t0.Add(11*time.Second)) || next.Tasks["a"].Incarnation != "i1" {
		t.Fatalf("first start: %+v wake %v", next, wake)
	}
	if h.Tasks["a"].Incarnation != "" {
		t.Fatalf("judge changed its input: %+v", h)
	}
	again, _ := judge(next, pol, protocol.JobService, []taskSeen{{Name: "a", State: protocol.TaskRunning, Incarnation: "i2", Since: t0.Add(3 * time.Second)}}, t0.Add(4*time.Second))
	if again.Health != protocol.Unhealthy {
		t.Fatalf("a second instance is a restart: %+v", again)
	}
}

// TestJudgeDefaults: a policy without durations gets protocol's defaults.
func TestJudgeDefaults(t *testing.T) {
	h := newHealthRecord(1, t0, []taskSeen{{Name: "a"}})
	seen := []taskSeen{{Name: "a", State: protocol.TaskRunning, Incarnation: "i", Since: t0}}
	if _, wake := judge(h, protocol.HealthPolicy{}, protocol.JobService, seen, t0); !wake.Equal(t0.Add(protocol.DefaultMinHealthyTime)) {
		t.Fatalf("wake %v, want min_healthy_time %v", wake.Sub(t0), protocol.DefaultMinHealthyTime)
	}
	pending := []taskSeen{{Name: "a", State: protocol.TaskPending}}
	if _, wake := judge(h, protocol.HealthPolicy{}, protocol.JobService, pending, t0); !wake.Equal(t0.Add(protocol.DefaultHealthyDeadline)) {
		t.Fatalf("wake %v, want healthy_deadline %v", wake.Sub(t0), protocol.DefaultHealthyDeadline)
	}
}

// TestStartedOnMonotonic: a start time in whole seconds is taken as the
// next second, so that health is never judged early; a precise one is kept.
func TestStartedOnMonotonic(t *testing.T) {
	now := time.Now()
	precise := now.Add(-1500 * time.Millisecond).Round(0)
	if precise.Nanosecond() == 0 {
		precise = precise.Add(time.Millisecond)
	}
	if got := now.Sub(startedOnMonotonic(precise, now)); got != now.Round(0).Sub(precise) {
		t.Errorf("precise start %v ago, want %v", got, now.Round(0).Sub(precise))
	}
	whole := now.Add(-5 * time.Second).Truncate(time.Second)
	if got, want := now.Sub(startedOnMonotonic(whole, now)), now.Round(0).Sub(whole)-time.Second; got != want {
		t.Errorf("whole-second start %v ago, want %v", got, want)
	}
	if got := startedOnMonotonic(time.Time{}, now); !got.Equal(now) {
		t.Errorf("unknown start: %v, want now", got)
	}
}

// TestSuspendedNotJudged: while stop_after keeps an allocation stopped it
// gets no verdict, and the instance started when it resumes is not taken
// for a restart.
func TestSuspendedNotJudged(t *testing.T) {
	a := svcTask("a")
	d := desiredWith(protocol.JobService, a)
	d.Allocations[0].Health = &protocol.HealthPolicy{MinHealthyTime: protocol.Duration(time.Hour), HealthyDeadline: protocol.Duration(2 * time.Hour)}
	id := d.Allocations[0].ID
	k := taskKey(id, "a")
	recs := map[string]taskRecord{k: {SpecHash: instanceHash(d.Allocations[0], a), JobVersion: 1}}
	ag := &Agent{health: map[string]healthRecord{}, since: map[string]time.Time{}}
	first := inst(a, driver.StateRunning, 0)
	ag.beginHealth(d, []observed{first}, recs, time.Now())
	if got := ag.health[id].Tasks["a"].Incarnation; got != incarnation(first.Instance) {
		t.Fatalf("baseline instance %q, want the running one", got)
	}
	allocs := buildReport(d, nil, recs, listed, listed, time.Now())
	evs, wake := ag.judgeHealth(d, allocs, nil, recs, map[string]string{id: "stopped: no server"})
	if len(evs) != 0 || !wake.IsZero() || allocs[0].Health != "" || ag.health[id].Tasks["a"].Incarnation != "" {
		t.Fatalf("suspended: events %+v wake %v health %q record %+v", evs, wake, allocs[0].Health, ag.health[id])
	}
	second := first
	second.ID, second.StartedAt = "c-a2", time.Now()
	allocs = buildReport(d, []observed{second}, recs, listed, listed, time.Now())
	evs, wake = ag.judgeHealth(d, allocs, []observed{second}, recs, nil)
	if len(evs) != 0 || wake.IsZero() || allocs[0].Health != "" {
		t.Fatalf("resumed: events %+v wake %v health %q (%s)", evs, wake, allocs[0].Health, ag.health[id].Reason)
	}
}
