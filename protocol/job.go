package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
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
)

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
	// 1. It is ignored for system jobs.
	Count       *int         `json:"count,omitempty"`
	Constraints []Constraint `json:"constraints,omitempty"`
	Tasks       []Task       `json:"tasks"`
}

// Instances is the number of instances the group asks for (service and batch).
func (g Group) Instances() int {
	if g.Count == nil {
		return 1
	}
	return *g.Count
}

// Constraint restricts the devices a group may be placed on.
type Constraint struct {
	Attribute string `json:"attribute"`
	Operator  string `json:"operator,omitempty"`
	Value     string `json:"value"`
}

// String renders the constraint as operators read it: "${device.arch} = arm64".
func (c Constraint) String() string {
	op := c.Operator
	if op == "" {
		op = "="
	}
	return c.Attribute + " " + op + " " + c.Value
}

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

// Resources a task reserves on its device.
type Resources struct {
	CPU    int `json:"cpu"`    // MHz
	Memory int `json:"memory"` // MB
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

// DefaultRestart returns the restart policy used when a task has none.
func DefaultRestart(t JobType) RestartPolicy {
	if t == JobBatch {
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

// Normalize fills in defaults: type service, count 1, default resources and
// restart policy. It is idempotent.
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
				g.Constraints[ci].Operator = "="
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

var operators = map[string]bool{"=": true, "==": true, "!=": true}

// Validate reports every problem of a normalized job, each with its path.
func (j Job) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) { errs = append(errs, fieldErr(path, format, args...)) }
	if err := ValidateID(j.ID); err != nil {
		add("id", "%v", err)
	}
	switch j.Type {
	case JobService, JobBatch, JobSystem:
	default:
		add("type", "unknown job type %q, want service, batch or system", j.Type)
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
		if g.Count != nil && (*g.Count < 0 || *g.Count > 10000) {
			add(gp+".count", "want 0 to 10000, got %d", *g.Count)
		}
		for ci, c := range g.Constraints {
			cp := fmt.Sprintf("%s.constraints[%d]", gp, ci)
			if !attributePattern.MatchString(c.Attribute) {
				add(cp+".attribute", "unknown attribute %q, want ${device.arch|os|kernel|id|hostname|cpu.cores|cpu.mhz|memory} or ${device.labels.KEY}", c.Attribute)
			}
			if !operators[c.Operator] {
				add(cp+".operator", "unknown operator %q, want =, == or !=", c.Operator)
			}
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
