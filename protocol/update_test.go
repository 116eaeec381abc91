package protocol

import (
	"strconv"
	"testing"
	"time"
)

func TestUpdatePolicyDefaults(t *testing.T) {
	j, err := ParseJob([]byte(`{"id":"x","groups":[{"name":"g","count":3,"update":{},"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	p, ok := j.Groups[0].UpdatePolicy()
	if !ok {
		t.Fatal("an empty update block must still mean a rollout")
	}
	want := UpdatePolicy{MaxParallel: 1, MinHealthyTime: 10 * time.Second, HealthyDeadline: 5 * time.Minute, ProgressDeadline: 10 * time.Minute}
	if p != want {
		t.Errorf("defaults = %+v, want %+v", p, want)
	}
	j.Groups[0].Update = nil
	if _, ok := j.Groups[0].UpdatePolicy(); ok {
		t.Error("no update block must mean no rollout")
	}
}

func TestUpdateAborts(t *testing.T) {
	for _, c := range []struct {
		ratio               float64
		min, unhealthy, upd int
		want                bool
	}{
		{0, 0, 0, 5, false}, // nothing unhealthy
		{0, 0, 1, 5, true},  // default: the first unhealthy one
		{0.1, 20, 3, 19, false},
		{0.1, 20, 2, 20, false}, // 2 of 20 is not above 10 %
		{0.1, 20, 3, 20, true},
	} {
		p := UpdatePolicy{FailureRatio: c.ratio, MinDevices: c.min}
		if got := p.Aborts(c.unhealthy, c.upd); got != c.want {
			t.Errorf("ratio %v min %d: %d of %d unhealthy: aborts %v, want %v", c.ratio, c.min, c.unhealthy, c.upd, got, c.want)
		}
	}
}

func TestUpdateValidation(t *testing.T) {
	job := func(typ JobType, count int, update string) string {
		return `{"id":"x","type":"` + string(typ) + `","groups":[{"name":"g","count":` + strconv.Itoa(count) + `,"update":` + update +
			`,"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`
	}
	for _, c := range []struct {
		doc  string
		want []string // nil: valid
	}{
		{job(JobService, 3, `{"max_parallel":2,"canary":1,"auto_promote":true,"min_healthy_time":"5s","healthy_deadline":"1m","progress_deadline":"2m","auto_revert":true,"offline":"wait","abort":{"failure_ratio":0.1,"min_devices":20}}`), nil},
		{job(JobSystem, 1, `{"canary":5}`), nil}, // system jobs: canaries are devices, any number
		{job(JobService, 3, `{"max_parallel":-1,"canary":4,"offline":"later"}`), []string{
			"groups[0].update.max_parallel: want 1 or more, got -1",
			"groups[0].update.canary: want at most the group's count (3), got 4",
			`groups[0].update.offline: unknown value "later", want skip or wait`,
		}},
		{job(JobService, 3, `{"auto_promote":true}`), []string{
			"groups[0].update.auto_promote: needs canary > 0: without canaries there is nothing to promote",
		}},
		{job(JobService, 3, `{"min_healthy_time":"10m"}`), []string{
			"groups[0].update.healthy_deadline: want longer than min_healthy_time (10m0s), got 5m0s",
		}},
		{job(JobService, 3, `{"healthy_deadline":"20m"}`), []string{
			"groups[0].update.progress_deadline: want at least healthy_deadline (20m0s), got 10m0s",
		}},
		{job(JobService, 3, `{"abort":{"failure_ratio":1.5,"min_devices":-2}}`), []string{
			"groups[0].update.abort.failure_ratio: want at least 0 and below 1, got 1.5",
			"groups[0].update.abort.min_devices: want 0 or more, got -2",
		}},
		{job(JobBatch, 3, `{}`), []string{
			"groups[0].update: not used by batch jobs, whose allocations run to completion; update blocks apply to service and system jobs",
		}},
		{job(JobService, 3, `{"max_paralel":2}`), []string{
			"groups[0].update.max_paralel: unknown field, want one of max_parallel, canary, auto_promote, min_healthy_time, healthy_deadline, progress_deadline, auto_revert, offline, abort",
		}},
	} {
		checkFieldErrors(t, c.doc, c.want)
	}
}

func TestSchedulingAndPromoteValidation(t *testing.T) {
	if _, err := DecodeScheduling([]byte(`{"device":"d1","eligible":true,"drain":true}`)); err == nil ||
		err.Error() != "eligible: must be false while drain is true: a draining device takes no new allocation" {
		t.Errorf("eligible and draining: %v", err)
	}
	if s, err := DecodeScheduling([]byte(`{"device":"d1","eligible":false}`)); err != nil || s.IsEligible() || s.Drain {
		t.Errorf("ineligible: %+v %v", s, err)
	}
	// Omitted eligible means eligible, unless draining.
	if s, err := DecodeScheduling([]byte(`{"device":"d1","drain":false}`)); err != nil || !s.IsEligible() {
		t.Errorf("drain false alone: %+v %v", s, err)
	}
	if s, err := DecodeScheduling([]byte(`{"device":"d1","drain":true}`)); err != nil || s.IsEligible() || !s.Drain {
		t.Errorf("draining: %+v %v", s, err)
	}
	if _, err := DecodePromote([]byte(`{"job":"x"}`)); err == nil || err.Error() != "version: required: the version being rolled out" {
		t.Errorf("promote without version: %v", err)
	}
}

func TestRolloutTopics(t *testing.T) {
	tp := Topics{}
	for topic, want := range map[string]Kind{
		tp.Promote("web"):      KindPromote,
		tp.History("web"):      KindHistory,
		tp.Scheduling("pi-1"):  KindScheduling,
		tp.Plan("n0nce"):       KindPlan,
		tp.PlanResult("n0nce"): KindPlanResult,
		tp.JobStatus("web"):    KindJobStatus,
		tp.Job("web"):          KindJob,
	} {
		k, _, err := tp.Parse(topic)
		if err != nil || k != want {
			t.Errorf("%s: %v %v, want %v", topic, k, err, want)
		}
	}
	if _, _, err := tp.Parse("tether/v1/jobs/web/nope"); err == nil {
		t.Error("unknown job topic accepted")
	}
}
