package planner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/planner/core"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// applyPromote promotes a paused rollout past its canaries, if the request
// names the version being rolled out.
func (p *Planner) applyPromote(id string, payload []byte, log zerolog.Logger) {
	if len(payload) == 0 {
		return
	}
	pr, err := protocol.DecodePromote(payload)
	if err == nil && pr.Job != id {
		err = fmt.Errorf("job: %q does not match topic job %q", pr.Job, id)
	}
	if err != nil {
		log.Warn().Err(err).Msg("ignoring invalid promote request")
		return
	}
	switch err := p.cfg.Store.Promote(id, pr.Version); {
	case errors.Is(err, store.ErrNotPromotable), errors.Is(err, store.ErrNotFound):
		log.Warn().Uint64("version", pr.Version).Msg("promote ignored: no rollout of that version awaits promotion")
	case err != nil:
		log.Error().Err(err).Msg("store")
	default:
		log.Info().Uint64("version", pr.Version).Msg("rollout promoted")
	}
}

// saveRollouts persists the state of every rollout the plan reports, and
// returns a job whose rollout failed to its last stable version when a
// group asks for auto_revert.
func (p *Planner) saveRollouts(ctx context.Context, snap core.Snapshot, heads []store.JobHead, plan core.Plan) error {
	byID := map[string]store.JobHead{}
	for _, h := range heads {
		byID[h.ID] = h
	}
	jobs := map[string]core.Job{}
	for _, j := range snap.Jobs {
		jobs[j.Job.ID] = j
	}
	ids := make([]string, 0, len(plan.Rollouts))
	for id := range plan.Rollouts {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var errs []error
	for _, id := range ids {
		r := plan.Rollouts[id]
		h, ok := byID[id]
		if !ok || h.Stopped || r.Version != h.Latest {
			continue
		}
		prev := h.Rollout
		if prev != nil && prev.Version == r.Version {
			r.RevertedTo = prev.RevertedTo
		}
		plan.Rollouts[id] = r
		if prev == nil || !sameRollout(*prev, r) {
			if err := p.cfg.Store.SetRollout(id, r); err != nil {
				errs = append(errs, err)
				continue
			}
			if prev == nil || prev.Version != r.Version || prev.State != r.State {
				p.log.Info().Str("job", id).Uint64("version", r.Version).Str("state", string(r.State)).Str("why", r.Description).Msg("rollout")
			}
		}
		if r.State != protocol.RolloutFailed || r.RevertedTo != 0 || !autoReverts(jobs[id].Job) {
			continue
		}
		to, err := p.revert(ctx, id, h, r)
		if err != nil {
			errs = append(errs, err)
		}
		r.RevertedTo = to
		plan.Rollouts[id] = r
	}
	return errors.Join(errs...)
}

// knownGood returns the initial rollout state of a version no plan has seen
// yet when its document equals a stable version's (a revert, by hand or
// automatic): promoted from the start, since the version is known good and
// its canaries would prove nothing. It returns nil otherwise.
func (p *Planner) knownGood(h store.JobHead, rec store.JobRecord) (*protocol.Rollout, error) {
	if h.Stable == 0 || h.Stable == rec.Version {
		return nil, nil
	}
	canaries := false
	for _, g := range rec.Job.Groups {
		if u, ok := g.UpdatePolicy(); ok && u.Canary > 0 {
			canaries = true
		}
	}
	if !canaries {
		return nil, nil
	}
	recs, err := p.cfg.Store.JobVersions(h.ID)
	if err != nil {
		return nil, err
	}
	for _, old := range recs {
		if old.Stable && old.Version != rec.Version && old.Job.Equal(rec.Job) {
			now := p.cfg.Now().UTC()
			r := &protocol.Rollout{Version: rec.Version, State: protocol.RolloutRunning, StartedAt: now, ProgressAt: now,
				Description: fmt.Sprintf("same document as stable version %d: canaries skipped", old.Version)}
			for _, g := range rec.Job.Groups {
				if u, ok := g.UpdatePolicy(); ok {
					r.Groups = append(r.Groups, protocol.RolloutGroup{Name: g.Name, Canaries: u.Canary, Promoted: true})
				}
			}
			return r, nil
		}
	}
	return nil, nil
}

// revert republishes the job's last stable version as its document, which
// the planner then accepts as a new version, rolled out like any other
// (without canaries: see knownGood). It returns the version reverted to, 0
// if none.
func (p *Planner) revert(ctx context.Context, id string, h store.JobHead, r protocol.Rollout) (uint64, error) {
	// Read the head again: a document or a stop the operator published
	// since the snapshot wins over the revert.
	heads, err := p.cfg.Store.Jobs()
	if err != nil {
		return 0, err
	}
	for _, x := range heads {
		if x.ID == id {
			h = x
		}
	}
	if h.Stopped || h.Latest != r.Version {
		return 0, nil
	}
	first := h.Rollout == nil || h.Rollout.State != protocol.RolloutFailed
	if h.Stable == 0 || h.Stable >= r.Version {
		if first {
			p.log.Warn().Str("job", id).Uint64("version", r.Version).Msg("rollout failed; no earlier stable version to revert to")
		}
		return 0, nil
	}
	rec, err := p.cfg.Store.JobVersion(id, h.Stable)
	if err != nil {
		return 0, err
	}
	failed, err := p.cfg.Store.JobVersion(id, r.Version)
	if err != nil {
		return 0, err
	}
	if failed.Job.Equal(rec.Job) {
		// The failed version is the stable document already (a revert
		// that failed too): publishing it again would change nothing.
		if first {
			p.log.Warn().Str("job", id).Uint64("version", r.Version).Msg("rollout of the last stable document failed; nothing to revert to")
		}
		return 0, nil
	}
	payload, err := protocol.Encode(rec.Job)
	if err != nil {
		return 0, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = p.cfg.Bus.Publish(pctx, p.cfg.Topics.Job(id), payload, true, 1)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("revert %s to version %d: %w", id, h.Stable, err)
	}
	p.log.Warn().Str("job", id).Uint64("failed", r.Version).Uint64("to", h.Stable).Str("why", r.Description).Msg("rollout failed: reverting")
	r.RevertedTo = h.Stable
	return h.Stable, p.cfg.Store.SetRollout(id, r)
}

func autoReverts(j protocol.Job) bool {
	for _, g := range j.Groups {
		if u, ok := g.UpdatePolicy(); ok && u.AutoRevert {
			return true
		}
	}
	return false
}

func sameRollout(a, b protocol.Rollout) bool {
	ra, _ := json.Marshal(a)
	rb, _ := json.Marshal(b)
	return string(ra) == string(rb)
}

// markStable marks the latest version of a job without update blocks stable
// once every allocation runs it (jobs with update blocks are marked by their
// rollout).
func (p *Planner) markStable(h store.JobHead, st protocol.JobStatus) {
	if st.Rollout != nil || h.Stopped || h.Latest == 0 || h.Stable == h.Latest || st.Counts.Placed == 0 {
		return
	}
	if st.State != protocol.JobRunning && st.State != protocol.JobComplete {
		return
	}
	for _, a := range st.Allocs {
		if a.Version != h.Latest || (a.State != protocol.AllocRunning && a.State != protocol.AllocComplete) {
			return
		}
	}
	if err := p.cfg.Store.MarkStable(h.ID, h.Latest); err != nil {
		p.log.Error().Err(err).Str("job", h.ID).Msg("store")
	}
}

// publishHistories publishes the version history of every job whose
// versions, stable mark or rollout outcome changed.
func (p *Planner) publishHistories(ctx context.Context) error {
	heads, err := p.cfg.Store.Jobs() // afresh: this pass may have marked versions
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range heads {
		if h.Latest == 0 {
			continue
		}
		key := fmt.Sprintf("%d/%d", h.Latest, h.Stable)
		if r := h.Rollout; r != nil {
			key += fmt.Sprintf("/%d/%s/%d", r.Version, r.State, r.RevertedTo)
		}
		if key == h.HistoryKey {
			continue
		}
		recs, err := p.cfg.Store.JobVersions(h.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		hist := protocol.JobHistory{Job: h.ID, Versions: []protocol.JobVersionEntry{}}
		for i := len(recs) - 1; i >= 0 && len(hist.Versions) < protocol.MaxHistory; i-- {
			rec := recs[i]
			e := protocol.JobVersionEntry{Version: rec.Version, SubmittedAt: rec.SubmittedAt, Digest: rec.Digest, Stable: rec.Stable, Rollout: rec.Rollout, Job: rec.Job}
			if e.Rollout == nil && h.Rollout != nil && h.Rollout.Version == rec.Version {
				e.Rollout = h.Rollout
			}
			hist.Versions = append(hist.Versions, e)
		}
		payload, err := protocol.Encode(hist)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = p.cfg.Bus.Publish(pctx, p.cfg.Topics.History(h.ID), payload, true, 1)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("publish history of %s: %w", h.ID, err))
			continue
		}
		if err := p.cfg.Store.SetHistoryKey(h.ID, key); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// dryRun is a `tether job plan` request waiting for an answer.
type dryRun struct {
	nonce   string
	payload []byte
}

// answerDryRuns answers the dry runs received since the last pass.
func (p *Planner) answerDryRuns(ctx context.Context) {
	runs := p.dryRuns
	p.dryRuns = nil
	for _, d := range runs {
		res := p.DryRun(d.payload, p.cfg.Now())
		payload, err := protocol.Encode(res)
		if err != nil {
			p.log.Error().Err(err).Msg("encode dry run")
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = p.cfg.Bus.Publish(pctx, p.cfg.Topics.PlanResult(d.nonce), payload, false, 1)
		cancel()
		if err != nil {
			p.log.Warn().Err(err).Str("nonce", d.nonce).Msg("dry run answer not delivered")
		}
	}
}

// DryRun computes what submitting a job document would do to the fleet as
// the store knows it, changing nothing.
func (p *Planner) DryRun(payload []byte, now time.Time) protocol.PlanResult {
	job, err := protocol.ParseJob(payload)
	if err != nil {
		res := protocol.PlanResult{Errors: protocol.FieldErrors(err)}
		if protocol.ValidateID(job.ID) == nil {
			res.Job = job.ID
		}
		return res
	}
	res := protocol.PlanResult{Job: job.ID}
	snap, heads, _, err := p.snapshot()
	if err != nil {
		res.Errors = []protocol.FieldError{{Message: "planner: " + err.Error()}}
		return res
	}
	var latest uint64
	for _, h := range heads {
		if h.ID == job.ID {
			latest = h.Latest
		}
	}
	res.Version = latest + 1
	replaced := false
	for i, j := range snap.Jobs {
		if j.Job.ID != job.ID {
			continue
		}
		replaced = true
		if !j.Stopped && j.Job.Equal(job) {
			res.Version, res.Unchanged = j.Version, true
			break
		}
		snap.Jobs[i] = p.dryRunJob(heads, job, res.Version)
	}
	if !replaced {
		snap.Jobs = append(snap.Jobs, p.dryRunJob(heads, job, res.Version))
	}
	plan := core.Compute(snap, now)
	old := map[string]core.Alloc{}
	for _, a := range snap.Allocations {
		old[a.ID] = a
	}
	draining := map[string]bool{}
	for _, d := range snap.Devices {
		draining[d.ID] = d.Draining
	}
	groups := map[string]protocol.Group{}
	for _, g := range job.Groups {
		groups[g.Name] = g
	}
	planned := func(a core.Alloc, reason string) protocol.PlannedAlloc {
		return protocol.PlannedAlloc{ID: a.ID, Group: a.Group, Device: a.Device, Reason: reason}
	}
	for _, a := range plan.Place {
		if a.Job == job.ID {
			res.Place = append(res.Place, planned(a, ""))
		}
	}
	for _, a := range plan.Update {
		if a.Job != job.ID || a.JobVersion != res.Version {
			continue // another job, or only a cleared Replaces mark (still deferred)
		}
		if o, ok := old[a.ID]; ok && !tasksEqual(o.Tasks, a.Tasks) {
			res.Destructive = append(res.Destructive, planned(a, ""))
		} else {
			res.InPlace = append(res.InPlace, planned(a, ""))
		}
	}
	for _, a := range plan.Stop {
		if a.Job != job.ID {
			continue
		}
		g, ok := groups[a.Group]
		reason := "no longer feasible, or no longer fits its device"
		switch {
		case !ok:
			reason = "group removed"
		case !job.Type.OnEveryDevice() && a.Index >= g.Instances():
			reason = "count lowered"
		case draining[a.Device]:
			reason = "device draining"
		}
		res.Stop = append(res.Stop, planned(a, reason))
	}
	for _, d := range plan.Deferred {
		if d.Alloc.Job == job.ID {
			res.Deferred = append(res.Deferred, planned(d.Alloc, d.Reason))
		}
	}
	res.Groups = plan.Groups[job.ID]
	return res
}

// dryRunJob is the job a dry run plans: the document as the version it
// would become, promoted from the start when it equals a stable version,
// as the real submission would be (see knownGood).
func (p *Planner) dryRunJob(heads []store.JobHead, job protocol.Job, version uint64) core.Job {
	j := core.Job{Job: job, Version: version}
	for _, h := range heads {
		if h.ID == job.ID {
			if r, err := p.knownGood(h, store.JobRecord{Version: version, Job: job}); err == nil {
				j.Rollout = r
			}
		}
	}
	return j
}

func tasksEqual(a, b []protocol.Task) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}
