package core

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

func withUpdate(u protocol.Update) groupOpt { return func(g *protocol.Group) { g.Update = &u } }

func withHealth(a Alloc, h protocol.Health) devOpt {
	return func(d *Device) {
		if d.Reported == nil {
			d.Reported = map[string]protocol.AllocStatus{}
		}
		d.Reported[a.ID] = protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, State: protocol.AllocRunning, Health: h}
	}
}

// rolloutWorld is version 1 of a system job on devices a, b and c, healthy,
// and version 2 (new image) in force, with the given update block.
func rolloutWorld(jt protocol.JobType, u protocol.Update) (Snapshot, Job) {
	v1 := job("web", typ(jt), groups(group("g", withUpdate(u))))
	v2 := job("web", typ(jt), version(2), groups(group("g", withUpdate(u), tasks(task("t", "exec", 100, 64)))))
	var s Snapshot
	for _, id := range []string{"a", "b", "c"} {
		a := allocOf(v1, "g", 0, id)
		s.Devices = append(s.Devices, dev(id, withHealth(a, protocol.Healthy)))
		s.Allocations = append(s.Allocations, a)
	}
	s.Jobs = []Job{v2}
	return s, v2
}

func TestRolloutDoesNotModifyItsInput(t *testing.T) {
	t.Parallel()
	s, _ := rolloutWorld(protocol.JobSystem, protocol.Update{Canary: 1, AutoPromote: true})
	s.Jobs[0].Rollout = &protocol.Rollout{Version: 2, State: protocol.RolloutRunning, StartedAt: t0, ProgressAt: t0,
		Groups: []protocol.RolloutGroup{{Name: "g", Canaries: 1}}}
	orig := Snapshot{Jobs: slices.Clone(s.Jobs), Devices: slices.Clone(s.Devices), Allocations: slices.Clone(s.Allocations)}
	in := *s.Jobs[0].Rollout
	in.Groups = slices.Clone(in.Groups)
	p := Compute(s, t0.Add(time.Minute))
	if !reflect.DeepEqual(s, orig) || !reflect.DeepEqual(*s.Jobs[0].Rollout, in) {
		t.Error("Compute modified its snapshot")
	}
	if q := Compute(orig, t0.Add(time.Minute)); !reflect.DeepEqual(p, q) {
		t.Error("Compute is not deterministic")
	}
}

// Validation refuses update blocks on batch and sysbatch jobs; the core
// ignores them: every allocation is updated at once, and there is no
// rollout.
func TestRolloutIgnoredForRunToCompletion(t *testing.T) {
	t.Parallel()
	s, _ := rolloutWorld(protocol.JobSysBatch, protocol.Update{MaxParallel: 1})
	p := Compute(s, t0)
	if got := outcomeOf(p); got.Update != "web.g.0@a web.g.0@b web.g.0@c" {
		t.Errorf("outcome %+v", got)
	}
	if p.Rollouts != nil || p.Deferred != nil {
		t.Errorf("rollouts %+v, deferred %+v", p.Rollouts, p.Deferred)
	}
}

// Failed and successful are final for a version: a failed rollout updates
// nothing destructively, a successful one stays successful whatever the
// verdicts say now.
func TestRolloutFinalStates(t *testing.T) {
	t.Parallel()
	for _, state := range []protocol.RolloutState{protocol.RolloutFailed, protocol.RolloutSuccessful} {
		s, _ := rolloutWorld(protocol.JobSystem, protocol.Update{MaxParallel: 3})
		s.Jobs[0].Rollout = &protocol.Rollout{Version: 2, State: state, Description: "before", StartedAt: t0, ProgressAt: t0,
			Groups: []protocol.RolloutGroup{{Name: "g"}}}
		p := Compute(s, t0.Add(time.Hour))
		r := p.Rollouts["web"]
		if r.State != state || r.Description != "before" || !r.ProgressAt.Equal(t0) {
			t.Errorf("%s: rollout %+v", state, r)
		}
		switch got := outcomeOf(p); state {
		case protocol.RolloutFailed:
			if got.Update != "" || len(p.Deferred) != 3 || p.Deferred[0].Reason != reasonRolloutFailed {
				t.Errorf("failed: outcome %+v, deferred %+v", got, p.Deferred)
			}
		default:
			if got.Update != "web.g.0@a web.g.0@b web.g.0@c" {
				t.Errorf("successful: outcome %+v", got)
			}
		}
		if !p.NextEval.IsZero() {
			t.Errorf("%s: next eval %s", state, p.NextEval)
		}
	}
}

// With several groups rolling out, descriptions name the group; the first
// group (in document order) crossing its threshold fails the job's rollout,
// and no group updates anything more.
func TestRolloutSeveralGroups(t *testing.T) {
	t.Parallel()
	strict := protocol.Update{MaxParallel: 2}
	lenient := protocol.Update{MaxParallel: 2, Abort: &protocol.Abort{FailureRatio: 0.5, MinDevices: 2}}
	v1 := job("web", groups(group("a", count(2), withUpdate(lenient)), group("b", count(2), withUpdate(strict))))
	v2 := job("web", version(2), groups(
		group("a", count(2), withUpdate(lenient), tasks(task("t", "exec", 100, 64))),
		group("b", count(2), withUpdate(strict), tasks(task("t", "exec", 100, 64)))))
	// Half of each group runs version 2, one of them unhealthy.
	var allocs []Alloc
	d := dev("d")
	for _, g := range []string{"a", "b"} {
		old, cur := allocOf(v1, g, 0, "d"), allocOf(v2, g, 1, "d")
		allocs = append(allocs, old, cur)
		withHealth(old, protocol.Healthy)(&d)
		withHealth(cur, protocol.Unhealthy)(&d)
	}
	p := Compute(Snapshot{Jobs: []Job{v2}, Devices: []Device{d}, Allocations: allocs}, t0)
	r := p.Rollouts["web"]
	want := "group b: 1 of 1 updated allocations unhealthy (abort above 0%)"
	if r.State != protocol.RolloutFailed || r.Description != want {
		t.Errorf("rollout %s: %q, want failed: %q", r.State, r.Description, want)
	}
	if got := outcomeOf(p); got.Update != "" || len(p.Deferred) != 2 {
		t.Errorf("outcome %+v, deferred %+v", got, p.Deferred)
	}
	if len(r.Groups) != 2 || r.Groups[0].Name != "a" || r.Groups[1].Unhealthy != 1 {
		t.Errorf("groups %+v", r.Groups)
	}
}

func TestAbortThreshold(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		abort *protocol.Abort
		want  string
	}{
		{nil, "abort above 0%"},
		{&protocol.Abort{FailureRatio: 0.1}, "abort above 10%"},
		{&protocol.Abort{FailureRatio: 0.125, MinDevices: 8}, "abort above 12.5% once 8 are updated"},
	} {
		pol, _ := protocol.Group{Update: &protocol.Update{Abort: tt.abort}}.UpdatePolicy()
		if got := abortThreshold(pol); got != tt.want {
			t.Errorf("%+v: %q, want %q", tt.abort, got, tt.want)
		}
	}
}
