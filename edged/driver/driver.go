// Package driver defines what edged needs from a workload runtime (Podman
// containers, plain processes, or an in-memory fake) and the labels by which
// edged finds its workloads again after a restart.
//
// Drivers are stateless towards edged: every call to List reads the truth
// from the runtime itself, never from memory, so a restarted edged adopts
// what is still running.
package driver

import (
	"context"
	"errors"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// Labels edged puts on every workload it creates.
const (
	LabelAlloc = "tether.alloc"
	LabelJob   = "tether.job"
	LabelGroup = "tether.group"
	LabelTask  = "tether.task"
	// LabelSpec holds protocol.SpecHash of the task the workload was created
	// from; a different hash in the desired state means "recreate".
	LabelSpec = "tether.spec"
	// LabelDevice names the device that created the workload, so several
	// edged instances sharing one runtime (tests, simulators) never touch
	// each other's workloads.
	LabelDevice = "tether.device"
)

// ErrNotFound is returned by Stop and Remove for an instance that does not
// exist (any more).
var ErrNotFound = errors.New("instance not found")

// State is the runtime state of an instance.
type State string

// Instance states.
const (
	StateCreated State = "created" // exists, never started
	StateRunning State = "running"
	StateExited  State = "exited" // stopped, exited or crashed
	StateUnknown State = "unknown"
)

// Spec is what edged asks a driver to run.
type Spec struct {
	// Name is unique in the whole runtime (several devices may share one
	// Podman), made of letters, digits, '.', '_' and '-'. edged builds it
	// from the allocation id, which already includes a hash of the device.
	Name string
	// Labels must be stored with the instance and returned by List.
	Labels map[string]string
	// Task is the task to run; the driver reads Config, Env and Resources.
	Task protocol.Task
}

// Instance is one workload as the runtime reports it.
type Instance struct {
	ID       string // runtime id (container id, or the name for exec)
	Name     string
	Labels   map[string]string
	State    State
	ExitCode int
	// StartedAt and FinishedAt may be whole seconds (Podman); tell
	// instances apart by ID, not by time.
	StartedAt  time.Time // zero if never started
	FinishedAt time.Time // zero if never exited
}

// Driver runs instances of tasks. Implementations are safe for concurrent
// use; edged calls them from its single reconcile worker.
type Driver interface {
	// Name is the driver name used in task specs ("podman", "exec").
	Name() string
	// List returns every instance that carries LabelAlloc and whose
	// LabelDevice equals device, in any state.
	List(ctx context.Context, device string) ([]Instance, error)
	// Start creates an instance from spec and starts it. An error after
	// creation leaves the instance in place for List to find.
	Start(ctx context.Context, spec Spec) (Instance, error)
	// Stop stops a running instance, waiting up to timeout before killing
	// it. Stopping an instance that is not running is not an error.
	Stop(ctx context.Context, id string, timeout time.Duration) error
	// Remove deletes an instance, killing it first if it still runs.
	Remove(ctx context.Context, id string) error
}

// Watcher is implemented by drivers that can signal changes (an instance
// exited) sooner than edged's periodic resync would notice them.
type Watcher interface {
	// Watch sends on the returned channel, without blocking, whenever
	// something may have changed, until ctx ends; then it closes the
	// channel.
	Watch(ctx context.Context) (<-chan struct{}, error)
}
