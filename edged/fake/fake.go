package fake

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

// Exit codes the fake reports for instances it ends itself, chosen to match
// what Podman reports for a process ended by that signal (128 + signal).
const (
	ExitCodeStopped = 143 // SIGTERM
	ExitCodeKilled  = 137 // SIGKILL
)

// Outcome is what a started instance does by itself.
type Outcome struct {
	// Exits says whether the instance exits by itself; false means it runs
	// until stopped, removed or killed.
	Exits bool
	// After is how long after its start the instance exits.
	After time.Duration
	// Code is the exit code it exits with.
	Code int
}

// Behavior decides, for every started instance, whether it exits by itself.
// It runs on the goroutine that calls Start, with no lock held.
type Behavior func(spec driver.Spec) Outcome

// Options configure a fake runtime.
type Options struct {
	// Name is the driver name, "podman" when empty, so the fake can stand in
	// for either real driver.
	Name string
	// Behavior decides how started instances behave; nil means
	// ShellBehavior, which reads the task's command.
	Behavior Behavior
	// StartError, when set, is asked before every start; an error it
	// returns fails Start after the instance was created, leaving it in
	// state created the way Podman does when a container cannot start.
	StartError func(spec driver.Spec) error
	// StartLatency is how long Start takes before the instance runs, as
	// pulling and starting a container would (the fleet simulator). Start
	// returns ctx's error if ctx ends first, having created nothing.
	StartLatency time.Duration
	// Now is the clock for StartedAt and FinishedAt; time.Now when nil.
	// Timers for Behavior always use real time.
	Now func() time.Time
	Log zerolog.Logger
}

// Runtime is the shared in-memory state behind one or more Driver values.
type Runtime struct {
	opts Options

	mu        sync.Mutex
	instances map[string]*instance // by id
	watchers  map[*watcher]struct{}
}

type instance struct {
	driver.Instance
	timer *time.Timer
}

type watcher struct {
	ch chan struct{}
}

// Driver is one edged's view of a Runtime. It is safe for concurrent use.
type Driver struct {
	rt *Runtime
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Watcher = (*Driver)(nil)
)

// New returns a driver over a new, empty runtime.
func New(opts Options) *Driver {
	if opts.Name == "" {
		opts.Name = protocol.DriverPodman
	}
	if opts.Behavior == nil {
		opts.Behavior = ShellBehavior
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Driver{rt: &Runtime{
		opts:      opts,
		instances: map[string]*instance{},
		watchers:  map[*watcher]struct{}{},
	}}
}

// Reopen returns a new Driver value over the same runtime, which is what
// edged gets when it restarts while its workloads keep running.
func (d *Driver) Reopen() *Driver { return &Driver{rt: d.rt} }

// Name returns the configured driver name.
func (d *Driver) Name() string { return d.rt.opts.Name }

// List returns the instances labelled with LabelAlloc and device.
func (d *Driver) List(ctx context.Context, device string) ([]driver.Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rt := d.rt
	rt.mu.Lock()
	defer rt.mu.Unlock()
	var out []driver.Instance
	for _, in := range rt.instances {
		if _, ok := in.Labels[driver.LabelAlloc]; !ok || in.Labels[driver.LabelDevice] != device {
			continue
		}
		out = append(out, in.snapshot())
	}
	sortInstances(out)
	return out, nil
}

// Start creates and starts an instance.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) (driver.Instance, error) {
	if err := ctx.Err(); err != nil {
		return driver.Instance{}, err
	}
	rt := d.rt
	if rt.opts.StartLatency > 0 {
		t := time.NewTimer(rt.opts.StartLatency)
		select {
		case <-ctx.Done():
			t.Stop()
			return driver.Instance{}, ctx.Err()
		case <-t.C:
		}
	}
	// Ask the hooks before taking the lock: they are caller code.
	var startErr error
	if rt.opts.StartError != nil {
		startErr = rt.opts.StartError(spec)
	}
	outcome := rt.opts.Behavior(spec)

	rt.mu.Lock()
	defer rt.mu.Unlock()
	for _, in := range rt.instances {
		if in.Name == spec.Name {
			return driver.Instance{}, fmt.Errorf("start %s: name already in use by %s", spec.Name, in.ID)
		}
	}
	in := &instance{Instance: driver.Instance{
		ID:     newID(),
		Name:   spec.Name,
		Labels: maps.Clone(spec.Labels),
		State:  driver.StateCreated,
	}}
	if in.Labels == nil {
		in.Labels = map[string]string{}
	}
	rt.instances[in.ID] = in
	if startErr != nil {
		return in.snapshot(), fmt.Errorf("start %s: %w", spec.Name, startErr)
	}
	in.State = driver.StateRunning
	in.StartedAt = rt.opts.Now()
	if outcome.Exits {
		in.timer = time.AfterFunc(outcome.After, func() { rt.exit(in, outcome.Code) })
	}
	rt.opts.Log.Debug().Str("instance", in.ID).Str("name", in.Name).Bool("exits", outcome.Exits).
		Dur("after", outcome.After).Int("code", outcome.Code).Msg("fake instance started")
	return in.snapshot(), nil
}

// Stop marks a running instance exited with ExitCodeStopped. Like a process
// that honours SIGTERM, the fake never needs the timeout.
func (d *Driver) Stop(ctx context.Context, id string, _ time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.rt.exitByName("stop", id, ExitCodeStopped)
}

// Remove deletes an instance, running or not.
func (d *Driver) Remove(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	rt := d.rt
	rt.mu.Lock()
	in := rt.lookup(id)
	if in == nil {
		rt.mu.Unlock()
		return fmt.Errorf("remove %s: %w", id, driver.ErrNotFound)
	}
	if in.timer != nil {
		in.timer.Stop()
	}
	delete(rt.instances, in.ID)
	rt.mu.Unlock()
	rt.notify()
	return nil
}

// Watch signals whenever an instance exits or is removed, until ctx ends;
// then it closes the channel.
func (d *Driver) Watch(ctx context.Context) (<-chan struct{}, error) {
	rt := d.rt
	w := &watcher{ch: make(chan struct{}, 1)}
	rt.mu.Lock()
	rt.watchers[w] = struct{}{}
	rt.mu.Unlock()
	context.AfterFunc(ctx, func() {
		rt.mu.Lock()
		delete(rt.watchers, w)
		// Closing under the lock: notify sends under it too, so no send can
		// race with the close.
		close(w.ch)
		rt.mu.Unlock()
	})
	return w.ch, nil
}

// Kill makes an instance exit with exitCode, as a crash would. It accepts
// an id or a name and returns driver.ErrNotFound for neither.
func (d *Driver) Kill(name string, exitCode int) error {
	return d.rt.exitByName("kill", name, exitCode)
}

// exitByName makes the instance with this id or name exit with code, for
// Stop and Kill (op names the call in the error).
func (rt *Runtime) exitByName(op, idOrName string, code int) error {
	rt.mu.Lock()
	in := rt.lookup(idOrName)
	if in == nil {
		rt.mu.Unlock()
		return fmt.Errorf("%s %s: %w", op, idOrName, driver.ErrNotFound)
	}
	changed := rt.exitLocked(in, code)
	rt.mu.Unlock()
	if changed {
		rt.notify()
	}
	return nil
}

// Instances returns every instance in the runtime, of all devices and with
// or without edged's labels, sorted by name.
func (d *Driver) Instances() []driver.Instance {
	rt := d.rt
	rt.mu.Lock()
	defer rt.mu.Unlock()
	out := make([]driver.Instance, 0, len(rt.instances))
	for _, in := range rt.instances {
		out = append(out, in.snapshot())
	}
	sortInstances(out)
	return out
}

// exit is the Behavior timer's way to end an instance.
func (rt *Runtime) exit(in *instance, code int) {
	rt.mu.Lock()
	// The instance may have been removed since the timer was set.
	changed := rt.instances[in.ID] == in && rt.exitLocked(in, code)
	rt.mu.Unlock()
	if changed {
		rt.notify()
	}
}

// exitLocked marks in exited unless it already is; it reports whether it
// changed anything.
func (rt *Runtime) exitLocked(in *instance, code int) bool {
	if in.State != driver.StateRunning {
		return false
	}
	if in.timer != nil {
		in.timer.Stop()
	}
	in.State = driver.StateExited
	in.ExitCode = code
	in.FinishedAt = rt.opts.Now()
	rt.opts.Log.Debug().Str("instance", in.ID).Str("name", in.Name).Int("code", code).Msg("fake instance exited")
	return true
}

// lookup finds an instance by id or, like Podman, by name.
func (rt *Runtime) lookup(idOrName string) *instance {
	if in, ok := rt.instances[idOrName]; ok {
		return in
	}
	for _, in := range rt.instances {
		if in.Name == idOrName {
			return in
		}
	}
	return nil
}

// notify wakes every watcher without blocking: a watcher with a signal
// pending needs no second one.
func (rt *Runtime) notify() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	for w := range rt.watchers {
		select {
		case w.ch <- struct{}{}:
		default:
		}
	}
}

// snapshot copies the instance so callers never share the label map.
func (in *instance) snapshot() driver.Instance {
	out := in.Instance
	out.Labels = maps.Clone(in.Labels)
	return out
}

func sortInstances(out []driver.Instance) {
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}
