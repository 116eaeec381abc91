package core

import (
	"cmp"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
)

var update = flag.Bool("update", false, "rewrite the expected output of testdata/*.txt")

// Scenario tests in the manner of etcd-io/raft's datadriven tests: each file
// of testdata/*.txt is a sequence of commands that build a world (devices,
// jobs, reports) and plan it; the output of every command is compared with
// the text under its "----" line, and rewritten with -update. A case is
//
//	command [arg ...]
//	input lines
//	----
//	expected output (no blank lines)
//
// ending at a blank line. Lines starting with # outside cases are comments.
// Commands:
//
//	devices             one device per input line: ID [key=value ...] with
//	                    keys arch, os, kernel, hostname, cores, cpu (MHz),
//	                    mem (MB), disk (MB), drivers=podman,exec,
//	                    label.KEY=VALUE, res=nvidia/gpu:2,usb/1d6b:0002:1 and
//	                    the flags offline, never-seen, no-facts, ineligible,
//	                    draining; a device given again is replaced (its
//	                    reports kept). Defaults as dev(). An
//	                    offline device's OfflineSince is the world's clock
//	                    when it went offline (kept while it stays offline);
//	                    never-seen leaves it zero.
//	remove-device ID    the device leaves the fleet.
//	tick DURATION       advances the world's clock (it starts at t0).
//	job [version=N]     the input is a job document (YAML), parsed and
//	                    validated by protocol.ParseJob; prints its errors.
//	                    Version defaults to the previous version + 1.
//	stop-job ID         the operator deleted the job.
//	report ALLOC STATE [started=DURATION] [finished=DURATION] [health=VERDICT]
//	                    the device of ALLOC (job.group.index@device, an
//	                    allocation of the last plan) reports it in STATE at
//	                    its version, with its task started (finished)
//	                    DURATION from now (negative: in the past) and
//	                    edged's health verdict (healthy, unhealthy) if
//	                    given. The device's ReportedAt becomes now.
//	health VERDICT TARGET ...
//	                    reports each target running with that health
//	                    verdict at its version. A target is an allocation
//	                    (as for report), or a job id: every allocation of
//	                    the job in the last plan at the job's version, on an
//	                    online device, not yet judged at that version.
//	promote JOB         the operator promotes the version being rolled out
//	                    (every group of the job's rollout), as the shell
//	                    does on a protocol.Promote.
//	plan [by=ATTR]      computes a plan at the world's clock, prints its
//	                    buckets (a replacement as ALLOC<ALLOC-IT-REPLACES),
//	                    its lost and disconnected allocations, the deferred
//	                    updates by reason, when to plan again, every group's
//	                    status (an allocation with a reschedule history
//	                    shows its length: ALLOC(rN)) (and with by, how many allocations each
//	                    value of a device attribute has) and every rollout,
//	                    then makes its allocations the current ones and its
//	                    rollouts the jobs' (as the shell persists them).
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in testdata: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			t.Parallel()
			runScenario(t, f)
		})
	}
}

// scenarioCase is one command of a scenario file, with where its expected
// output sits in the file so that -update can rewrite it.
type scenarioCase struct {
	line     int // of the command, for messages
	cmd      string
	args     []string
	input    string
	want     string
	outStart int // index in lines of the first output line
	outEnd   int // index after the last output line
}

func parseScenario(t *testing.T, path string, lines []string) []scenarioCase {
	var cases []scenarioCase
	for i := 0; i < len(lines); {
		line := strings.TrimSpace(lines[i])
		if line == "" || strings.HasPrefix(line, "#") {
			i++
			continue
		}
		fields := strings.Fields(line)
		c := scenarioCase{line: i + 1, cmd: fields[0], args: fields[1:]}
		i++
		var input []string
		for ; i < len(lines) && lines[i] != "----"; i++ {
			input = append(input, lines[i])
		}
		if i == len(lines) {
			t.Fatalf("%s:%d: %s has no ---- line", path, c.line, c.cmd)
		}
		i++
		c.input = strings.Join(input, "\n")
		c.outStart = i
		for ; i < len(lines) && strings.TrimSpace(lines[i]) != ""; i++ {
		}
		c.outEnd = i
		c.want = strings.Join(lines[c.outStart:c.outEnd], "\n")
		cases = append(cases, c)
	}
	return cases
}

func runScenario(t *testing.T, path string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	cases := parseScenario(t, path, lines)
	w := &world{}
	outputs := make([]string, len(cases))
	for ci, c := range cases {
		got := w.run(t, path, c)
		outputs[ci] = got
		if !*update && got != c.want {
			t.Errorf("%s:%d: %s %s\n got:\n%s\n want:\n%s", path, c.line, c.cmd, strings.Join(c.args, " "), got, c.want)
		}
	}
	if !*update {
		return
	}
	var b strings.Builder
	last := 0
	for ci, c := range cases {
		for _, l := range lines[last:c.outStart] {
			b.WriteString(l + "\n")
		}
		b.WriteString(outputs[ci] + "\n")
		last = c.outEnd
	}
	for _, l := range lines[last:] {
		b.WriteString(l + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// world is the state a scenario builds.
type world struct {
	devices []Device
	jobs    []Job
	allocs  []Alloc
	now     time.Time         // zero: t0
	names   map[string]string // allocation id → short name, of every allocation seen
}

func (w *world) clock() time.Time {
	if w.now.IsZero() {
		return t0
	}
	return w.now
}

func (w *world) snapshot() Snapshot {
	return Snapshot{Jobs: slices.Clone(w.jobs), Devices: slices.Clone(w.devices), Allocations: slices.Clone(w.allocs)}
}

func (w *world) run(t *testing.T, path string, c scenarioCase) string {
	fail := func(format string, args ...any) string {
		t.Fatalf("%s:%d: %s: %s", path, c.line, c.cmd, fmt.Sprintf(format, args...))
		return ""
	}
	switch c.cmd {
	case "devices":
		for _, l := range strings.Split(c.input, "\n") {
			if strings.TrimSpace(l) == "" {
				continue
			}
			d, err := parseDevice(l)
			if err != nil {
				return fail("%v", err)
			}
			if d.Presence == protocol.Offline {
				d.OfflineSince = w.clock()
			}
			if i := slices.IndexFunc(w.devices, func(x Device) bool { return x.ID == d.ID }); i >= 0 {
				d.Reported = w.devices[i].Reported
				if old := w.devices[i]; d.Presence == protocol.Offline && old.Presence == protocol.Offline {
					d.OfflineSince = old.OfflineSince
				}
				w.devices[i] = d
			} else {
				w.devices = append(w.devices, d)
			}
		}
		return "ok"
	case "tick":
		if len(c.args) != 1 {
			return fail("want: tick DURATION")
		}
		dur, err := time.ParseDuration(c.args[0])
		if err != nil {
			return fail("%v", err)
		}
		w.now = w.clock().Add(dur)
		return fmt.Sprintf("ok: now t0+%s", w.now.Sub(t0))
	case "remove-device":
		w.devices = slices.DeleteFunc(w.devices, func(d Device) bool { return slices.Contains(c.args, d.ID) })
		return "ok"
	case "job":
		j, err := protocol.ParseJob([]byte(c.input))
		if err != nil {
			var out []string
			for _, fe := range protocol.FieldErrors(err) {
				out = append(out, fe.Error())
			}
			return strings.Join(out, "\n")
		}
		version := uint64(1)
		i := slices.IndexFunc(w.jobs, func(x Job) bool { return x.Job.ID == j.ID })
		if i >= 0 {
			version = w.jobs[i].Version + 1
		}
		for _, a := range c.args {
			if v, ok := strings.CutPrefix(a, "version="); ok {
				n, err := strconv.ParseUint(v, 10, 64)
				if err != nil {
					return fail("bad version %q", v)
				}
				version = n
			}
		}
		nj := Job{Job: j, Version: version}
		if i >= 0 {
			w.jobs[i] = nj
		} else {
			w.jobs = append(w.jobs, nj)
		}
		return fmt.Sprintf("ok: %s version %d", j.ID, version)
	case "stop-job":
		for i := range w.jobs {
			if slices.Contains(c.args, w.jobs[i].Job.ID) {
				w.jobs[i].Stopped = true
			}
		}
		return "ok"
	case "report":
		if len(c.args) < 2 || len(c.args) > 5 {
			return fail("want: report ALLOC STATE [started=DURATION] [finished=DURATION] [health=VERDICT]")
		}
		a, ok := w.alloc(c.args[0])
		if !ok {
			return fail("no allocation %s", c.args[0])
		}
		st := protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, State: protocol.AllocState(c.args[1])}
		for _, arg := range c.args[2:] {
			if v, ok := strings.CutPrefix(arg, "health="); ok {
				st.Health = protocol.Health(v)
				continue
			}
			key, v, _ := strings.Cut(arg, "=")
			dur, err := time.ParseDuration(v)
			if (key != "started" && key != "finished") || err != nil {
				return fail("want started=DURATION, finished=DURATION or health=VERDICT, got %q", arg)
			}
			at := w.clock().Add(dur)
			if len(st.Tasks) == 0 {
				st.Tasks = []protocol.TaskStatus{{Name: a.Tasks[0].Name, State: protocol.TaskRunning}}
			}
			if key == "started" {
				st.Tasks[0].StartedAt = &at
			} else {
				st.Tasks[0].FinishedAt = &at
				st.Tasks[0].State = protocol.TaskFailed
			}
		}
		if err := w.report(a, st); err != nil {
			return fail("%v", err)
		}
		return "ok"
	case "health":
		if len(c.args) < 2 {
			return fail("want: health VERDICT TARGET ...")
		}
		verdict := protocol.Health(c.args[0])
		var targets []Alloc
		for _, t := range c.args[1:] {
			if a, ok := w.alloc(t); ok {
				targets = append(targets, a)
				continue
			}
			ji := slices.IndexFunc(w.jobs, func(j Job) bool { return j.Job.ID == t })
			if ji < 0 {
				return fail("no allocation or job %s", t)
			}
			for _, a := range w.allocs {
				di := slices.IndexFunc(w.devices, func(d Device) bool { return d.ID == a.Device })
				if a.Job != t || a.JobVersion != w.jobs[ji].Version || di < 0 || w.devices[di].Presence != protocol.Online {
					continue
				}
				if st, ok := w.devices[di].Reported[a.ID]; ok && st.JobVersion == a.JobVersion && st.Health != "" {
					continue
				}
				targets = append(targets, a)
			}
		}
		var names []string
		for _, a := range targets {
			st := protocol.AllocStatus{ID: a.ID, Job: a.Job, JobVersion: a.JobVersion, Group: a.Group, State: protocol.AllocRunning, Health: verdict}
			if err := w.report(a, st); err != nil {
				return fail("%v", err)
			}
			names = append(names, short(a))
		}
		if len(names) == 0 {
			return "ok: none"
		}
		return "ok: " + strings.Join(names, " ")
	case "promote":
		for i := range w.jobs {
			if r := w.jobs[i].Rollout; r != nil && slices.Contains(c.args, w.jobs[i].Job.ID) {
				promoted := *r
				promoted.Groups = slices.Clone(r.Groups)
				for g := range promoted.Groups {
					promoted.Groups[g].Promoted = true
				}
				w.jobs[i].Rollout = &promoted
			}
		}
		return "ok"
	case "plan":
		var by string
		for _, a := range c.args {
			if v, ok := strings.CutPrefix(a, "by="); ok {
				by = v
			}
		}
		s := w.snapshot()
		p := Compute(s, w.clock())
		checkScenarioPlan(t, path, c, s, p, w.clock())
		if w.names == nil {
			w.names = map[string]string{}
		}
		for _, a := range slices.Concat(s.Allocations, p.Allocations) {
			w.names[a.ID] = short(a)
		}
		w.allocs = p.Allocations
		for i := range w.jobs {
			w.jobs[i].Rollout = nil
			if r, ok := p.Rollouts[w.jobs[i].Job.ID]; ok {
				w.jobs[i].Rollout = &r
			}
		}
		return w.describe(p, by)
	}
	return fail("unknown command")
}

// alloc finds an allocation of the last plan by its short name.
func (w *world) alloc(name string) (Alloc, bool) {
	i := slices.IndexFunc(w.allocs, func(a Alloc) bool { return short(a) == name })
	if i < 0 {
		return Alloc{}, false
	}
	return w.allocs[i], true
}

// report records what the device of an allocation reports about it.
func (w *world) report(a Alloc, st protocol.AllocStatus) error {
	di := slices.IndexFunc(w.devices, func(d Device) bool { return d.ID == a.Device })
	if di < 0 {
		return fmt.Errorf("no device %s", a.Device)
	}
	d := &w.devices[di]
	d.Reported = maps.Clone(d.Reported) // earlier snapshots keep theirs
	if d.Reported == nil {
		d.Reported = map[string]protocol.AllocStatus{}
	}
	d.Reported[a.ID] = st
	d.ReportedAt = w.clock()
	return nil
}

// checkScenarioPlan asserts what every plan satisfies, so that a scenario
// rewritten with -update cannot record a broken plan.
func checkScenarioPlan(t *testing.T, path string, c scenarioCase, s Snapshot, p Plan, now time.Time) {
	t.Helper()
	again := Compute(feedBack(s, p), now)
	if o := outcomeOf(again); o.Place != "" || o.Update != "" || o.Stop != "" {
		t.Errorf("%s:%d: feeding the plan back changed it: %+v", path, c.line, o)
	}
	if !reflect.DeepEqual(again.Allocations, p.Allocations) {
		t.Errorf("%s:%d: feeding the plan back changed its allocations", path, c.line)
	}
	if !reflect.DeepEqual(again.Rollouts, p.Rollouts) || !reflect.DeepEqual(again.Deferred, p.Deferred) {
		t.Errorf("%s:%d: feeding the plan back changed its rollouts or deferred updates:\n %+v %+v\n %+v %+v", path, c.line, p.Rollouts, p.Deferred, again.Rollouts, again.Deferred)
	}
	if err := invariantViolation(s, p); err != "" {
		t.Errorf("%s:%d: %s", path, c.line, err)
	}
}

func (w *world) describe(p Plan, by string) string {
	var out []string
	for _, b := range []struct {
		name   string
		allocs []Alloc
	}{{"place", p.Place}, {"update", p.Update}, {"stop", p.Stop}, {"keep", p.Keep}, {"lost", p.Lost}, {"disconnected", p.Disconnected}} {
		if len(b.allocs) > 0 {
			names := make([]string, len(b.allocs))
			for i, a := range b.allocs {
				names[i] = short(a)
				if len(a.Reschedules) > 0 {
					names[i] += fmt.Sprintf("(r%d)", len(a.Reschedules))
				}
				if a.Replaces != "" {
					names[i] += "<" + cmp.Or(w.names[a.Replaces], a.Replaces)
				}
			}
			out = append(out, b.name+": "+strings.Join(names, " "))
		}
	}
	if len(out) == 0 {
		out = append(out, "no allocations")
	}
	var reasons []string
	deferred := map[string][]string{}
	for _, d := range p.Deferred {
		if _, seen := deferred[d.Reason]; !seen {
			reasons = append(reasons, d.Reason)
		}
		deferred[d.Reason] = append(deferred[d.Reason], short(d.Alloc))
	}
	for _, r := range reasons {
		out = append(out, fmt.Sprintf("deferred (%s): %s", r, strings.Join(deferred[r], " ")))
	}
	if !p.NextEval.IsZero() {
		out = append(out, fmt.Sprintf("next eval in %s", p.NextEval.Sub(p.Now)))
	}
	ids := make([]string, 0, len(p.Groups))
	for id := range p.Groups {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	attr := parseAttribute(by)
	devs := map[string]*Device{}
	for i := range w.devices {
		devs[w.devices[i].ID] = &w.devices[i]
	}
	for _, id := range ids {
		for _, g := range p.Groups[id] {
			line := fmt.Sprintf("%s/%s: desired %d placed %d", id, g.Name, g.Desired, g.Placed)
			if g.Unplaced != "" {
				line += "; " + g.Unplaced
			}
			out = append(out, line)
			if by == "" {
				continue
			}
			counts := map[string]int{}
			for _, a := range p.Allocations {
				if a.Job == id && a.Group == g.Name {
					v, set := attr.value(devs[a.Device])
					if !set {
						v = "(none)"
					}
					counts[v]++
				}
			}
			values := make([]string, 0, len(counts))
			for v := range counts {
				values = append(values, v)
			}
			slices.Sort(values)
			parts := make([]string, len(values))
			for i, v := range values {
				parts[i] = fmt.Sprintf("%s=%d", v, counts[v])
			}
			out = append(out, fmt.Sprintf("  by %s: %s", by, strings.Join(parts, " ")))
		}
	}
	ids = ids[:0]
	for id := range p.Rollouts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		r := p.Rollouts[id]
		line := fmt.Sprintf("rollout %s v%d: %s", id, r.Version, r.State)
		if r.Description != "" {
			line += "; " + r.Description
		}
		out = append(out, line, fmt.Sprintf("  started t0+%s, progress t0+%s", r.StartedAt.Sub(t0), r.ProgressAt.Sub(t0)))
		for _, g := range r.Groups {
			line := fmt.Sprintf("  %s: total %d updated %d healthy %d unhealthy %d pending-offline %d", g.Name, g.Total, g.Updated, g.Healthy, g.Unhealthy, g.PendingOffline)
			if g.Canaries > 0 {
				line += fmt.Sprintf(" canaries %d", g.Canaries)
			}
			if g.Promoted {
				line += " promoted"
			}
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// parseDevice reads "ID key=value ... flag ...".
func parseDevice(line string) (Device, error) {
	fields := strings.Fields(line)
	d := dev(fields[0])
	for _, f := range fields[1:] {
		k, v, hasValue := strings.Cut(f, "=")
		num := func() int {
			n, err := strconv.Atoi(v)
			if err != nil {
				panic(fmt.Sprintf("device %s: %s: want a number", d.ID, f))
			}
			return n
		}
		switch {
		case k == "offline" && !hasValue:
			offline(&d)
		case k == "never-seen" && !hasValue:
			neverSeen(&d)
		case k == "no-facts" && !hasValue:
			noFacts(&d)
		case k == "ineligible" && !hasValue:
			d.Ineligible = true
		case k == "draining" && !hasValue:
			d.Draining = true
		case k == "arch":
			d.Facts.Arch = v
		case k == "os":
			d.Facts.OS = v
		case k == "kernel":
			d.Facts.Kernel = v
		case k == "hostname":
			d.Facts.Hostname = v
		case k == "cores":
			d.Facts.CPUCores = num()
		case k == "cpu":
			d.Facts.CPUMHz = num()
		case k == "mem":
			d.Facts.MemoryMB = num()
		case k == "disk":
			d.DiskMB = num()
		case k == "drivers":
			d.Facts.Drivers = protocol.SplitSet(v)
		case strings.HasPrefix(k, "label.") && hasValue:
			if d.Facts.Labels == nil {
				d.Facts.Labels = map[string]string{}
			}
			d.Facts.Labels[strings.TrimPrefix(k, "label.")] = v
		case k == "res":
			d.Resources = map[string]int{}
			for _, item := range strings.Split(v, ",") {
				i := strings.LastIndex(item, ":")
				if i < 0 {
					return d, fmt.Errorf("device %s: res %q: want NAME:COUNT", d.ID, item)
				}
				n, err := strconv.Atoi(item[i+1:])
				if err != nil {
					return d, fmt.Errorf("device %s: res %q: want NAME:COUNT", d.ID, item)
				}
				d.Resources[item[:i]] = n
			}
		default:
			return d, fmt.Errorf("device %s: unknown field %q", d.ID, f)
		}
	}
	return d, nil
}
