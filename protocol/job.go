package protocol

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// JobType selects how the planner places and edged runs a job.
type JobType string

// Job types.
const (
	// JobService runs Count instances of each group for as long as the job
	// exists, restarting them whenever they exit.
	JobService JobType = "service"
	// JobBatch runs Count instances of each group to completion; an instance
	// that succeeded is never started again.
	JobBatch JobType = "batch"
	// JobSystem runs one instance of each group on every feasible device,
	// including devices that join later.
	JobSystem JobType = "system"
	// JobSysBatch runs one instance of each group to completion on every
	// feasible device, including devices that join later. Like batch, an
	// instance that succeeded is never started again for the same job
	// version.
	JobSysBatch JobType = "sysbatch"
)

// Valid reports whether t is a job type of protocol v1.
func (t JobType) Valid() bool {
	switch t {
	case JobService, JobBatch, JobSystem, JobSysBatch:
		return true
	}
	return false
}

// RunsToCompletion reports whether instances of the type run once to
// completion (batch, sysbatch): a task that exits 0 is complete and is not
// started again for the same job version. The others (service, system) are
// restarted whenever they exit.
func (t JobType) RunsToCompletion() bool { return t == JobBatch || t == JobSysBatch }

// OnEveryDevice reports whether the type places one instance of each group
// on every feasible device (system, sysbatch) rather than Count instances on
// the best devices (service, batch).
func (t JobType) OnEveryDevice() bool { return t == JobSystem || t == JobSysBatch }

// Drivers known to protocol v1.
const (
	DriverPodman = "podman"
	DriverExec   = "exec"
)

// Restart modes.
const (
	RestartFail  = "fail"
	RestartDelay = "delay"
)

// Job is a job document as an operator publishes it.
type Job struct {
	ID     string  `json:"id"`
	Type   JobType `json:"type,omitempty"`
	Groups []Group `json:"groups"`
}

// Group is a set of tasks placed together on one device.
type Group struct {
	Name string `json:"name"`
	// Count is the number of instances for service and batch jobs; nil means
	// 1. It is ignored for system and sysbatch jobs.
	Count *int `json:"count,omitempty"`
	// Constraints are hard requirements: a device failing one never runs an
	// instance of the group.
	Constraints []Constraint `json:"constraints,omitempty"`
	// Affinities are soft preferences for devices, added to the ranking of
	// service and batch groups.
	Affinities []Affinity `json:"affinities,omitempty"`
	// Spreads distribute the instances of service and batch groups over the
	// values of device attributes.
	Spreads []Spread `json:"spreads,omitempty"`
	// Disconnect says what happens to the group's allocations when their
	// device goes offline; nil means the defaults (see Disconnect).
	Disconnect *Disconnect `json:"disconnect,omitempty"`
	// Update says how new versions roll out to the group's allocations;
	// nil means all at once (see Update).
	Update *Update `json:"update,omitempty"`
	// Reschedule says what happens to failed allocations of service and
	// batch groups; nil means the defaults (see Reschedule).
	Reschedule *Reschedule `json:"reschedule,omitempty"`
	Tasks      []Task      `json:"tasks"`
}

// Instances is the number of instances the group asks for (service and batch).
func (g Group) Instances() int {
	if g.Count == nil {
		return 1
	}
	return *g.Count
}

// Disconnect is a group's disconnect policy, after Nomad 1.8's disconnect
// block. An allocation on a device that went offline is disconnected: it is
// kept, still counts as an instance and is not replaced. Once the device has
// been offline for LostAfter it is lost: it still stays in the device's
// desired state (the device keeps running it), but for service and batch
// groups that Replace a replacement is placed on another device. When the
// device comes back while both exist, Reconcile decides which survives.
// Every field is optional; Normalize fills in none of them, so that
// documents written before the block existed normalize as before, and the
// Group methods LostAfter, ReplacesLost, ReconcileStrategy and StopAfter
// apply the defaults.
type Disconnect struct {
	// LostAfter is how long a device may be offline before its allocations
	// of the group count as lost; 0 means DefaultLostAfter.
	LostAfter Duration `json:"lost_after,omitempty"`
	// Replace says whether lost allocations of service and batch groups are
	// replaced on another device; nil means true. System and sysbatch
	// allocations are bound to their device and are never replaced, so
	// true is refused for them.
	Replace *bool `json:"replace,omitempty"`
	// Reconcile says which of an original allocation and its replacement
	// survives when the original's device returns: ReconcileKeepOriginal,
	// ReconcileKeepReplacement, ReconcileBestScore (the default, "") or
	// ReconcileLongestRunning.
	Reconcile string `json:"reconcile,omitempty"`
	// StopAfter is how long edged keeps the group's workloads running
	// without reaching the server before it stops them itself; 0 means
	// never. It is independent of LostAfter: a StopAfter no longer than
	// LostAfter means the original is stopped before its replacement starts.
	StopAfter Duration `json:"stop_after,omitempty"`
}

// Reconcile strategies of a disconnect policy.
const (
	ReconcileKeepOriginal    = "keep_original"
	ReconcileKeepReplacement = "keep_replacement"
	ReconcileBestScore       = "best_score"
	ReconcileLongestRunning  = "longest_running"
)

// Disconnect defaults.
const (
	DefaultLostAfter = 5 * time.Minute
	DefaultReconcile = ReconcileBestScore
)

// LostAfter is how long the group's allocations may be offline before they
// count as lost: the group's disconnect.lost_after, else DefaultLostAfter.
func (g Group) LostAfter() time.Duration {
	if g.Disconnect != nil && g.Disconnect.LostAfter > 0 {
		return g.Disconnect.LostAfter.Std()
	}
	return DefaultLostAfter
}

// ReplacesLost reports whether lost allocations of the group, in a job of
// type t, are replaced on another device: never for system and sysbatch
// jobs, else unless disconnect.replace is false.
func (g Group) ReplacesLost(t JobType) bool {
	if t.OnEveryDevice() {
		return false
	}
	return g.Disconnect == nil || g.Disconnect.Replace == nil || *g.Disconnect.Replace
}

// ReconcileStrategy is the group's disconnect.reconcile, else
// DefaultReconcile.
func (g Group) ReconcileStrategy() string {
	if g.Disconnect != nil && g.Disconnect.Reconcile != "" {
		return g.Disconnect.Reconcile
	}
	return DefaultReconcile
}

// StopAfter is how long edged keeps the group's workloads running without
// the server before stopping them: disconnect.stop_after, 0 for never.
func (g Group) StopAfter() time.Duration {
	if g.Disconnect != nil && g.Disconnect.StopAfter > 0 {
		return g.Disconnect.StopAfter.Std()
	}
	return 0
}

// Constraint restricts the devices a group may be placed on. Attribute is a
// device attribute such as "${device.arch}" or "${device.labels.site}"; the
// operators and the values they take:
//
//   - "=" (the default), "==", "!=": the attribute equals (does not equal)
//     Value as a string. A missing label reads as "".
//   - "<", "<=", ">", ">=": numeric comparison; Value must be a number and
//     an attribute that is not a number never matches.
//   - "version": the attribute, read as a version ("6.1.0-18-amd64"), lies in
//     the range Value (">= 1.2, < 2.0"); see ParseVersionRange.
//   - "regexp": the attribute matches the regular expression Value (Go
//     syntax, unanchored).
//   - "set_contains", "set_contains_any": the attribute is a comma-separated
//     set holding every (any) item of the comma-separated list Value.
//   - "is_set", "is_not_set": the attribute is (is not) set; no Value. A
//     label is set when the device reports it, a text attribute when it is
//     not empty; numbers are always set.
//   - "distinct_hosts": no Attribute, no Value (or "true"): at most one
//     instance of the group per device.
//   - "distinct_property": at most Value (a positive integer, default 1)
//     instances of the group per value of Attribute; devices without the
//     attribute are not eligible.
type Constraint struct {
	Attribute string `json:"attribute"`
	Operator  string `json:"operator,omitempty"`
	Value     string `json:"value"`
}

// Constraint and affinity operators.
const (
	OpEqual            = "="
	OpEqualEqual       = "=="
	OpNotEqual         = "!="
	OpLess             = "<"
	OpLessEqual        = "<="
	OpGreater          = ">"
	OpGreaterEqual     = ">="
	OpVersion          = "version"
	OpRegexp           = "regexp"
	OpSetContains      = "set_contains"
	OpSetContainsAny   = "set_contains_any"
	OpIsSet            = "is_set"
	OpIsNotSet         = "is_not_set"
	OpDistinctHosts    = "distinct_hosts"
	OpDistinctProperty = "distinct_property"
)

// String renders the constraint as operators read it: "${device.arch} = arm64",
// "${device.labels.gpu} is_set", "distinct_hosts",
// "distinct_property ${device.labels.site}".
func (c Constraint) String() string {
	op := c.Operator
	if op == "" {
		op = OpEqual
	}
	switch op {
	case OpDistinctHosts:
		return op
	case OpDistinctProperty:
		if c.Value == "" {
			return op + " " + c.Attribute
		}
		return op + " " + c.Attribute + " " + c.Value
	case OpIsSet, OpIsNotSet:
		return c.Attribute + " " + op
	}
	return c.Attribute + " " + op + " " + c.Value
}

// Affinity is a soft preference: devices matching Attribute Operator Value
// (as for a Constraint, without the distinct_* operators) rank higher when
// Weight is positive, lower when it is negative. Weights range from -100 to
// 100, not 0, and count relative to the sum of the group's weights, as in
// Nomad.
type Affinity struct {
	Attribute string `json:"attribute"`
	Operator  string `json:"operator,omitempty"`
	Value     string `json:"value,omitempty"`
	Weight    int    `json:"weight"`
}

// Constraint returns the affinity's condition as a constraint.
func (a Affinity) Constraint() Constraint {
	return Constraint{Attribute: a.Attribute, Operator: a.Operator, Value: a.Value}
}

// Spread distributes a group's instances over the values of a device
// attribute: evenly when there are no Targets, else in the target
// proportions, values not listed sharing what the targets leave of 100%.
// Weight (1 to 100, default 50) counts relative to the group's other spreads.
type Spread struct {
	Attribute string         `json:"attribute"`
	Weight    int            `json:"weight,omitempty"`
	Targets   []SpreadTarget `json:"targets,omitempty"`
}

// SpreadTarget asks for Percent of a group's instances on devices whose
// spread attribute is Value.
type SpreadTarget struct {
	Value   string `json:"value"`
	Percent int    `json:"percent"`
}

// DefaultSpreadWeight is the weight of a spread that gives none.
const DefaultSpreadWeight = 50

// Task is one process: a container (podman) or a plain process (exec).
type Task struct {
	Name      string            `json:"name"`
	Driver    string            `json:"driver"`
	Config    TaskConfig        `json:"config"`
	Env       map[string]string `json:"env,omitempty"`
	Resources Resources         `json:"resources"`
	Restart   *RestartPolicy    `json:"restart,omitempty"`
}

// TaskConfig is the driver configuration of a task.
type TaskConfig struct {
	// Image is the container image (podman only).
	Image string `json:"image,omitempty"`
	// Command is the program and its arguments. For podman it overrides the
	// image's command; for exec it is required and Command[0] is the program.
	Command []string `json:"command,omitempty"`
	// Network is "bridge" (the default) or "host" (podman only).
	Network string `json:"network,omitempty"`
}

// Resources a task reserves on its device. Disk and Devices are omitted from
// the JSON form when empty, so that tasks written before they existed keep
// their SpecHash.
type Resources struct {
	CPU     int             `json:"cpu"`            // MHz
	Memory  int             `json:"memory"`         // MB
	Disk    int             `json:"disk,omitempty"` // MB
	Devices []DeviceRequest `json:"devices,omitempty"`
}

// DeviceRequest asks for Count (default 1) units of a device resource, by the
// name devices report it under: "nvidia/gpu", "usb/1d6b:0002" (USB vendor
// and product id, lowercase hex).
type DeviceRequest struct {
	Name  string `json:"name"`
	Count int    `json:"count,omitempty"`
}

// RestartPolicy says what edged does when a task exits.
type RestartPolicy struct {
	// Attempts is how many restarts are allowed within Interval.
	Attempts int `json:"attempts"`
	// Delay is the wait before each restart.
	Delay Duration `json:"delay,omitempty"`
	// Interval is the window Attempts is counted in.
	Interval Duration `json:"interval,omitempty"`
	// Mode is what happens when Attempts are used up within Interval: "fail"
	// marks the task failed; "delay" waits until the interval has passed and
	// starts counting again.
	Mode string `json:"mode,omitempty"`
}

// Default resources and restart policies (Nomad's restart defaults).
const (
	DefaultCPU    = 100
	DefaultMemory = 64
)

// DefaultRestart returns the restart policy used when a task has none: batch
// and sysbatch tasks get Nomad's batch defaults, the others its service
// defaults.
func DefaultRestart(t JobType) RestartPolicy {
	if t.RunsToCompletion() {
		return RestartPolicy{Attempts: 3, Delay: Duration(15 * time.Second), Interval: Duration(24 * time.Hour), Mode: RestartFail}
	}
	return RestartPolicy{Attempts: 2, Delay: Duration(15 * time.Second), Interval: Duration(30 * time.Minute), Mode: RestartFail}
}

// Duration is a time.Duration written as a string such as "2s" or "1m30s".
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string ("15s", "1h").
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"15s\", got %s", string(b))
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want a duration such as \"15s\", got %q", s)
	}
	*d = Duration(v)
	return nil
}

// Std returns the duration as a time.Duration.
func (d Duration) Std() time.Duration { return time.Duration(d) }

// ParseJob reads a job document in YAML or JSON, checks its shape, fills in
// defaults and validates it. The error lists every problem found, each with
// its field path; see FieldErrors.
func ParseJob(data []byte) (Job, error) {
	var j Job
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return j, FieldError{Message: "empty job document"}
	}
	if trimmed[0] != '{' {
		js, err := yaml.YAMLToJSON(trimmed)
		if err != nil {
			return j, FieldError{Message: "invalid YAML: " + err.Error()}
		}
		trimmed = js
	}
	fatal, shape := decodeShape(trimmed, &j)
	if fatal != nil {
		return Job{}, fatal
	}
	j.Normalize()
	// Report what validation finds in the rest of the document too, except
	// on fields whose value could not be read at all.
	errs := shape
	for _, fe := range FieldErrors(j.Validate()) {
		if !underAny(fe.Path, shape) {
			errs = append(errs, fe)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return Job{}, err
	}
	return j, nil
}

// underAny reports whether path is, or is inside or above, the path of one
// of the shape errors.
func underAny(path string, shape []error) bool {
	for _, e := range shape {
		var fe FieldError
		if !errors.As(e, &fe) {
			continue
		}
		if path == fe.Path || strings.HasPrefix(path, fe.Path+".") || strings.HasPrefix(path, fe.Path+"[") || strings.HasPrefix(fe.Path, path+".") {
			return true
		}
	}
	return false
}

// Normalize fills in defaults: type service, count 1, operator "=", spread
// weight 50, device request count 1, default resources and restart policy.
// It leaves a group's disconnect policy as written (see Disconnect). It is
// idempotent.
func (j *Job) Normalize() {
	if j.Type == "" {
		j.Type = JobService
	}
	for gi := range j.Groups {
		g := &j.Groups[gi]
		if g.Count == nil {
			one := 1
			g.Count = &one
		}
		for ci := range g.Constraints {
			if g.Constraints[ci].Operator == "" {
				g.Constraints[ci].Operator = OpEqual
			}
		}
		for ai := range g.Affinities {
			if g.Affinities[ai].Operator == "" {
				g.Affinities[ai].Operator = OpEqual
			}
		}
		for si := range g.Spreads {
			if g.Spreads[si].Weight == 0 {
				g.Spreads[si].Weight = DefaultSpreadWeight
			}
		}
		for ti := range g.Tasks {
			t := &g.Tasks[ti]
			if t.Resources.CPU == 0 {
				t.Resources.CPU = DefaultCPU
			}
			if t.Resources.Memory == 0 {
				t.Resources.Memory = DefaultMemory
			}
			for di := range t.Resources.Devices {
				if t.Resources.Devices[di].Count == 0 {
					t.Resources.Devices[di].Count = 1
				}
			}
			def := DefaultRestart(j.Type)
			if t.Restart == nil {
				t.Restart = &def
			} else {
				if t.Restart.Delay == 0 {
					t.Restart.Delay = def.Delay
				}
				if t.Restart.Interval == 0 {
					t.Restart.Interval = def.Interval
				}
				if t.Restart.Mode == "" {
					t.Restart.Mode = def.Mode
				}
			}
		}
	}
}

var attributePattern = regexp.MustCompile(`^\$\{device\.(arch|os|kernel|id|hostname|cpu\.cores|cpu\.mhz|memory|labels\.[A-Za-z0-9_.-]+)\}$`)

const attributeHint = "want ${device.arch|os|kernel|id|hostname|cpu.cores|cpu.mhz|memory} or ${device.labels.KEY}"

// Operators in the order error messages list them.
var (
	matchOperators = []string{OpEqual, OpEqualEqual, OpNotEqual, OpLess, OpLessEqual, OpGreater, OpGreaterEqual,
		OpVersion, OpRegexp, OpSetContains, OpSetContainsAny, OpIsSet, OpIsNotSet}
	constraintOperators = append(slices.Clone(matchOperators), OpDistinctHosts, OpDistinctProperty)
)

// MaxCount is the largest count of a group.
const MaxCount = 10000

// Validate reports every problem of a normalized job, each with its path.
func (j Job) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	if err := ValidateID(j.ID); err != nil {
		add("id", "%v", err)
	}
	if !j.Type.Valid() {
		add("type", "unknown job type %q, want service, batch, system or sysbatch", j.Type)
	}
	if len(j.Groups) == 0 {
		add("groups", "want at least one group")
	}
	groupNames := map[string]int{}
	for gi, g := range j.Groups {
		gp := fmt.Sprintf("groups[%d]", gi)
		if err := ValidateID(g.Name); err != nil {
			add(gp+".name", "%v", err)
		} else if prev, dup := groupNames[g.Name]; dup {
			add(gp+".name", "duplicate group name %q, also used by groups[%d]", g.Name, prev)
		} else {
			groupNames[g.Name] = gi
		}
		if g.Count != nil && (*g.Count < 0 || *g.Count > MaxCount) {
			add(gp+".count", "want 0 to %d, got %d", MaxCount, *g.Count)
		}
		for ci, c := range g.Constraints {
			errs = append(errs, validateConstraint(fmt.Sprintf("%s.constraints[%d]", gp, ci), c, constraintOperators)...)
		}
		if j.Type.OnEveryDevice() && len(g.Affinities) > 0 {
			add(gp+".affinities", "not used by %s jobs, which run on every feasible device", j.Type)
		}
		for ai, a := range g.Affinities {
			ap := fmt.Sprintf("%s.affinities[%d]", gp, ai)
			errs = append(errs, validateConstraint(ap, a.Constraint(), matchOperators)...)
			switch {
			case a.Weight == 0:
				add(ap+".weight", "required: a non-zero weight from -100 to 100")
			case a.Weight < -100 || a.Weight > 100:
				add(ap+".weight", "want -100 to 100, got %d", a.Weight)
			}
		}
		if j.Type.OnEveryDevice() && len(g.Spreads) > 0 {
			add(gp+".spreads", "not used by %s jobs, which run on every feasible device", j.Type)
		}
		spreadAttrs := map[string]int{}
		for si, sp := range g.Spreads {
			errs = append(errs, validateSpread(fmt.Sprintf("%s.spreads[%d]", gp, si), sp, spreadAttrs, si)...)
		}
		if d := g.Disconnect; d != nil {
			errs = append(errs, validateDisconnect(gp+".disconnect", *d, j.Type)...)
		}
		if u := g.Update; u != nil {
			errs = append(errs, validateUpdate(gp+".update", *u, j.Type, g)...)
		}
		if r := g.Reschedule; r != nil {
			errs = append(errs, validateReschedule(gp+".reschedule", *r, j.Type)...)
		}
		if len(g.Tasks) == 0 {
			add(gp+".tasks", "want at least one task")
		}
		taskNames := map[string]int{}
		for ti, t := range g.Tasks {
			tp := fmt.Sprintf("%s.tasks[%d]", gp, ti)
			if err := ValidateID(t.Name); err != nil {
				add(tp+".name", "%v", err)
			} else if prev, dup := taskNames[t.Name]; dup {
				add(tp+".name", "duplicate task name %q, also used by %s.tasks[%d]", t.Name, gp, prev)
			} else {
				taskNames[t.Name] = ti
			}
			errs = append(errs, validateTask(tp, t)...)
		}
	}
	return errors.Join(errs...)
}

// reconcileStrategies in the order error messages list them.
var reconcileStrategies = []string{ReconcileKeepOriginal, ReconcileKeepReplacement, ReconcileBestScore, ReconcileLongestRunning}

// validateDisconnect checks a group's disconnect policy at path dp.
func validateDisconnect(dp string, d Disconnect, t JobType) []error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	if d.LostAfter < 0 {
		add(dp+".lost_after", "want a positive duration, got %s", d.LostAfter.Std())
	}
	if d.StopAfter < 0 {
		add(dp+".stop_after", "want a positive duration, got %s", d.StopAfter.Std())
	}
	if d.Replace != nil && *d.Replace && t.OnEveryDevice() {
		add(dp+".replace", "not used by %s jobs, whose allocations are bound to their device and never replaced", t)
	}
	if d.Reconcile != "" && !slices.Contains(reconcileStrategies, d.Reconcile) {
		add(dp+".reconcile", "unknown strategy %q, want keep_original, keep_replacement, best_score or longest_running", d.Reconcile)
	}
	return errs
}

// validateConstraint checks a constraint (or an affinity's condition, with
// the operators it allows) at path cp.
func validateConstraint(cp string, c Constraint, allowed []string) []error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	if !slices.Contains(allowed, c.Operator) {
		add(cp+".operator", "unknown operator %q, want %s", c.Operator, strings.Join(allowed, ", "))
	}
	if c.Operator == OpDistinctHosts {
		if c.Attribute != "" {
			add(cp+".attribute", "not used by operator distinct_hosts")
		}
	} else if !attributePattern.MatchString(c.Attribute) {
		add(cp+".attribute", "unknown attribute %q, %s", c.Attribute, attributeHint)
	}
	if err := checkOperand(c.Operator, c.Value); err != "" {
		add(cp+".value", "%s", err)
	}
	return errs
}

// checkOperand says what is wrong with value as the operand of op, or "".
// Unknown operators are reported by the caller.
func checkOperand(op, value string) string {
	switch op {
	case OpLess, OpLessEqual, OpGreater, OpGreaterEqual:
		if _, err := ParseNumber(value); err != nil {
			return fmt.Sprintf("want a number for operator %s, got %q", op, value)
		}
	case OpVersion:
		if _, err := ParseVersionRange(value); err != nil {
			return fmt.Sprintf("want a version range such as \">= 1.2, < 2.0\" for operator version: %v", err)
		}
	case OpRegexp:
		if _, err := regexp.Compile(value); err != nil {
			return fmt.Sprintf("invalid regular expression for operator regexp: %v", err)
		}
	case OpSetContains, OpSetContainsAny:
		if len(SplitSet(value)) == 0 {
			return fmt.Sprintf("want a comma-separated list of values for operator %s", op)
		}
	case OpIsSet, OpIsNotSet:
		if value != "" {
			return fmt.Sprintf("not used by operator %s, got %q", op, value)
		}
	case OpDistinctHosts:
		if value != "" && value != "true" {
			return fmt.Sprintf("not used by operator distinct_hosts, got %q", value)
		}
	case OpDistinctProperty:
		if _, err := DistinctLimit(value); err != nil {
			return fmt.Sprintf("want the number of instances allowed per value (a positive integer, default 1) for operator distinct_property, got %q", value)
		}
	}
	return ""
}

// validateSpread checks a spread at path sp; attrs maps the attributes of the
// group's spreads seen so far to their index.
func validateSpread(sp string, s Spread, attrs map[string]int, si int) []error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	if !attributePattern.MatchString(s.Attribute) {
		add(sp+".attribute", "unknown attribute %q, %s", s.Attribute, attributeHint)
	} else if prev, dup := attrs[s.Attribute]; dup {
		add(sp+".attribute", "duplicate spread attribute %q, also used by spreads[%d]", s.Attribute, prev)
	} else {
		attrs[s.Attribute] = si
	}
	if s.Weight < 1 || s.Weight > 100 {
		add(sp+".weight", "want 1 to 100, got %d", s.Weight)
	}
	sum := 0
	values := map[string]int{}
	for ti, t := range s.Targets {
		tp := fmt.Sprintf("%s.targets[%d]", sp, ti)
		if t.Value == "" {
			add(tp+".value", "required")
		} else if prev, dup := values[t.Value]; dup {
			add(tp+".value", "duplicate target value %q, also used by targets[%d]", t.Value, prev)
		} else {
			values[t.Value] = ti
		}
		if t.Percent < 0 || t.Percent > 100 {
			add(tp+".percent", "want 0 to 100, got %d", t.Percent)
		}
		sum += t.Percent
	}
	if sum > 100 {
		add(sp+".targets", "percentages sum to %d, want at most 100", sum)
	}
	return errs
}

func validateTask(tp string, t Task) []error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	switch t.Driver {
	case DriverPodman:
		if t.Config.Image == "" {
			add(tp+".config.image", "required for driver podman")
		} else if strings.ContainsAny(t.Config.Image, " \t\n") {
			add(tp+".config.image", "invalid image reference %q", t.Config.Image)
		}
		switch t.Config.Network {
		case "", "bridge", "host":
		default:
			add(tp+".config.network", "unknown network %q, want bridge or host", t.Config.Network)
		}
	case DriverExec:
		if len(t.Config.Command) == 0 || t.Config.Command[0] == "" {
			add(tp+".config.command", "required for driver exec: the program and its arguments")
		}
		if t.Config.Image != "" {
			add(tp+".config.image", "not used by driver exec")
		}
		if t.Config.Network != "" {
			add(tp+".config.network", "not used by driver exec")
		}
	case "":
		add(tp+".driver", "required, want podman or exec")
	default:
		add(tp+".driver", "unknown driver %q, want podman or exec", t.Driver)
	}
	for k := range t.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			add(tp+".env", "invalid variable name %q", k)
		}
	}
	if t.Resources.CPU < 0 {
		add(tp+".resources.cpu", "want a positive number of MHz, got %d", t.Resources.CPU)
	}
	if t.Resources.Memory < 0 {
		add(tp+".resources.memory", "want a positive number of MB, got %d", t.Resources.Memory)
	}
	if t.Resources.Disk < 0 {
		add(tp+".resources.disk", "want a positive number of MB, got %d", t.Resources.Disk)
	}
	devices := map[string]int{}
	for di, d := range t.Resources.Devices {
		dp := fmt.Sprintf("%s.resources.devices[%d]", tp, di)
		if err := ValidateDeviceName(d.Name); err != nil {
			add(dp+".name", "%v", err)
		} else if prev, dup := devices[d.Name]; dup {
			add(dp+".name", "duplicate device %q, also requested by devices[%d]", d.Name, prev)
		} else {
			devices[d.Name] = di
		}
		if d.Count < 1 {
			add(dp+".count", "want 1 or more, got %d", d.Count)
		}
	}
	if r := t.Restart; r != nil {
		if r.Attempts < 0 {
			add(tp+".restart.attempts", "want 0 or more, got %d", r.Attempts)
		}
		if r.Delay < 0 {
			add(tp+".restart.delay", "want a positive duration, got %s", r.Delay.Std())
		}
		if r.Interval < 0 {
			add(tp+".restart.interval", "want a positive duration, got %s", r.Interval.Std())
		}
		switch r.Mode {
		case "", RestartFail, RestartDelay:
		default:
			add(tp+".restart.mode", "unknown mode %q, want fail or delay", r.Mode)
		}
	}
	return errs
}

// Digest returns the hex SHA-256 of a payload. The planner reports the digest
// of the submission a job status answers, so a client can tell that the
// status is about what it published.
func Digest(payload []byte) string {
	sum := sha256.Sum256(payload)
	return hex.EncodeToString(sum[:])
}

// SpecHash is a short content hash of a task, used by edged to notice that a
// running workload no longer matches its desired spec. Env is included in
// key order, so equal tasks always hash equal.
func SpecHash(t Task) string {
	b, _ := json.Marshal(t) // maps marshal in key order
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// GroupNames returns the group names in document order.
func (j Job) GroupNames() []string {
	out := make([]string, len(j.Groups))
	for i, g := range j.Groups {
		out[i] = g.Name
	}
	return out
}

// Equal reports whether two normalized jobs have the same content.
func (j Job) Equal(o Job) bool {
	a, _ := json.Marshal(j)
	b, _ := json.Marshal(o)
	return bytes.Equal(a, b)
}

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Equal reports whether two tasks have the same spec: it agrees with
// comparing their SpecHash (nil and empty lists and maps are equal, as in
// JSON), without encoding or hashing. The planner compares every allocation
// with its job this way.
func (t Task) Equal(o Task) bool {
	if t.Name != o.Name || t.Driver != o.Driver ||
		t.Config.Image != o.Config.Image || t.Config.Network != o.Config.Network ||
		!slices.Equal(t.Config.Command, o.Config.Command) ||
		len(t.Env) != len(o.Env) ||
		t.Resources.CPU != o.Resources.CPU || t.Resources.Memory != o.Resources.Memory || t.Resources.Disk != o.Resources.Disk ||
		!slices.Equal(t.Resources.Devices, o.Resources.Devices) {
		return false
	}
	for k, v := range t.Env {
		if w, ok := o.Env[k]; !ok || w != v {
			return false
		}
	}
	switch {
	case t.Restart == nil || o.Restart == nil:
		return t.Restart == nil && o.Restart == nil
	default:
		return *t.Restart == *o.Restart
	}
}

// ParseNumber reads the operand of a numeric comparison ("4", "2.5", "-1"):
// a finite decimal number.
func ParseNumber(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, fmt.Errorf("not a number: %q", s)
	}
	return f, nil
}

// SplitSet reads a comma-separated set ("a, b,c") into its items, without
// surrounding spaces and empty items.
func SplitSet(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// DistinctLimit reads the value of a distinct_property constraint: how many
// instances may share one value of the attribute, 1 when value is empty.
func DistinctLimit(value string) (int, error) {
	if value == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(value)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("want a positive integer, got %q", value)
	}
	return n, nil
}

var (
	deviceNamePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*(/[a-z0-9][a-z0-9_.:-]*){0,2}$`)
	usbNamePattern    = regexp.MustCompile(`^usb/[0-9a-f]{4}:[0-9a-f]{4}$`)
)

// ValidateDeviceName checks the name of a device resource, as tasks request
// it and devices report it: lowercase segments separated by "/", such as
// "nvidia/gpu", and for USB devices "usb/VENDOR:PRODUCT" with 4 lowercase hex
// digits each ("usb/1d6b:0002").
func ValidateDeviceName(name string) error {
	switch {
	case name == "":
		return errors.New("required, e.g. nvidia/gpu or usb/1d6b:0002")
	case strings.HasPrefix(name, "usb/") && !usbNamePattern.MatchString(name):
		return fmt.Errorf("want usb/VENDOR:PRODUCT with 4 lowercase hex digits each, e.g. usb/1d6b:0002, got %q", name)
	case !deviceNamePattern.MatchString(name):
		return fmt.Errorf("want a device name of lowercase letters, digits and . _ - : such as nvidia/gpu, got %q", name)
	}
	return nil
}

// SemVer is a dotted version: numeric segments ("1.2", "6.1.0", "2024.10"),
// optionally a pre-release after "-" ("1.0.0-rc.1", "6.1.0-18-amd64") and
// build metadata after "+", which is ignored ("6.1.21-v8+"). A leading "v" is
// allowed.
type SemVer struct {
	Segments   []uint64
	Prerelease []string // dot-separated identifiers; nil for a release
}

// ParseVersion reads a version; see SemVer.
func ParseVersion(s string) (SemVer, error) {
	var v SemVer
	rest := s
	if len(rest) > 1 && rest[0] == 'v' && rest[1] >= '0' && rest[1] <= '9' {
		rest = rest[1:]
	}
	rest, _, _ = strings.Cut(rest, "+")
	rest, pre, hasPre := strings.Cut(rest, "-")
	if rest == "" {
		return v, fmt.Errorf("invalid version %q: no number", s)
	}
	for seg := range strings.SplitSeq(rest, ".") {
		n, err := strconv.ParseUint(seg, 10, 64)
		if err != nil {
			return SemVer{}, fmt.Errorf("invalid version %q: segment %q is not a number", s, seg)
		}
		v.Segments = append(v.Segments, n)
	}
	if hasPre {
		for id := range strings.SplitSeq(pre, ".") {
			if id == "" || strings.IndexFunc(id, func(r rune) bool {
				return !(r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '-')
			}) >= 0 {
				return SemVer{}, fmt.Errorf("invalid version %q: bad pre-release %q", s, pre)
			}
			v.Prerelease = append(v.Prerelease, id)
		}
	}
	return v, nil
}

// compareSegments compares numeric segments, missing ones counting as 0, so
// that 1.2 equals 1.2.0.
func compareSegments(a, b []uint64) int {
	for i := range max(len(a), len(b)) {
		var x, y uint64
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if c := cmp.Compare(x, y); c != 0 {
			return c
		}
	}
	return 0
}

// Compare orders versions by semantic-versioning precedence: segments
// numerically, then a pre-release before the release, pre-releases
// identifier by identifier (numbers numerically and before words).
func (v SemVer) Compare(o SemVer) int {
	if c := compareSegments(v.Segments, o.Segments); c != 0 {
		return c
	}
	switch {
	case v.Prerelease == nil && o.Prerelease == nil:
		return 0
	case v.Prerelease == nil:
		return 1
	case o.Prerelease == nil:
		return -1
	}
	for i := range min(len(v.Prerelease), len(o.Prerelease)) {
		a, b := v.Prerelease[i], o.Prerelease[i]
		na, errA := strconv.ParseUint(a, 10, 64)
		nb, errB := strconv.ParseUint(b, 10, 64)
		var c int
		switch {
		case errA == nil && errB == nil:
			c = cmp.Compare(na, nb)
		case errA == nil:
			c = -1
		case errB == nil:
			c = 1
		default:
			c = strings.Compare(a, b)
		}
		if c != 0 {
			return c
		}
	}
	return cmp.Compare(len(v.Prerelease), len(o.Prerelease))
}

// VersionRange is a conjunction of version comparisons.
type VersionRange []VersionClause

// VersionClause is one comparison of a VersionRange. Op is one of =, !=, <,
// <=, >, >= and ~> (pessimistic: "~> 1.2" is ">= 1.2, < 2", "~> 1.2.3" is
// ">= 1.2.3, < 1.3").
type VersionClause struct {
	Op      string
	Version SemVer
}

var versionOps = []string{">=", "<=", "!=", "~>", "==", "=", ">", "<"} // longest first

// ParseVersionRange reads a version range: comma-separated clauses, each an
// optional operator (default =) and a version, e.g. ">= 1.2, < 2.0" or
// "~> 6.1".
func ParseVersionRange(s string) (VersionRange, error) {
	var r VersionRange
	for clause := range strings.SplitSeq(s, ",") {
		clause = strings.TrimSpace(clause)
		if clause == "" {
			return nil, fmt.Errorf("empty clause in %q", s)
		}
		op := "="
		for _, o := range versionOps {
			if rest, ok := strings.CutPrefix(clause, o); ok {
				op, clause = o, strings.TrimSpace(rest)
				break
			}
		}
		if op == "==" {
			op = "="
		}
		v, err := ParseVersion(clause)
		if err != nil {
			return nil, err
		}
		r = append(r, VersionClause{Op: op, Version: v})
	}
	return r, nil
}

// Contains reports whether v satisfies every clause. A clause whose version
// has no pre-release compares only the segments of v, so that the kernel
// "6.1.0-18-amd64" satisfies ">= 6.1"; one with a pre-release compares by
// full precedence ("1.0.0-rc.2" satisfies ">= 1.0.0-rc.1").
func (r VersionRange) Contains(v SemVer) bool {
	for _, c := range r {
		var d int
		if c.Version.Prerelease == nil {
			d = compareSegments(v.Segments, c.Version.Segments)
		} else {
			d = v.Compare(c.Version)
		}
		var ok bool
		switch c.Op {
		case "=":
			ok = d == 0
		case "!=":
			ok = d != 0
		case "<":
			ok = d < 0
		case "<=":
			ok = d <= 0
		case ">":
			ok = d > 0
		case ">=":
			ok = d >= 0
		case "~>":
			ok = d >= 0 && compareSegments(v.Segments, pessimisticBound(c.Version.Segments)) < 0
		}
		if !ok {
			return false
		}
	}
	return true
}

// pessimisticBound is the exclusive upper bound of "~> segs": the
// next-to-last segment bumped ("1.2.3" → 1.3, "1.2" → 2), or the only one.
func pessimisticBound(segs []uint64) []uint64 {
	i := max(len(segs)-2, 0)
	bound := slices.Clone(segs[:i+1])
	bound[i]++
	return bound
}
