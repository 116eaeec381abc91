//go:build remote

package podman

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containers/podman/v4/pkg/bindings"
	"github.com/containers/podman/v4/pkg/bindings/containers"
	"github.com/containers/podman/v4/pkg/bindings/system"
	"github.com/containers/podman/v4/pkg/domain/entities"
	"github.com/containers/podman/v4/pkg/errorhandling"
	"github.com/containers/podman/v4/pkg/specgen"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

const (
	// serviceStartTimeout bounds the wait for a service to answer.
	serviceStartTimeout = 20 * time.Second
	// logSizeMax caps each container's log file (k8s-file driver): edge
	// devices have small disks and services run for months.
	logSizeMax = 16 << 20
	// Bounds of cgroup cpu.shares.
	minShares, maxShares = 2, 262144
)

// Driver runs tasks as Podman containers. It is safe for concurrent use.
type Driver struct {
	// conn carries the bindings' connection as context values; it is only
	// ever used for its values (see call), never for cancellation.
	conn context.Context
	svc  *service // nil unless Connect started the service
	log  zerolog.Logger

	closeOnce sync.Once
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Watcher = (*Driver)(nil)
)

// Connect reaches a Podman service: cfg.Socket; else $CONTAINER_HOST; else
// a `podman system service` it starts on DATADIR/podman.sock (or, if one
// already answers there, reuses). Every failure to reach Podman wraps
// ErrUnavailable.
func Connect(ctx context.Context, cfg Config) (*Driver, error) {
	log := cfg.Log // the caller adds the driver field
	uri, source := cfg.Socket, "config"
	if uri == "" {
		uri, source = os.Getenv("CONTAINER_HOST"), "CONTAINER_HOST"
	}
	if strings.HasPrefix(uri, "/") {
		uri = "unix://" + uri // a bare socket path, as people often write it
	}
	if uri != "" {
		// Bounded: a service that accepts but never answers must not hang
		// edged's startup.
		pctx, cancel := context.WithTimeout(ctx, serviceStartTimeout)
		conn, err := bindings.NewConnection(pctx, uri)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("%w: connect to %s (from %s): %w", ErrUnavailable, uri, source, err)
		}
		log.Info().Str("uri", uri).Str("from", source).Str("version", bindings.ServiceVersion(conn).String()).Msg("connected to podman")
		return &Driver{conn: conn, log: log}, nil
	}

	bin, err := osexec.LookPath("podman")
	if err != nil {
		return nil, fmt.Errorf("%w: no socket configured, CONTAINER_HOST unset, and podman is not in PATH", ErrUnavailable)
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("%w: no socket configured and no data dir to start a podman service in", ErrUnavailable)
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err == nil {
		err = os.MkdirAll(dir, 0o700)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: data dir: %w", ErrUnavailable, err)
	}
	sock := filepath.Join(dir, "podman.sock")
	if len(sock) > 107 { // sun_path holds 108 bytes with the NUL
		return nil, fmt.Errorf("%w: socket path %s is longer than 107 bytes; use a shorter data dir", ErrUnavailable, sock)
	}
	uri = "unix://" + sock

	// A service from an earlier edged may still answer (one that outlived
	// a crash): use it rather than hide it behind a second one.
	if _, err := os.Stat(sock); err == nil {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := bindings.NewConnection(pctx, uri)
		cancel()
		if err == nil {
			log.Warn().Str("uri", uri).Msg("reusing a podman service already listening; edged will not stop it")
			return &Driver{conn: conn, log: log}, nil
		}
	}

	logPath := filepath.Join(dir, "podman-service.log")
	_ = os.Truncate(logPath, 0)
	svc := newService(bin, sock, logPath, log)
	if err := svc.start(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	firstExited := svc.exited
	go svc.supervise()
	conn, err := waitReady(ctx, uri, firstExited)
	if err != nil {
		svc.stop()
		return nil, fmt.Errorf("%w: podman service on %s: %w; its log says: %s", ErrUnavailable, sock, err, svc.logTail())
	}
	log.Info().Str("uri", uri).Str("version", bindings.ServiceVersion(conn).String()).Msg("connected to own podman service")
	return &Driver{conn: conn, svc: svc, log: log}, nil
}

// waitReady polls the service until it answers a ping.
func waitReady(ctx context.Context, uri string, exited <-chan struct{}) (context.Context, error) {
	deadline := time.Now().Add(serviceStartTimeout)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := bindings.NewConnection(actx, uri)
		cancel()
		if err == nil {
			return conn, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no answer within %v: %w", serviceStartTimeout, err)
		}
		select {
		case <-exited:
			return nil, errors.New("service exited during startup")
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops the service Connect started, if any. It does not touch
// containers.
func (d *Driver) Close() error {
	d.closeOnce.Do(func() {
		if c, err := bindings.GetClient(d.conn); err == nil {
			c.Client.CloseIdleConnections()
		}
		if d.svc != nil {
			d.svc.stop()
		}
	})
	return nil
}

// Name returns "podman".
func (d *Driver) Name() string { return protocol.DriverPodman }

// callCtx gives the bindings the caller's deadline and cancellation with
// the connection's values: the bindings find their connection in the
// context they are called with.
type callCtx struct {
	context.Context
	conn context.Context
}

func (c callCtx) Value(key any) any {
	if v := c.Context.Value(key); v != nil {
		return v
	}
	return c.conn.Value(key)
}

func (d *Driver) call(ctx context.Context) context.Context {
	return callCtx{Context: ctx, conn: d.conn}
}

// Start creates the container and starts it. Mapping of the task:
//   - Config.Image must be in local storage (never pulled), else the error
//     wraps ErrImageNotFound; Config.Command replaces the image's command;
//     Config.Network "host" shares the host's network namespace.
//   - Env becomes the container's environment; Spec.Labels its labels.
//   - Resources.Memory (MB) is a hard memory limit. Resources.CPU (MHz)
//     becomes cpu.shares = MHz (clamped to 2..262144), as Nomad does: a
//     relative weight that only matters when the CPU is contended, so a
//     task never gets less than its share and may use idle CPU.
//   - No restart policy: edged decides about restarts.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) (driver.Instance, error) {
	task := spec.Task
	if task.Config.Image == "" {
		return driver.Instance{}, fmt.Errorf("start %s: task %s has no image", spec.Name, task.Name)
	}
	s := specgen.NewSpecGenerator(task.Config.Image, false)
	s.Name = spec.Name
	s.Labels = maps.Clone(spec.Labels)
	s.Env = maps.Clone(task.Env)
	if len(task.Config.Command) > 0 {
		s.Command = task.Config.Command
	}
	if task.Config.Network == "host" {
		s.NetNS = specgen.Namespace{NSMode: specgen.Host}
	}
	var res specs.LinuxResources
	if task.Resources.Memory > 0 {
		limit := int64(task.Resources.Memory) << 20
		res.Memory = &specs.LinuxMemory{Limit: &limit}
	}
	if task.Resources.CPU > 0 {
		shares := uint64(min(max(task.Resources.CPU, minShares), maxShares))
		res.CPU = &specs.LinuxCPU{Shares: &shares}
	}
	if res.Memory != nil || res.CPU != nil {
		s.ResourceLimits = &res
	}
	s.LogConfiguration = &specgen.LogConfig{Size: logSizeMax}

	created, err := containers.CreateWithSpec(d.call(ctx), s, nil)
	if err != nil {
		if cause(err) == "image not known" {
			return driver.Instance{}, fmt.Errorf("start %s: image %s: %w (edged never pulls; load it with podman load or podman import): %w", spec.Name, task.Config.Image, ErrImageNotFound, err)
		}
		return driver.Instance{}, fmt.Errorf("start %s: create container: %w", spec.Name, err)
	}
	for _, w := range created.Warnings {
		d.log.Warn().Str("instance", spec.Name).Str("warning", w).Msg("podman create")
	}
	inst := driver.Instance{ID: created.ID, Name: spec.Name, Labels: maps.Clone(spec.Labels), State: driver.StateCreated}
	if err := containers.Start(d.call(ctx), created.ID, nil); err != nil {
		// The container stays, in state created, for List to find.
		return inst, fmt.Errorf("start %s: start container %s: %w", spec.Name, shortID(created.ID), err)
	}
	d.log.Info().Str("instance", spec.Name).Str("id", shortID(created.ID)).Str("image", task.Config.Image).Msg("container started")
	// Report what List reports, so both agree to the second.
	list, err := d.list(ctx, map[string][]string{"id": {created.ID}})
	if err != nil || len(list) != 1 {
		// It was started; the next List tells the rest.
		d.log.Warn().Err(err).Str("instance", spec.Name).Msg("list container after start")
		inst.State, inst.StartedAt = driver.StateRunning, time.Now().UTC().Truncate(time.Second)
		return inst, nil
	}
	return list[0], nil
}

// List returns the containers with LabelAlloc and LabelDevice=device.
// Podman's list API reports StartedAt and FinishedAt in whole seconds, so
// both have one-second precision.
func (d *Driver) List(ctx context.Context, device string) ([]driver.Instance, error) {
	all, err := d.list(ctx, map[string][]string{"label": {driver.LabelAlloc, driver.LabelDevice + "=" + device}})
	if err != nil {
		return nil, err
	}
	// Podman ANDs label filters; check anyway, as the filter semantics
	// changed between Podman versions.
	out := all[:0]
	for _, in := range all {
		if _, ok := in.Labels[driver.LabelAlloc]; ok && in.Labels[driver.LabelDevice] == device {
			out = append(out, in)
		}
	}
	return out, nil
}

func (d *Driver) list(ctx context.Context, filters map[string][]string) ([]driver.Instance, error) {
	all := true
	ctrs, err := containers.List(d.call(ctx), &containers.ListOptions{All: &all, Filters: filters})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]driver.Instance, 0, len(ctrs))
	for _, c := range ctrs {
		out = append(out, toInstance(c))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func toInstance(c entities.ListContainer) driver.Instance {
	in := driver.Instance{
		ID:        c.ID,
		Labels:    maps.Clone(c.Labels),
		State:     mapState(c.State),
		ExitCode:  int(c.ExitCode),
		StartedAt: unixTime(c.StartedAt),
	}
	if len(c.Names) > 0 {
		in.Name = c.Names[0]
	}
	if in.Labels == nil {
		in.Labels = map[string]string{}
	}
	// Podman keeps the previous run's ExitedAt while a container runs.
	if in.State == driver.StateExited {
		in.FinishedAt = unixTime(c.ExitedAt)
	}
	return in
}

// mapState maps libpod's container states.
func mapState(s string) driver.State {
	switch s {
	case "running", "stopping":
		return driver.StateRunning
	case "exited", "stopped":
		return driver.StateExited
	case "created", "configured", "initialized":
		return driver.StateCreated
	default: // paused, removing, unknown
		return driver.StateUnknown
	}
}

// unixTime converts the list API's Unix seconds; Podman reports the zero
// time as a large negative number.
func unixTime(sec int64) time.Time {
	if sec <= 0 {
		return time.Time{}
	}
	return time.Unix(sec, 0).UTC()
}

// Stop stops the container: its stop signal (SIGTERM unless the image says
// otherwise), then SIGKILL after timeout (rounded up to whole seconds).
// Stopping a stopped container is not an error.
func (d *Driver) Stop(ctx context.Context, id string, timeout time.Duration) error {
	secs := uint((timeout + time.Second - 1) / time.Second)
	if err := containers.Stop(d.call(ctx), id, &containers.StopOptions{Timeout: &secs}); err != nil {
		if isNotFound(err) {
			return fmt.Errorf("stop %s: %w", id, driver.ErrNotFound)
		}
		return fmt.Errorf("stop %s: %w", id, err)
	}
	return nil
}

// Remove kills the container if it runs (no grace period: callers that
// want one Stop first) and removes it with its anonymous volumes.
func (d *Driver) Remove(ctx context.Context, id string) error {
	force, volumes, timeout := true, true, uint(0)
	if _, err := containers.Remove(d.call(ctx), id, &containers.RemoveOptions{Force: &force, Volumes: &volumes, Timeout: &timeout}); err != nil {
		if isNotFound(err) {
			return fmt.Errorf("remove %s: %w", id, driver.ErrNotFound)
		}
		return fmt.Errorf("remove %s: %w", id, err)
	}
	return nil
}

// isNotFound recognises Podman's "no such container" answer.
func isNotFound(err error) bool {
	var em *errorhandling.ErrorModel
	return errors.As(err, &em) && em.ResponseCode == http.StatusNotFound
}

// cause returns the API's machine-readable cause of an error, if any.
func cause(err error) string {
	var em *errorhandling.ErrorModel
	if errors.As(err, &em) {
		return em.Because
	}
	return ""
}

// Watch follows Podman's event stream and signals when a container with
// LabelAlloc dies or is removed, until ctx ends; then it closes the
// channel. When the stream breaks it reconnects with backoff and asks for
// the events since the break, which Podman replays from its event log.
func (d *Driver) Watch(ctx context.Context) (<-chan struct{}, error) {
	out := make(chan struct{}, 1)
	go d.watch(ctx, out)
	return out, nil
}

func (d *Driver) watch(ctx context.Context, out chan struct{}) {
	defer close(out)
	since := time.Now()
	backoff := time.Second
	for {
		began := time.Now()
		err := d.streamEvents(ctx, since, out)
		if ctx.Err() != nil {
			return
		}
		since = time.Now().Add(-time.Second)
		if time.Since(began) > time.Minute {
			backoff = time.Second
		}
		d.log.Warn().Err(err).Dur("retry_in", backoff).Msg("podman event stream ended")
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// streamEvents follows one event stream until it breaks or ctx ends.
func (d *Driver) streamEvents(ctx context.Context, since time.Time, out chan struct{}) error {
	events := make(chan entities.Event)
	errc := make(chan error, 1)
	sinceArg, stream := since.Format(time.RFC3339Nano), true
	opts := &system.EventsOptions{
		Filters: map[string][]string{"type": {"container"}, "event": {"died", "remove"}},
		Since:   &sinceArg,
		Stream:  &stream,
	}
	// Events returns when ctx ends (the request is bound to it), after
	// closing events if it got as far as streaming.
	go func() { errc <- system.Events(d.call(ctx), events, nil, opts) }()
	for {
		select {
		case e, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if _, ours := e.Actor.Attributes[driver.LabelAlloc]; !ours {
				continue
			}
			d.log.Debug().Str("id", shortID(e.Actor.ID)).Str("event", string(e.Action)).Msg("podman event")
			select {
			case out <- struct{}{}:
			default:
			}
		case err := <-errc:
			if err == nil {
				err = errors.New("stream closed by podman")
			}
			return err
		}
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
