package drivertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

// Options adapt the suite to one driver.
type Options struct {
	// Long is a task that runs until it is stopped (busybox "sleep 3600").
	Long protocol.Task
	// Exit3 is a task that exits by itself with code 3 within a few
	// seconds. Giving the code through Env (sh -c 'exit $CODE') also checks
	// that Env reaches the workload.
	Exit3 protocol.Task
	// Broken, when set, is a task whose Start fails after the instance was
	// created (a program that does not exist). The suite then checks that
	// Start returns an error, that List still finds the instance, not
	// running, and that Remove deletes it.
	Broken *protocol.Task
	// Reopen returns a second driver value over the same runtime as d, as
	// edged has after a restart. Nil calls newDriver again, which suits
	// drivers that keep no state of their own (Podman).
	Reopen func(t *testing.T, d driver.Driver) driver.Driver
	// NewDevice returns a device id no other test uses; the default is
	// random. Podman tests use it to register a cleanup of the device's
	// containers.
	NewDevice func(t *testing.T) string
	// Timeout bounds every wait for the runtime; default 30s.
	Timeout time.Duration
	// StopTimeout is passed to Stop; default 2s.
	StopTimeout time.Duration
}

// Run runs the contract suite. newDriver is called once per subtest (the
// subtests run in parallel, each on its own device id) and must register
// any cleanup of its driver on t.
func Run(t *testing.T, newDriver func(t *testing.T) driver.Driver, opts Options) {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 2 * time.Second
	}
	if opts.NewDevice == nil {
		opts.NewDevice = func(*testing.T) string { return "dt-" + randomHex(6) }
	}
	if opts.Reopen == nil {
		opts.Reopen = func(t *testing.T, _ driver.Driver) driver.Driver { return newDriver(t) }
	}
	s := &suite{opts: opts, newDriver: newDriver}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, h *harness)
	}{
		{"StartList", s.startList},
		{"DeviceIsolation", s.deviceIsolation},
		{"ExitCode", s.exitCode},
		{"StopRemove", s.stopRemove},
		{"RemoveRunning", s.removeRunning},
		{"Unknown", s.unknown},
		{"Adopt", s.adopt},
		{"Watch", s.watch},
		{"Broken", s.broken},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, s.harness(t))
		})
	}
}

type suite struct {
	opts      Options
	newDriver func(t *testing.T) driver.Driver
}

// harness is one subtest's driver and device.
type harness struct {
	t      *testing.T
	opts   Options
	d      driver.Driver
	device string
}

func (s *suite) harness(t *testing.T) *harness {
	return &harness{t: t, opts: s.opts, d: s.newDriver(t), device: s.opts.NewDevice(t)}
}

func (s *suite) startList(t *testing.T, h *harness) {
	spec := h.spec("long", h.device, h.opts.Long)
	inst := h.start(spec)
	if inst.ID == "" {
		t.Fatalf("Start returned an instance without ID: %+v", inst)
	}
	if inst.Name != spec.Name {
		t.Errorf("Start returned name %q, want %q", inst.Name, spec.Name)
	}
	got := h.waitState(inst.ID, driver.StateRunning)
	if got.Name != spec.Name {
		t.Errorf("List name = %q, want %q", got.Name, spec.Name)
	}
	for k, v := range spec.Labels {
		if got.Labels[k] != v {
			t.Errorf("List label %s = %q, want %q (labels %v)", k, got.Labels[k], v, got.Labels)
		}
	}
	if got.StartedAt.IsZero() {
		t.Errorf("running instance has zero StartedAt")
	}
	if !got.FinishedAt.IsZero() {
		t.Errorf("running instance has FinishedAt %v, want zero", got.FinishedAt)
	}
}

func (s *suite) deviceIsolation(t *testing.T, h *harness) {
	other := h.opts.NewDevice(t)
	mine := h.start(h.spec("mine", h.device, h.opts.Long))
	theirs := h.start(h.spec("theirs", other, h.opts.Long))
	// Carries this device's label but not LabelAlloc: not edged's, so List
	// must not report it.
	foreign := h.spec("foreign", h.device, h.opts.Long)
	delete(foreign.Labels, driver.LabelAlloc)
	h.start(foreign)

	h.waitState(mine.ID, driver.StateRunning)
	assertIDs(t, h.list(h.device), h.device, mine.ID)
	assertIDs(t, h.list(other), other, theirs.ID)
}

func (s *suite) exitCode(t *testing.T, h *harness) {
	inst := h.start(h.spec("exit3", h.device, h.opts.Exit3))
	got := h.waitState(inst.ID, driver.StateExited)
	if got.ExitCode != 3 {
		t.Errorf("ExitCode = %d, want 3", got.ExitCode)
	}
	if got.StartedAt.IsZero() || got.FinishedAt.IsZero() {
		t.Errorf("exited instance: StartedAt %v, FinishedAt %v, want both set", got.StartedAt, got.FinishedAt)
	}
	if got.FinishedAt.Before(got.StartedAt) {
		t.Errorf("FinishedAt %v before StartedAt %v", got.FinishedAt, got.StartedAt)
	}
}

func (s *suite) stopRemove(t *testing.T, h *harness) {
	inst := h.start(h.spec("stop", h.device, h.opts.Long))
	h.waitState(inst.ID, driver.StateRunning)
	if err := h.d.Stop(h.ctx(), inst.ID, h.opts.StopTimeout); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	// Stop returns once the instance is stopped: no polling here.
	got, ok := find(h.list(h.device), inst.ID)
	if !ok {
		t.Fatalf("stopped instance %s not listed", inst.ID)
	}
	if got.State != driver.StateExited {
		t.Errorf("after Stop: state %s, want %s", got.State, driver.StateExited)
	}
	if got.FinishedAt.IsZero() {
		t.Errorf("after Stop: FinishedAt is zero")
	}
	if err := h.d.Stop(h.ctx(), inst.ID, h.opts.StopTimeout); err != nil {
		t.Errorf("Stop of a stopped instance: %v, want nil", err)
	}
	if err := h.d.Remove(h.ctx(), inst.ID); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, ok := find(h.list(h.device), inst.ID); ok {
		t.Errorf("removed instance %s still listed", inst.ID)
	}
	if err := h.d.Remove(h.ctx(), inst.ID); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("second Remove: %v, want ErrNotFound", err)
	}
	if err := h.d.Stop(h.ctx(), inst.ID, h.opts.StopTimeout); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Stop of a removed instance: %v, want ErrNotFound", err)
	}
}

func (s *suite) removeRunning(t *testing.T, h *harness) {
	inst := h.start(h.spec("rmrun", h.device, h.opts.Long))
	h.waitState(inst.ID, driver.StateRunning)
	if err := h.d.Remove(h.ctx(), inst.ID); err != nil {
		t.Fatalf("Remove of a running instance: %v", err)
	}
	if _, ok := find(h.list(h.device), inst.ID); ok {
		t.Errorf("removed instance %s still listed", inst.ID)
	}
}

func (s *suite) unknown(t *testing.T, h *harness) {
	id := h.device + "-never-created"
	if err := h.d.Stop(h.ctx(), id, h.opts.StopTimeout); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Stop(unknown) = %v, want ErrNotFound", err)
	}
	if err := h.d.Remove(h.ctx(), id); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Remove(unknown) = %v, want ErrNotFound", err)
	}
	if got := h.list(h.device); len(got) != 0 {
		t.Errorf("List of an unused device = %v, want none", got)
	}
}

func (s *suite) adopt(t *testing.T, h *harness) {
	inst := h.start(h.spec("adopt", h.device, h.opts.Long))
	before := h.waitState(inst.ID, driver.StateRunning)

	// A new driver value over the same runtime: edged after a restart.
	h2 := &harness{t: t, opts: h.opts, d: h.opts.Reopen(t, h.d), device: h.device}
	got, ok := find(h2.list(h.device), inst.ID)
	if !ok {
		t.Fatalf("restarted driver does not list running instance %s", inst.ID)
	}
	if got.State != driver.StateRunning {
		t.Errorf("adopted instance state %s, want running", got.State)
	}
	if !got.StartedAt.Equal(before.StartedAt) {
		t.Errorf("adopted instance StartedAt %v, want %v unchanged (restarted?)", got.StartedAt, before.StartedAt)
	}
	for k, v := range before.Labels {
		if got.Labels[k] != v {
			t.Errorf("adopted instance label %s = %q, want %q", k, got.Labels[k], v)
		}
	}
	// The new driver can manage what the old one started.
	if err := h2.d.Stop(h2.ctx(), inst.ID, h.opts.StopTimeout); err != nil {
		t.Fatalf("Stop through the restarted driver: %v", err)
	}
	if got, _ := find(h2.list(h.device), inst.ID); got.State != driver.StateExited {
		t.Errorf("after Stop through the restarted driver: state %s, want exited", got.State)
	}
	if err := h2.d.Remove(h2.ctx(), inst.ID); err != nil {
		t.Fatalf("Remove through the restarted driver: %v", err)
	}
}

func (s *suite) watch(t *testing.T, h *harness) {
	w, ok := h.d.(driver.Watcher)
	if !ok {
		t.Skipf("driver %s does not implement driver.Watcher", h.d.Name())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := w.Watch(ctx)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	inst := h.start(h.spec("watch", h.device, h.opts.Exit3))
	// Signals may also come from other tests sharing the runtime, so each
	// one only means "look": pass once a look after a signal finds our
	// instance exited.
	deadline := time.NewTimer(h.opts.Timeout)
	defer deadline.Stop()
	for {
		select {
		case _, open := <-ch:
			if !open {
				t.Fatalf("watch channel closed before ctx ended")
			}
			if got, ok := find(h.list(h.device), inst.ID); ok && got.State == driver.StateExited {
				waitClosed(t, ch, cancel, h.opts.Timeout)
				return
			}
		case <-deadline.C:
			got, _ := find(h.list(h.device), inst.ID)
			t.Fatalf("no watch signal after the instance exited within %v (now %+v)", h.opts.Timeout, got)
		}
	}
}

// waitClosed ends the watch and waits for its channel to close: edged
// ranges over it, so a channel left open would leak that goroutine.
func waitClosed(t *testing.T, ch <-chan struct{}, cancel context.CancelFunc, timeout time.Duration) {
	t.Helper()
	cancel()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case _, open := <-ch:
			if !open {
				return
			}
		case <-deadline.C:
			t.Fatalf("watch channel still open %v after ctx ended", timeout)
		}
	}
}

func (s *suite) broken(t *testing.T, h *harness) {
	if h.opts.Broken == nil {
		t.Skip("no Broken task given")
	}
	spec := h.spec("broken", h.device, *h.opts.Broken)
	_, err := h.d.Start(h.ctx(), spec)
	if err == nil {
		t.Fatalf("Start of a broken task succeeded")
	}
	t.Logf("Start error (expected): %v", err)
	var got driver.Instance
	for _, in := range h.list(h.device) {
		if in.Name == spec.Name {
			got = in
		}
	}
	if got.ID == "" {
		t.Fatalf("a failed start must leave the instance for List; none named %s", spec.Name)
	}
	if got.State == driver.StateRunning {
		t.Errorf("failed instance is listed running")
	}
	if err := h.d.Remove(h.ctx(), got.ID); err != nil {
		t.Fatalf("Remove of the failed instance: %v", err)
	}
	if _, ok := find(h.list(h.device), got.ID); ok {
		t.Errorf("removed instance %s still listed", got.ID)
	}
}

// spec builds a spec with every label edged sets, named uniquely for the
// device so tests sharing one runtime never collide.
func (h *harness) spec(suffix, device string, task protocol.Task) driver.Spec {
	if task.Name == "" {
		task.Name = suffix
	}
	return driver.Spec{
		Name: device + "-" + suffix,
		Labels: map[string]string{
			driver.LabelAlloc:  device + "-alloc-" + suffix,
			driver.LabelJob:    "contract",
			driver.LabelGroup:  "g",
			driver.LabelTask:   task.Name,
			driver.LabelSpec:   protocol.SpecHash(task),
			driver.LabelDevice: device,
		},
		Task: task,
	}
}

// start starts spec and removes the instance when the test ends.
func (h *harness) start(spec driver.Spec) driver.Instance {
	h.t.Helper()
	inst, err := h.d.Start(h.ctx(), spec)
	if err != nil {
		h.t.Fatalf("Start %s: %v", spec.Name, err)
	}
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), h.opts.Timeout)
		defer cancel()
		if err := h.d.Remove(ctx, inst.ID); err != nil && !errors.Is(err, driver.ErrNotFound) {
			h.t.Errorf("cleanup: Remove %s: %v", inst.ID, err)
		}
	})
	return inst
}

func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.Timeout)
	h.t.Cleanup(cancel)
	return ctx
}

func (h *harness) list(device string) []driver.Instance {
	h.t.Helper()
	out, err := h.d.List(h.ctx(), device)
	if err != nil {
		h.t.Fatalf("List %s: %v", device, err)
	}
	return out
}

// waitState polls List until instance id is in state want.
func (h *harness) waitState(id string, want driver.State) driver.Instance {
	h.t.Helper()
	deadline := time.Now().Add(h.opts.Timeout)
	var last driver.Instance
	for {
		got, ok := find(h.list(h.device), id)
		if ok && got.State == want {
			return got
		}
		last = got
		if time.Now().After(deadline) {
			h.t.Fatalf("instance %s not %s within %v; last seen %+v (listed %v)", id, want, h.opts.Timeout, last, ok)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func find(list []driver.Instance, id string) (driver.Instance, bool) {
	for _, in := range list {
		if in.ID == id {
			return in, true
		}
	}
	return driver.Instance{}, false
}

func assertIDs(t *testing.T, list []driver.Instance, device string, want ...string) {
	t.Helper()
	var got []string
	for _, in := range list {
		got = append(got, in.ID)
		if in.Labels[driver.LabelDevice] != device {
			t.Errorf("List(%s) returned %s labelled device %q", device, in.ID, in.Labels[driver.LabelDevice])
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List(%s) ids = %v, want %v", device, got, want)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
