package planner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/planner/core"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// Bus is what the planner needs from an MQTT client. Handlers passed to
// Subscribe must be called one at a time, and must not block.
type Bus interface {
	Subscribe(ctx context.Context, filter string, qos byte, h bus.Handler) error
	// Publish is called from up to publishers goroutines at once.
	Publish(ctx context.Context, topic string, payload []byte, retain bool, qos byte) error
	// Barrier returns once every message queued for the client before it
	// was called has been handed to its handlers.
	Barrier(ctx context.Context, root string) error
}

// Config of a planner.
type Config struct {
	Bus    Bus
	Store  *store.Store
	Topics protocol.Topics
	Log    zerolog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
	// Resync is how often the planner recomputes and retries unacknowledged
	// publishes without being asked; default 30s.
	Resync time.Duration
	// Sign, when set, signs every desired document just before it is
	// published (the stored copy stays unsigned, so a key rotation needs no
	// rewrite). It is called from up to publishers goroutines at once.
	Sign func(protocol.Desired) (protocol.Desired, error)
	// IndexPageSize is how many devices a page of the device index holds;
	// 0 means DeviceIndexPageSize. Tests lower it to cover several pages
	// with a few devices.
	IndexPageSize int
	// StatusAllocs is how many allocations a published job status lists;
	// 0 means protocol.MaxStatusAllocs. Tests lower it to leave some out
	// with a few devices.
	StatusAllocs int
}

// Planner turns job documents into placements. Create it with New and run
// it with Run.
type Planner struct {
	cfg     Config
	log     zerolog.Logger
	events  chan bus.Message
	pending map[string][]func(*store.DeviceRecord) // Run's goroutine only
	dryRuns []dryRun                               // Run's goroutine only
}

// New returns a planner; it does nothing until Run.
func New(cfg Config) *Planner {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	return &Planner{cfg: cfg, log: cfg.Log, events: make(chan bus.Message, 4096)}
}

// Run subscribes and plans until ctx ends.
func (p *Planner) Run(ctx context.Context) error {
	t := p.cfg.Topics
	filters := []string{
		t.JobsFilter(),
		t.DevicesFilter(protocol.KindFacts),
		t.DevicesFilter(protocol.KindPresence),
		t.DevicesFilter(protocol.KindReported),
		t.DevicesFilter(protocol.KindScheduling),
		t.PromoteFilter(),
		t.PlansFilter(),
	}
	for _, f := range filters {
		// Device state is level-triggered and retained: QoS 0 is enough on
		// a live connection, and it keeps the burst of retained messages a
		// restart brings out of the broker's QoS 1 in-flight limit, which
		// drops what exceeds it when the planner acknowledges slowly. What
		// operators publish (job documents, scheduling, promotions, dry
		// runs) keeps QoS 1.
		qos := byte(1)
		switch f {
		case t.DevicesFilter(protocol.KindFacts), t.DevicesFilter(protocol.KindPresence), t.DevicesFilter(protocol.KindReported):
			qos = 0
		}
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := p.cfg.Bus.Subscribe(sctx, f, qos, p.enqueue)
		cancel()
		if err != nil {
			return fmt.Errorf("planner: %w", err)
		}
	}
	p.log.Info().Strs("filters", filters).Msg("planner subscribed")
	// Apply the retained state (job documents, reports, presence) before
	// the first plan: a plan from what the store held before the restart
	// could fail a rollout whose allocations became healthy meanwhile, or
	// revert a job over a document its operator published meanwhile.
	if err := p.catchUp(ctx); err != nil {
		return fmt.Errorf("planner: %w", err)
	}
	// Publish whatever a previous run decided but could not deliver, and
	// whatever the store implies, before waiting for news.
	next := p.reconcile(ctx)
	// Dry runs asked while catching up are answered now: a quiet fleet may
	// send nothing more that would wake the loop below.
	p.answerDryRuns(ctx)
	ticker := time.NewTicker(p.cfg.Resync)
	defer ticker.Stop()
	// evalTimer fires when an allocation becomes lost (the plan says when),
	// so lost_after is honoured without polling.
	evalTimer := time.NewTimer(time.Hour)
	defer evalTimer.Stop()
	arm := func(at time.Time) {
		if !evalTimer.Stop() {
			select {
			case <-evalTimer.C:
			default:
			}
		}
		if !at.IsZero() {
			evalTimer.Reset(max(time.Until(at), time.Millisecond))
		}
	}
	arm(next)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
			arm(p.reconcile(ctx))
		case <-evalTimer.C:
			arm(p.reconcile(ctx))
		case m := <-p.events:
			p.apply(m)
			// Coalesce a burst (a reconnect storm, the retained messages at
			// start) into one plan and one transaction.
			p.drain()
			p.flushDevices()
			arm(p.reconcile(ctx))
			p.answerDryRuns(ctx)
		}
	}
}

// catchUp applies every message the broker delivered before a barrier round
// trip (the retained state, after subscribing).
func (p *Planner) catchUp(ctx context.Context) error {
	bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- p.cfg.Bus.Barrier(bctx, p.cfg.Topics.Base()) }()
	for {
		select {
		case m := <-p.events:
			p.apply(m)
		case err := <-done:
			// Everything before the barrier is in the channel now.
			for {
				select {
				case m := <-p.events:
					p.apply(m)
				default:
					p.flushDevices()
					return err
				}
			}
		}
	}
}

// enqueue is the Bus handler. The channel is large; when it is full the
// dispatch goroutine waits, which is fine: the bus queues without bound.
func (p *Planner) enqueue(m bus.Message) { p.events <- m }

func (p *Planner) drain() {
	for n := 0; n < maxBatch; n++ {
		select {
		case m := <-p.events:
			p.apply(m)
		default:
			return
		}
	}
}

func (p *Planner) apply(m bus.Message) {
	kind, id, err := p.cfg.Topics.Parse(m.Topic)
	if err != nil {
		p.log.Warn().Err(err).Msg("ignoring message")
		return
	}
	now := p.cfg.Now()
	log := p.log.With().Str("topic", m.Topic).Logger()
	log.Debug().Int("bytes", len(m.Payload)).Bool("retained", m.Retained).Msg("message")
	switch kind {
	case protocol.KindJob:
		p.applyJob(id, m.Payload, now)
	case protocol.KindPromote:
		p.applyPromote(id, m.Payload, log)
	case protocol.KindPlan:
		if len(m.Payload) > 0 {
			p.dryRuns = append(p.dryRuns, dryRun{nonce: id, payload: m.Payload})
		}
	case protocol.KindScheduling:
		var sched *protocol.Scheduling
		if len(m.Payload) > 0 {
			sc, ok := decodeFor(log, "scheduling", id, m.Payload, protocol.DecodeScheduling, func(s protocol.Scheduling) string { return s.Device })
			if !ok {
				return
			}
			sched = &sc
		}
		p.updateDevice(id, func(d *store.DeviceRecord) { d.Scheduling = sched })
	case protocol.KindFacts:
		if len(m.Payload) == 0 {
			return
		}
		f, ok := decodeFor(log, "facts", id, m.Payload, protocol.DecodeFacts, func(f protocol.Facts) string { return f.Device })
		if !ok {
			return
		}
		p.updateDevice(id, func(d *store.DeviceRecord) { d.Facts = &f })
	case protocol.KindPresence:
		if len(m.Payload) == 0 {
			return
		}
		pr, ok := decodeFor(log, "presence", id, m.Payload, protocol.DecodePresence, func(p protocol.Presence) string { return p.Device })
		if !ok {
			return
		}
		p.updateDevice(id, func(d *store.DeviceRecord) {
			// When the status changes, by the server's clock: lost_after
			// counts from here, never from the device's clock.
			if d.Presence == nil || d.Presence.Status != pr.Status || d.PresenceChangedAt.IsZero() {
				d.PresenceChangedAt = now.UTC()
			}
			d.Presence = &pr
		})
	case protocol.KindReported:
		if len(m.Payload) == 0 {
			return
		}
		r, ok := decodeFor(log, "report", id, m.Payload, protocol.DecodeReported, func(r protocol.Reported) string { return r.Device })
		if !ok {
			return
		}
		// Reports are ordered by their sequence number within the device's
		// epoch, never by the device's clock (it may be far off). A report
		// at or below the last one seen is a re-sent duplicate.
		p.updateDevice(id, func(d *store.DeviceRecord) {
			if old := d.Reported; old != nil && r.Epoch != "" && r.Epoch == old.Epoch && r.Seq <= old.Seq {
				log.Debug().Uint64("seq", r.Seq).Uint64("last", old.Seq).Msg("duplicate report ignored")
				return
			}
			d.Reported = &r
			d.ReportedAt = now.UTC()
		})
	}
}

// decodeFor decodes a message a device published on its own topic: it must
// be valid and name the topic's device. What is not is logged (as an invalid
// what) and ignored.
func decodeFor[T any](log zerolog.Logger, what, id string, payload []byte, decode func([]byte) (T, error), device func(T) string) (T, bool) {
	v, err := decode(payload)
	if err == nil && device(v) != id {
		err = fmt.Errorf("device: %q does not match topic device %q", device(v), id)
	}
	if err != nil {
		log.Warn().Err(err).Msg("ignoring invalid " + what)
		return v, false
	}
	return v, true
}

// maxBatch bounds how many messages one pass applies before planning.
const maxBatch = 10000

// updateDevice queues a change to a device record; flushDevices writes
// every queued change in one transaction (one fsync for a whole burst
// instead of one per message).
func (p *Planner) updateDevice(id string, fn func(*store.DeviceRecord)) {
	if p.pending == nil {
		p.pending = map[string][]func(*store.DeviceRecord){}
	}
	p.pending[id] = append(p.pending[id], fn)
}

func (p *Planner) flushDevices() {
	if len(p.pending) == 0 {
		return
	}
	pending := p.pending
	p.pending = nil
	err := p.cfg.Store.UpdateDevices(pending)
	if err != nil {
		p.log.Error().Err(err).Int("devices", len(pending)).Msg("store")
	}
}

func (p *Planner) applyJob(id string, payload []byte, now time.Time) {
	log := p.log.With().Str("job", id).Logger()
	if len(payload) == 0 {
		stopped, err := p.cfg.Store.StopJob(id, now)
		if err != nil {
			log.Error().Err(err).Msg("stop job")
		} else if stopped {
			log.Info().Msg("job stopped")
		}
		return
	}
	digest := protocol.Digest(payload)
	job, err := protocol.ParseJob(payload)
	if err == nil && job.ID != id {
		err = protocol.FieldError{Path: "id", Message: fmt.Sprintf("%q does not match the job topic's %q", job.ID, id)}
	}
	if err != nil {
		errs := protocol.FieldErrors(err)
		log.Warn().Int("errors", len(errs)).Str("first", errs[0].Error()).Msg("job rejected")
		if err := p.cfg.Store.RejectJob(id, digest, errs); err != nil {
			log.Error().Err(err).Msg("store")
		}
		return
	}
	rec, created, err := p.cfg.Store.SubmitJob(job, digest, now)
	if err != nil {
		log.Error().Err(err).Msg("store")
		return
	}
	if created {
		log.Info().Uint64("version", rec.Version).Msg("job accepted")
	}
}

// reconcile computes a plan from the store and publishes what changed. It is
// level-triggered: it reads everything afresh, so a missed or repeated event
// cannot leave the fleet in a wrong state.
// It returns when it must run again without news (zero: only on news).
func (p *Planner) reconcile(ctx context.Context) time.Time {
	next, err := p.reconcileOnce(ctx)
	if err != nil && ctx.Err() == nil {
		p.log.Error().Err(err).Msg("reconcile")
	}
	return next
}

func (p *Planner) reconcileOnce(ctx context.Context) (time.Time, error) {
	now := p.cfg.Now()
	snap, heads, records, err := p.snapshot()
	if err != nil {
		return time.Time{}, err
	}
	plan := core.Compute(snap, now)
	if len(plan.Lost) > 0 {
		p.log.Debug().Int("lost", len(plan.Lost)).Int("disconnected", len(plan.Disconnected)).Msg("allocations on offline devices")
	}
	if len(plan.Place)+len(plan.Update)+len(plan.Stop) > 0 {
		p.log.Info().Int("place", len(plan.Place)).Int("update", len(plan.Update)).
			Int("stop", len(plan.Stop)).Int("keep", len(plan.Keep)).Msg("plan")
		allocs := make([]store.Allocation, len(plan.Allocations))
		for i, a := range plan.Allocations {
			allocs[i] = toStore(a)
		}
		if err := p.cfg.Store.ReplaceAllocations(allocs); err != nil {
			return plan.NextEval, fmt.Errorf("persist plan: %w", err)
		}
	}
	var errs []error
	if err := p.saveRollouts(ctx, snap, heads, plan); err != nil {
		errs = append(errs, err)
	}
	if err := p.publishDesired(ctx, snap, records, plan, now); err != nil {
		errs = append(errs, err)
	}
	// The device index goes out before the job statuses: whoever sees a
	// status that counts a device's report (`tether job run` waiting for
	// running) then finds the report in `tether device list` too.
	if err := p.publishDeviceIndex(ctx, records, now); err != nil {
		errs = append(errs, err)
	}
	statuses, err := p.publishStatus(ctx, snap, heads, plan, now)
	if err != nil {
		errs = append(errs, err)
	}
	if err := p.publishSummary(ctx, snap, statuses, now); err != nil {
		errs = append(errs, err)
	}
	if err := p.publishHistories(ctx); err != nil {
		errs = append(errs, err)
	}
	return plan.NextEval, errors.Join(errs...)
}

// snapshot reads everything a pass needs from the store, once: the core's
// input, the job heads, and the device records as stored.
func (p *Planner) snapshot() (core.Snapshot, []store.JobHead, []store.DeviceRecord, error) {
	var snap core.Snapshot
	heads, err := p.cfg.Store.Jobs()
	if err != nil {
		return snap, nil, nil, err
	}
	for _, h := range heads {
		if h.Latest == 0 {
			continue // never accepted
		}
		rec, err := p.cfg.Store.JobVersion(h.ID, h.Latest)
		if err != nil {
			return snap, nil, nil, err
		}
		j := core.Job{Job: rec.Job, Version: rec.Version, Stopped: h.Stopped}
		if h.Rollout != nil && h.Rollout.Version == rec.Version {
			r := *h.Rollout
			r.Groups = slices.Clone(r.Groups)
			j.Rollout = &r
		} else if !h.Stopped {
			r, err := p.knownGood(h, rec)
			if err != nil {
				return snap, nil, nil, err
			}
			j.Rollout = r
		}
		snap.Jobs = append(snap.Jobs, j)
	}
	devs, err := p.cfg.Store.Devices()
	if err != nil {
		return snap, nil, nil, err
	}
	for _, d := range devs {
		if d.Facts == nil && d.Presence == nil && d.Reported == nil {
			continue // only an operator's scheduling setting: no device has shown up
		}
		cd := core.Device{ID: d.ID, Reported: map[string]protocol.AllocStatus{}}
		if d.Facts != nil {
			cd.Facts, cd.HasFacts = *d.Facts, true
			cd.DiskMB = d.Facts.DiskMB
			for _, r := range d.Facts.Devices {
				if cd.Resources == nil {
					cd.Resources = map[string]int{}
				}
				cd.Resources[r.Name] += r.Count
			}
		}
		if sc := d.Scheduling; sc != nil {
			cd.Ineligible = !sc.IsEligible()
			cd.Draining = sc.Drain
		}
		if d.Presence != nil {
			cd.Presence = d.Presence.Status
			if cd.Presence == protocol.Offline {
				cd.OfflineSince = d.PresenceChangedAt
			}
		}
		cd.ReportedAt = d.ReportedAt
		if d.Reported != nil {
			// Task times come from the device's clock; shift them by how
			// far that clock was off when the report arrived, so that
			// longest_running compares two devices on the server's clock
			// and a failed allocation's reschedule delay counts from when
			// its task finished by that clock.
			skew := time.Duration(0)
			if !d.ReportedAt.IsZero() && !d.Reported.Time.IsZero() {
				skew = d.ReportedAt.Sub(d.Reported.Time)
			}
			for _, a := range d.Reported.Allocations {
				cd.Reported[a.ID] = shiftStarts(a, skew)
			}
		}
		snap.Devices = append(snap.Devices, cd)
	}
	allocs, err := p.cfg.Store.Allocations()
	if err != nil {
		return snap, nil, nil, err
	}
	for _, a := range allocs {
		snap.Allocations = append(snap.Allocations, fromStore(a))
	}
	return snap, heads, devs, nil
}

// shiftStarts returns a copy of a with its task start and finish times
// moved by d.
func shiftStarts(a protocol.AllocStatus, d time.Duration) protocol.AllocStatus {
	if d == 0 {
		return a
	}
	tasks := make([]protocol.TaskStatus, len(a.Tasks))
	for i, t := range a.Tasks {
		if t.StartedAt != nil {
			s := t.StartedAt.Add(d)
			t.StartedAt = &s
		}
		if t.FinishedAt != nil {
			f := t.FinishedAt.Add(d)
			t.FinishedAt = &f
		}
		tasks[i] = t
	}
	a.Tasks = tasks
	return a
}

// toStore and fromStore convert between the core's allocations and the
// store's; every field of core.Alloc must survive the round trip (a test
// checks it with reflection).
func toStore(a core.Alloc) store.Allocation {
	return store.Allocation{
		Allocation:  protocol.Allocation{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, Type: a.Type, Tasks: a.Tasks},
		Device:      a.Device,
		Index:       a.Index,
		Replaces:    a.Replaces,
		Reschedules: a.Reschedules,
	}
}

func fromStore(a store.Allocation) core.Alloc {
	return core.Alloc{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, Index: a.Index, Type: a.Type, Device: a.Device, Tasks: a.Tasks, Replaces: a.Replaces, Reschedules: a.Reschedules}
}

// publishDesired publishes the desired document of every device whose
// allocations changed, and retries documents the broker did not acknowledge.
// However many devices change, it writes the store twice: the new
// generations before publishing, the acknowledgements after.
func (p *Planner) publishDesired(ctx context.Context, snap core.Snapshot, records []store.DeviceRecord, plan core.Plan, now time.Time) error {
	stopAfter := map[[2]string]time.Duration{}       // (job, group) → disconnect.stop_after
	health := map[[2]string]*protocol.HealthPolicy{} // (job, group) → how edged judges health
	for _, j := range snap.Jobs {
		for _, g := range j.Job.Groups {
			if d := g.StopAfter(); d > 0 {
				stopAfter[[2]string{j.Job.ID, g.Name}] = d
			}
			if u, ok := g.UpdatePolicy(); ok {
				health[[2]string{j.Job.ID, g.Name}] = &protocol.HealthPolicy{
					MinHealthyTime: protocol.Duration(u.MinHealthyTime), HealthyDeadline: protocol.Duration(u.HealthyDeadline)}
			}
		}
	}
	versions := map[string]uint64{}
	for _, j := range snap.Jobs {
		versions[j.Job.ID] = j.Version
	}
	byDevice := map[string][]protocol.Allocation{}
	for _, d := range snap.Devices {
		byDevice[d.ID] = []protocol.Allocation{}
	}
	for _, a := range plan.Allocations {
		pa := toStore(a).Allocation
		pa.StopAfterDisconnect = protocol.Duration(stopAfter[[2]string{a.Job, a.Group}])
		if a.JobVersion == versions[a.Job] {
			// Only allocations at the job's version are judged: one a
			// rollout holds back runs the old version as it was.
			pa.Health = health[[2]string{a.Job, a.Group}]
		}
		byDevice[a.Device] = append(byDevice[a.Device], pa)
	}
	ids := make([]string, 0, len(byDevice))
	for id := range byDevice {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	current := map[string]store.DeviceRecord{}
	for _, r := range records {
		current[r.ID] = r
	}

	// Decide every device's document and persist the new generations in one
	// transaction before any is published, so that a crash in between can
	// never reuse a generation.
	var out []*outgoing
	edits := map[string]func(*store.DeviceRecord) error{}
	for _, id := range ids {
		allocs := byDevice[id]
		sort.Slice(allocs, func(i, j int) bool { return allocs[i].ID < allocs[j].ID })
		raw, _ := json.Marshal(allocs)
		hash := protocol.Digest(raw)
		if r, ok := current[id]; ok && r.DesiredHash == hash && r.Desired != nil && r.Published {
			continue // unchanged and delivered: no write, no publish
		}
		o := &outgoing{id: id}
		out = append(out, o)
		edits[id] = func(d *store.DeviceRecord) error {
			if d.DesiredHash == hash && d.Desired != nil {
				if !d.Published {
					o.doc = d.Desired // decided earlier, not acknowledged yet
				}
				return nil
			}
			d.Desired = &protocol.Desired{Device: id, Generation: d.Generation() + 1, IssuedAt: now.UTC(), Allocations: allocs}
			d.DesiredHash = hash
			d.Published = false
			o.doc = d.Desired
			return nil
		}
	}
	if len(edits) == 0 {
		return nil
	}
	failed, err := p.cfg.Store.EditDevices(edits)
	if err != nil {
		return err
	}
	var send []*outgoing
	for _, o := range out {
		if o.err = failed[o.id]; o.err == nil && o.doc != nil {
			send = append(send, o)
		}
	}

	p.publishAll(ctx, send)

	// Mark what the broker acknowledged, in one transaction, unless a
	// newer generation was decided meanwhile.
	marks := map[string]func(*store.DeviceRecord) error{}
	// A line per device says which generation each got; a fleet-wide
	// change logs one line, with the per-device lines at debug level.
	perDevice := zerolog.InfoLevel
	if len(send) > logEachDesired {
		perDevice = zerolog.DebugLevel
	}
	for _, o := range send {
		if o.err != nil {
			continue
		}
		p.log.WithLevel(perDevice).Str("device", o.id).Uint64("generation", o.doc.Generation).Int("allocations", len(o.doc.Allocations)).Msg("desired published")
		gen := o.doc.Generation
		marks[o.id] = func(d *store.DeviceRecord) error {
			if d.Generation() == gen {
				d.Published = true
			}
			return nil
		}
	}
	if perDevice != zerolog.InfoLevel && len(marks) > 0 {
		p.log.Info().Int("devices", len(marks)).Int("failed", len(send)-len(marks)).Msg("desired published")
	}
	var markErr error
	if len(marks) > 0 {
		failed, markErr = p.cfg.Store.EditDevices(marks)
		for _, o := range send {
			if err := failed[o.id]; err != nil {
				o.err = err
			}
		}
	}
	// One error per device that failed, in device order, as if each had been
	// handled on its own.
	var errs []error
	for _, o := range out {
		if o.err != nil {
			errs = append(errs, o.err)
		}
	}
	return errors.Join(append(errs, markErr)...)
}

// publishers bounds how many desired documents are signed and published at
// once. A publish waits on the broker: the embedded one stores a retained
// document (with an fsync) before it returns, an external one sends a
// PUBACK. Waited for one after another, that is paid once per device, and a
// change to a whole fleet of 18,000 took over a minute; in flight together,
// the waits overlap, and a broker that commits its writes as a group shares
// one fsync among them. 32 keeps either busy, and stays far below the 1,024
// unacknowledged QoS 1 publishes mochi allows a client before it drops it.
const publishers = 32

// outgoing is one device's desired document on its way out: doc is what
// the store holds, err what became of publishing it.
type outgoing struct {
	id  string
	doc *protocol.Desired
	err error
}

// logEachDesired is how many desired documents one pass may publish and
// still log a line for each at info level.
const logEachDesired = 20

// publishAll signs and publishes every document of out, up to publishers
// at once, each with its own timeout, and records each outcome in its err.
func (p *Planner) publishAll(ctx context.Context, out []*outgoing) {
	next := make(chan *outgoing)
	var wg sync.WaitGroup
	for range min(publishers, len(out)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range next {
				o.err = p.publishOne(ctx, o.id, *o.doc)
			}
		}()
	}
	for _, o := range out {
		next <- o
	}
	close(next)
	wg.Wait()
}

func (p *Planner) publishOne(ctx context.Context, id string, doc protocol.Desired) error {
	if p.cfg.Sign != nil {
		var err error
		if doc, err = p.cfg.Sign(doc); err != nil {
			return fmt.Errorf("sign desired for %s: %w", id, err)
		}
	}
	payload, err := protocol.Encode(doc)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.cfg.Bus.Publish(pctx, p.cfg.Topics.Desired(id), payload, true, 1); err != nil {
		return fmt.Errorf("publish desired for %s: %w", id, err)
	}
	return nil
}

// publishStatus publishes the status of every job whose status changed, and
// returns every job's status with all its allocations (the published one
// lists at most Config.StatusAllocs: see PublishedStatus).
func (p *Planner) publishStatus(ctx context.Context, snap core.Snapshot, heads []store.JobHead, plan core.Plan, now time.Time) ([]protocol.JobStatus, error) {
	reported := map[string]map[string]protocol.AllocStatus{}
	for _, d := range snap.Devices {
		reported[d.ID] = d.Reported
	}
	types := map[string]protocol.JobType{}
	for _, j := range snap.Jobs {
		types[j.Job.ID] = j.Job.Type
	}
	byJob := map[string][]core.Alloc{}
	for _, a := range plan.Allocations {
		byJob[a.Job] = append(byJob[a.Job], a)
	}
	conn := map[string]protocol.AllocState{}
	for _, a := range plan.Disconnected {
		conn[a.ID] = protocol.AllocDisconnected
	}
	for _, a := range plan.Lost {
		conn[a.ID] = protocol.AllocLost
	}
	limit := p.cfg.StatusAllocs
	if limit <= 0 {
		limit = protocol.MaxStatusAllocs
	}
	var errs []error
	var all []protocol.JobStatus
	for _, h := range heads {
		st := BuildStatus(h, plan.Groups[h.ID], byJob[h.ID], reported, conn)
		st.Type = types[h.ID]
		for i := range st.Allocs {
			if at, ok := plan.RescheduleAt[st.Allocs[i].ID]; ok {
				st.Allocs[i].Message = strings.TrimPrefix(st.Allocs[i].Message+"; rescheduling after "+at.UTC().Format(time.RFC3339), "; ")
			}
		}
		if r, ok := plan.Rollouts[h.ID]; ok && !h.Stopped {
			st.Rollout = &r // saveRollouts added RevertedTo
		}
		p.markStable(h, st)
		all = append(all, st) // every allocation: the summary and markStable count them all
		pub := PublishedStatus(st, limit)
		// The hash is of what is published: a change among left-out
		// allocations republishes only when it changes the counts.
		raw, _ := json.Marshal(pub)
		hash := protocol.Digest(raw)
		if hash == h.StatusHash {
			continue
		}
		pub.UpdatedAt = now.UTC()
		payload, _ := protocol.Encode(pub)
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := p.cfg.Bus.Publish(pctx, p.cfg.Topics.JobStatus(h.ID), payload, true, 1)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("publish status of %s: %w", h.ID, err))
			continue
		}
		p.log.Debug().Str("job", h.ID).Str("state", string(st.State)).Msg("status published")
		if err := p.cfg.Store.SetStatusHash(h.ID, hash); err != nil {
			errs = append(errs, err)
		}
	}
	return all, errors.Join(errs...)
}

// publishSummary publishes the fleet overview when it changed.
func (p *Planner) publishSummary(ctx context.Context, snap core.Snapshot, statuses []protocol.JobStatus, now time.Time) error {
	sum := BuildSummary(snap.Devices, statuses)
	raw, _ := json.Marshal(sum)
	hash := protocol.Digest(raw)
	last, err := p.cfg.Store.Meta("summary_hash")
	if err != nil || last == hash {
		return err
	}
	sum.UpdatedAt = now.UTC()
	payload, _ := protocol.Encode(sum)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.cfg.Bus.Publish(pctx, p.cfg.Topics.FleetSummary(), payload, true, 1); err != nil {
		return fmt.Errorf("publish fleet summary: %w", err)
	}
	return p.cfg.Store.SetMeta("summary_hash", hash)
}

// BuildSummary derives the fleet overview. UpdatedAt is left zero so that
// equal summaries hash equal.
func BuildSummary(devices []core.Device, statuses []protocol.JobStatus) protocol.FleetSummary {
	sum := protocol.FleetSummary{Jobs: []protocol.JobBrief{}}
	c := &sum.Devices
	c.ByArch = map[string]int{}
	c.ByLabel = map[string]map[string]int{}
	for _, d := range devices {
		c.Total++
		switch d.Presence {
		case protocol.Online:
			c.Online++
		case protocol.Offline:
			c.Offline++
		default:
			c.Unknown++
		}
		if !d.HasFacts {
			continue
		}
		c.ByArch[d.Facts.Arch]++
		for k, v := range d.Facts.Labels {
			if c.ByLabel[k] == nil {
				c.ByLabel[k] = map[string]int{}
			}
			c.ByLabel[k][v]++
		}
	}
	for _, st := range statuses {
		sum.Jobs = append(sum.Jobs, protocol.JobBrief{Job: st.Job, Type: st.Type, Version: st.Version, State: st.State, Counts: st.Counts})
	}
	sort.Slice(sum.Jobs, func(i, j int) bool { return sum.Jobs[i].Job < sum.Jobs[j].Job })
	return sum
}

// PublishedStatus returns st as published: with at most limit allocations
// listed and AllocsOmitted counting the rest. A status within the limit is
// returned as it is. Otherwise the allocations an operator needs first come
// first, by allocRank, each rank in the order of st.Allocs (BuildStatus
// lists them by id). st.Allocs is neither changed nor shared, so that the
// planner goes on working with every allocation.
func PublishedStatus(st protocol.JobStatus, limit int) protocol.JobStatus {
	if len(st.Allocs) <= limit {
		return st
	}
	var ranks [rankDone + 1][]protocol.AllocSummary
	for _, a := range st.Allocs {
		r := allocRank(a)
		if len(ranks[r]) < limit {
			ranks[r] = append(ranks[r], a)
		}
	}
	listed := make([]protocol.AllocSummary, 0, limit)
	for _, in := range ranks {
		listed = append(listed, in[:min(len(in), limit-len(listed))]...)
	}
	st.AllocsOmitted += len(st.Allocs) - len(listed)
	st.Allocs = listed
	return st
}

// Ranks of allocations in a published status, most needed first.
const (
	rankFailed = iota
	rankLost
	rankDisconnected
	rankUnhealthy
	rankPending // pending, or a state this planner does not know
	rankMessage // running or complete, with something to say
	rankDone    // running or complete, nothing to say
)

func allocRank(a protocol.AllocSummary) int {
	switch {
	case a.State == protocol.AllocFailed:
		return rankFailed
	case a.State == protocol.AllocLost:
		return rankLost
	case a.State == protocol.AllocDisconnected:
		return rankDisconnected
	case a.Health == protocol.Unhealthy:
		return rankUnhealthy
	case a.State != protocol.AllocRunning && a.State != protocol.AllocComplete:
		return rankPending
	case a.Message != "":
		return rankMessage
	}
	return rankDone
}

// BuildStatus derives a job's status from its head, its groups' placement
// summary, its allocations, the devices' reports (by device, then
// allocation id) and the allocations whose device is offline (by id:
// disconnected or lost). UpdatedAt is left zero so that equal statuses hash
// equal.
func BuildStatus(h store.JobHead, groups []protocol.GroupStatus, allocs []core.Alloc, reported map[string]map[string]protocol.AllocStatus, conn map[string]protocol.AllocState) protocol.JobStatus {
	st := protocol.JobStatus{Job: h.ID, Version: h.Latest, Submission: h.LastDigest, Errors: h.LastErrors}
	switch {
	case h.Stopped:
		st.State = protocol.JobStopped
		return st
	case h.Latest == 0:
		st.State = protocol.JobInvalid
		return st
	}
	st.Groups = groups
	for _, g := range groups {
		st.Counts.Desired += g.Desired
	}
	unplaced := false
	for _, g := range groups {
		if g.Unplaced != "" {
			unplaced = true
		}
	}
	sort.Slice(allocs, func(i, j int) bool { return allocs[i].ID < allocs[j].ID })
	for _, a := range allocs {
		sum := protocol.AllocSummary{ID: a.ID, Group: a.Group, Device: a.Device, Version: a.JobVersion, State: protocol.AllocPending}
		if r, ok := reported[a.Device][a.ID]; ok && r.JobVersion == a.JobVersion {
			sum.State = r.State
			sum.Health = r.Health
			for _, t := range r.Tasks {
				if t.Message != "" && (t.State == protocol.TaskFailed || t.State == protocol.TaskRestarting) {
					sum.Message = t.Name + ": " + t.Message
				}
			}
		}
		if cs, ok := conn[a.ID]; ok {
			sum.State = cs
			if a.Replaces == "" && cs == protocol.AllocLost {
				sum.Message = "device offline longer than lost_after"
			}
		}
		if a.Replaces != "" {
			sum.Message = "replaces " + a.Replaces
		}
		st.Counts.Placed++
		switch sum.State {
		case protocol.AllocDisconnected:
			st.Counts.Disconnected++
		case protocol.AllocLost:
			st.Counts.Lost++
		case protocol.AllocRunning:
			st.Counts.Running++
		case protocol.AllocComplete:
			st.Counts.Complete++
		case protocol.AllocFailed:
			st.Counts.Failed++
		default:
			st.Counts.Pending++
		}
		st.Allocs = append(st.Allocs, sum)
	}
	c := st.Counts
	switch {
	case c.Failed > 0 || unplaced:
		st.State = protocol.JobDegraded
	case c.Placed > 0 && c.Complete == c.Placed:
		st.State = protocol.JobComplete
	case c.Pending == 0 && (c.Placed == 0 || c.Running+c.Complete > 0) && c.Running+c.Complete+c.Disconnected+c.Lost == c.Placed:
		// Allocations on offline devices do not hold the job back: they
		// run there as far as anyone knows, or have been replaced.
		st.State = protocol.JobRunning
	default:
		st.State = protocol.JobPending
	}
	return st
}
