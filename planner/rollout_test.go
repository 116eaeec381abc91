package planner

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
)

var reportSeq atomic.Uint64

// report publishes a report of every allocation in d's desired document as
// running, with the health health(alloc) gives.
func (f *fixture) report(d protocol.Desired, health func(protocol.Allocation) protocol.Health) {
	f.t.Helper()
	rep := protocol.Reported{Device: d.Device, Epoch: "e", Seq: reportSeq.Add(1), ObservedGeneration: d.Generation, Time: time.Now()}
	for _, a := range d.Allocations {
		st := protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, State: protocol.AllocRunning}
		if a.Health != nil {
			st.Health = health(a)
		}
		rep.Allocations = append(rep.Allocations, st)
	}
	f.publish(f.topics.Reported(d.Device), rep)
}

func (f *fixture) desired(dev string) protocol.Desired {
	f.t.Helper()
	return wait(f, f.topics.Desired(dev), protocol.DecodeDesired, "desired for "+dev, func(protocol.Desired) bool { return true })
}

func image(d protocol.Desired) string {
	if len(d.Allocations) == 0 {
		return ""
	}
	return d.Allocations[0].Tasks[0].Config.Image
}

// syncDryRun asks for a dry run and waits for its answer: the planner has
// then applied every message published before.
func (f *fixture) syncDryRun(nonce string) {
	f.t.Helper()
	if err := f.obs.Publish(f.t.Context(), f.topics.Plan(nonce), []byte(webJob), false, 1); err != nil {
		f.t.Fatal(err)
	}
	wait(f, f.topics.PlanResult(nonce), protocol.DecodePlanResult, "a dry run's answer", func(protocol.PlanResult) bool { return true })
}

func healthy(protocol.Allocation) protocol.Health { return protocol.Healthy }

func rolloutJob(img, update string) string {
	return `{"id":"svc","type":"system","groups":[{"name":"g","update":` + update +
		`,"tasks":[{"name":"t","driver":"podman","config":{"image":"` + img + `"}}]}]}`
}

// reportAll reports every device's current desired document with health.
func (f *fixture) reportAll(devs []string, health func(protocol.Allocation) protocol.Health) {
	for _, d := range devs {
		f.report(f.desired(d), health)
	}
}

func TestRolloutFailsAndRevertsToStableVersion(t *testing.T) {
	f := newFixture(t)
	devs := []string{"a", "b", "c"}
	for _, d := range devs {
		f.device(d, 1000, 1024, nil)
	}
	f.startPlanner()
	update := `{"max_parallel":1,"auto_revert":true}`
	f.publish(f.topics.Job("svc"), rolloutJob("img:1", update))
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "3 placements", func(s protocol.JobStatus) bool { return s.Counts.Placed == 3 })
	for _, d := range devs {
		wait(f, f.topics.Desired(d), protocol.DecodeDesired, "v1 with a health policy", func(d protocol.Desired) bool {
			return len(d.Allocations) == 1 && d.Allocations[0].Health != nil
		})
	}
	f.reportAll(devs, healthy)
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "v1 rolled out", func(s protocol.JobStatus) bool {
		return s.Rollout != nil && s.Rollout.Version == 1 && s.Rollout.State == protocol.RolloutSuccessful
	})
	wait(f, f.topics.History("svc"), protocol.DecodeJobHistory, "v1 stable in the history", func(h protocol.JobHistory) bool {
		return len(h.Versions) == 1 && h.Versions[0].Stable
	})

	// Version 2 reaches one device at a time; the first one is unhealthy.
	f.publish(f.topics.Job("svc"), rolloutJob("img:2", update))
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "v2 rolling out", func(s protocol.JobStatus) bool {
		return s.Version == 2 && s.Rollout != nil && s.Rollout.Version == 2 && s.Rollout.Groups[0].Updated == 1
	})
	var updated []string
	for _, d := range devs {
		if image(f.desired(d)) == "img:2" {
			updated = append(updated, d)
		}
	}
	if len(updated) != 1 {
		t.Fatalf("max_parallel 1: %d devices got version 2 (%v)", len(updated), updated)
	}
	f.report(f.desired(updated[0]), func(protocol.Allocation) protocol.Health { return protocol.Unhealthy })

	// The rollout fails, and the planner republishes version 1's document,
	// which becomes version 3 and returns every device to img:1.
	wait(f, f.topics.History("svc"), protocol.DecodeJobHistory, "v2 failed and reverted", func(h protocol.JobHistory) bool {
		for _, v := range h.Versions {
			if v.Version == 2 {
				return v.Rollout != nil && v.Rollout.State == protocol.RolloutFailed && v.Rollout.RevertedTo == 1 && !v.Stable
			}
		}
		return false
	})
	st := wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "version 3", func(s protocol.JobStatus) bool { return s.Version == 3 })
	if st.Rollout == nil || st.Rollout.Version != 3 {
		t.Fatalf("the revert has no rollout: %+v", st)
	}
	// Devices report the revert healthy as it reaches them, one at a time.
	deadline := time.Now().Add(15 * time.Second)
	for {
		back := 0
		for _, d := range devs {
			if des := f.desired(d); image(des) == "img:1" && des.Allocations[0].JobVersion == 3 {
				back++
			}
		}
		if back == len(devs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d devices back on img:1 at version 3", back, len(devs))
		}
		f.reportAll(devs, healthy)
		time.Sleep(200 * time.Millisecond)
	}
	f.reportAll(devs, healthy)
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "the revert rolled out", func(s protocol.JobStatus) bool {
		return s.Rollout != nil && s.Rollout.Version == 3 && s.Rollout.State == protocol.RolloutSuccessful
	})
	// The retained document is the one in force.
	wait(f, f.topics.History("svc"), protocol.DecodeJobHistory, "v3 stable", func(h protocol.JobHistory) bool {
		return len(h.Versions) == 3 && h.Versions[0].Version == 3 && h.Versions[0].Stable && h.Versions[0].Job.Equal(h.Versions[2].Job)
	})
}

func TestCanaryRolloutWaitsForPromotion(t *testing.T) {
	f := newFixture(t)
	devs := []string{"a", "b", "c", "d"}
	for _, d := range devs {
		f.device(d, 1000, 1024, nil)
	}
	f.startPlanner()
	update := `{"max_parallel":2,"canary":1}`
	f.publish(f.topics.Job("svc"), rolloutJob("img:1", update))
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "4 placements", func(s protocol.JobStatus) bool { return s.Counts.Placed == 4 })
	f.reportAll(devs, healthy)
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "v1 rolled out", func(s protocol.JobStatus) bool {
		return s.Rollout != nil && s.Rollout.State == protocol.RolloutSuccessful
	})

	f.publish(f.topics.Job("svc"), rolloutJob("img:2", update))
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "one canary", func(s protocol.JobStatus) bool {
		return s.Version == 2 && s.Rollout != nil && s.Rollout.Version == 2 && s.Rollout.Groups[0].Updated == 1
	})
	f.reportAll(devs, healthy)
	st := wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "paused", func(s protocol.JobStatus) bool {
		return s.Rollout != nil && s.Rollout.State == protocol.RolloutPaused
	})
	if g := st.Rollout.Groups[0]; g.Updated != 1 || g.Healthy != 1 || g.Promoted {
		t.Fatalf("paused rollout: %+v", g)
	}
	// A promotion of another version is ignored. A dry run's answer comes
	// after the planner applied (and planned from) the promotion.
	raw, _ := protocol.Encode(protocol.Promote{Job: "svc", Version: 1})
	if err := f.obs.Publish(t.Context(), f.topics.Promote("svc"), raw, false, 1); err != nil {
		t.Fatal(err)
	}
	f.syncDryRun("sync1")
	if st := wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "status", func(protocol.JobStatus) bool { return true }); st.Rollout.State != protocol.RolloutPaused {
		t.Fatalf("a promotion of version 1 moved the rollout of version 2: %+v", st.Rollout)
	}

	raw, _ = protocol.Encode(protocol.Promote{Job: "svc", Version: 2})
	if err := f.obs.Publish(t.Context(), f.topics.Promote("svc"), raw, false, 1); err != nil {
		t.Fatal(err)
	}
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "promoted, 2 more updating", func(s protocol.JobStatus) bool {
		return s.Rollout != nil && s.Rollout.Groups[0].Promoted && s.Rollout.Groups[0].Updated == 3
	})
	for i := 0; i < 3; i++ {
		f.reportAll(devs, healthy)
		time.Sleep(100 * time.Millisecond)
	}
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "v2 rolled out", func(s protocol.JobStatus) bool {
		return s.Rollout != nil && s.Rollout.Version == 2 && s.Rollout.State == protocol.RolloutSuccessful
	})
}

func TestDryRunChangesNothing(t *testing.T) {
	f := newFixture(t)
	for _, d := range []string{"a", "b"} {
		f.device(d, 1000, 1024, nil)
	}
	f.startPlanner()
	f.publish(f.topics.Job("web"), webJob)
	wait(f, f.topics.JobStatus("web"), protocol.DecodeJobStatus, "3 placements", func(s protocol.JobStatus) bool { return s.Counts.Placed == 3 })
	statusN := f.count(f.topics.JobStatus("web"))

	ask := func(nonce, doc string) protocol.PlanResult {
		t.Helper()
		if err := f.obs.Publish(t.Context(), f.topics.Plan(nonce), []byte(doc), false, 1); err != nil {
			t.Fatal(err)
		}
		return wait(f, f.topics.PlanResult(nonce), protocol.DecodePlanResult, "the dry run's answer", func(protocol.PlanResult) bool { return true })
	}
	same := ask("n1", webJob)
	if !same.Unchanged || same.Version != 1 || len(same.Place)+len(same.Destructive)+len(same.InPlace)+len(same.Stop) != 0 {
		t.Errorf("the same document: %+v", same)
	}
	// Count 2 with a new image: one stop (count lowered), two destructive
	// updates.
	changed := ask("n2", strings.Replace(strings.Replace(webJob, `"count":3`, `"count":2`, 1), `"img"`, `"img2"`, 1))
	if changed.Unchanged || changed.Version != 2 || len(changed.Stop) != 1 || changed.Stop[0].Reason != "count lowered" || len(changed.Destructive) != 2 {
		t.Errorf("count 2, new image: %+v", changed)
	}
	bad := ask("n3", `{"id":"web","groups":[{"name":"g","tasks":[{"name":"t","driver":"dokcer"}]}]}`)
	if len(bad.Errors) == 0 || !slices.ContainsFunc(bad.Errors, func(e protocol.FieldError) bool { return e.Path == "groups[0].tasks[0].driver" }) {
		t.Errorf("invalid document: %+v", bad)
	}
	// Nothing was submitted.
	f.device("sentinel", 10, 10, nil)
	wait(f, f.topics.FleetSummary(), protocol.DecodeFleetSummary, "the sentinel", func(s protocol.FleetSummary) bool { return s.Devices.Total == 3 })
	if n := f.count(f.topics.JobStatus("web")); n != statusN {
		st := wait(f, f.topics.JobStatus("web"), protocol.DecodeJobStatus, "status", func(protocol.JobStatus) bool { return true })
		if st.Version != 1 {
			t.Errorf("a dry run changed the job: %+v", st)
		}
	}
}

func TestDrainMovesServiceAllocations(t *testing.T) {
	f := newFixture(t)
	f.device("a", 4000, 4096, nil)
	f.startPlanner()
	f.publish(f.topics.Job("web"), webJob)
	wait(f, f.topics.Desired("a"), protocol.DecodeDesired, "all 3 on a", func(d protocol.Desired) bool { return len(d.Allocations) == 3 })
	for _, d := range []string{"b", "c"} {
		f.device(d, 4000, 4096, nil)
	}
	f.publish(f.topics.Scheduling("a"), protocol.Scheduling{Device: "a", Drain: true})
	wait(f, f.topics.Desired("a"), protocol.DecodeDesired, "a drained", func(d protocol.Desired) bool { return len(d.Allocations) == 0 })
	wait(f, f.topics.JobStatus("web"), protocol.DecodeJobStatus, "3 placements elsewhere", func(s protocol.JobStatus) bool {
		if s.Counts.Placed != 3 {
			return false
		}
		for _, a := range s.Allocs {
			if a.Device == "a" {
				return false
			}
		}
		return true
	})
}

// A planner that restarts applies what arrived while it was down before it
// plans: a document the operator published meanwhile is not overwritten by
// an auto-revert planned from the stale store.
// askDuringCatchUp is the planner's own bus, which asks for a dry run just
// before the planner's catch-up barrier: the request arrives while the
// planner applies the retained state at start.
type askDuringCatchUp struct {
	*bus.Client
	topic, doc string
	once       sync.Once
}

func (b *askDuringCatchUp) Barrier(ctx context.Context, root string) error {
	var err error
	b.once.Do(func() { err = b.Publish(ctx, b.topic, []byte(b.doc), false, 1) })
	if err != nil {
		return err
	}
	return b.Client.Barrier(ctx, root)
}

// A dry run asked while the planner catches up after a start is answered
// although nothing else happens afterwards: after a restart under a quiet
// fleet, tether job plan waited for minutes.
func TestDryRunDuringCatchUpIsAnswered(t *testing.T) {
	f := newFixture(t)
	f.device("a", 1000, 1024, nil)
	f.startPlannerOn(&askDuringCatchUp{Client: f.dial(), topic: f.topics.Plan("at-start"), doc: webJob})
	res := wait(f, f.topics.PlanResult("at-start"), protocol.DecodePlanResult, "the dry run's answer", func(protocol.PlanResult) bool { return true })
	if len(res.Place) == 0 {
		t.Errorf("dry run of a new job places nothing: %+v", res)
	}
}

func TestRestartAppliesRetainedStateBeforePlanning(t *testing.T) {
	f := newFixture(t)
	devs := []string{"a", "b"}
	for _, d := range devs {
		f.device(d, 1000, 1024, nil)
	}
	f.startPlanner()
	update := `{"max_parallel":1,"auto_revert":true,"min_healthy_time":"100ms","healthy_deadline":"500ms","progress_deadline":"1s"}`
	f.publish(f.topics.Job("svc"), rolloutJob("img:1", update))
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "2 placements", func(s protocol.JobStatus) bool { return s.Counts.Placed == 2 })
	f.reportAll(devs, healthy)
	wait(f, f.topics.History("svc"), protocol.DecodeJobHistory, "v1 stable", func(h protocol.JobHistory) bool { return len(h.Versions) == 1 && h.Versions[0].Stable })
	f.publish(f.topics.Job("svc"), rolloutJob("img:2", update))
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "v2 on one device", func(s protocol.JobStatus) bool {
		return s.Rollout != nil && s.Rollout.Version == 2 && s.Rollout.Groups[0].Updated == 1
	})
	f.stopPlanner()

	// The planner stays down past the progress deadline, and the operator
	// publishes version 3 meanwhile. Planned from the store alone, version
	// 2 would fail and revert over version 3.
	time.Sleep(1500 * time.Millisecond)
	f.publish(f.topics.Job("svc"), rolloutJob("img:9", `{"max_parallel":1}`))
	f.startPlanner()
	wait(f, f.topics.JobStatus("svc"), protocol.DecodeJobStatus, "version 3 in force", func(s protocol.JobStatus) bool { return s.Version == 3 })
	f.syncDryRun("after-restart")
	h := wait(f, f.topics.History("svc"), protocol.DecodeJobHistory, "the history", func(h protocol.JobHistory) bool { return h.Versions[0].Version == 3 })
	if len(h.Versions) != 3 || h.Versions[0].Job.Groups[0].Tasks[0].Config.Image != "img:9" {
		t.Fatalf("the operator's version 3 must stay in force: %+v", h.Versions[0])
	}
}
