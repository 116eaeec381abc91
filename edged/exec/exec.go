package exec

import (
	"context"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

// DefaultPath is the PATH a process gets unless its task sets one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ExitCodeUnknown is reported for a process that died while this edged was
// not its parent, so nobody could collect its exit status.
const ExitCodeUnknown = -1

// killWait bounds the wait for a process to die after SIGKILL; only a
// process stuck in the kernel (state D) takes longer.
const killWait = 10 * time.Second

// pollInterval is how often /proc is checked while waiting for a process
// this edged is not the parent of.
const pollInterval = 20 * time.Millisecond

// Driver runs tasks as processes. Create it with New.
type Driver struct {
	dir  string
	log  zerolog.Logger
	boot string

	mu       sync.Mutex
	children map[string]*child // by instance name; processes this Driver waits for
	watchers map[chan struct{}]struct{}
}

// child is a process started by this Driver, whose exit status it collects.
type child struct {
	pid  int
	done chan struct{} // closed when Wait returned; code and finished are set then
	code int
	at   time.Time
}

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Watcher = (*Driver)(nil)
)

// New returns a driver keeping its records and logs in dir, which it
// creates. Records left by an earlier edged in dir are adopted.
func New(dir string, log zerolog.Logger) (*Driver, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("exec driver dir: %w", err)
	}
	return &Driver{
		dir:      dir,
		log:      log, // the caller adds the driver field
		boot:     bootID(),
		children: map[string]*child{},
		watchers: map[chan struct{}]struct{}{},
	}, nil
}

// Dir returns the directory holding the records and logs.
func (d *Driver) Dir() string { return d.dir }

// Name returns "exec".
func (d *Driver) Name() string { return protocol.DriverExec }

// Start writes the instance's record, then starts Task.Config.Command with
// Task.Env on top of PATH=DefaultPath, in its own session, with stdin from
// /dev/null and stdout and stderr appended to LogPath(name). If the program
// cannot be started the record stays, in state created, and Start returns
// the error.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) (driver.Instance, error) {
	if err := ctx.Err(); err != nil {
		return driver.Instance{}, err
	}
	if !validName(spec.Name) {
		return driver.Instance{}, fmt.Errorf("start: invalid instance name %q", spec.Name)
	}
	cmdline := spec.Task.Config.Command
	if len(cmdline) == 0 || cmdline[0] == "" {
		return driver.Instance{}, fmt.Errorf("start %s: task %s has no command", spec.Name, spec.Task.Name)
	}
	unlock, err := d.lock()
	if err != nil {
		return driver.Instance{}, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	defer unlock()
	if _, err := d.readRecord(spec.Name); !errors.Is(err, driver.ErrNotFound) {
		if err == nil {
			err = errors.New("instance already exists")
		}
		return driver.Instance{}, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	rec := &record{Name: spec.Name, Labels: spec.Labels, Command: cmdline, State: driver.StateCreated}
	if err := d.writeRecord(rec); err != nil {
		return driver.Instance{}, fmt.Errorf("start %s: %w", spec.Name, err)
	}

	ch, err := d.spawn(rec, spec.Task)
	if err != nil {
		rec.Note = err.Error()
		if werr := d.writeRecord(rec); werr != nil {
			d.log.Error().Err(werr).Str("instance", rec.Name).Msg("record start failure")
		}
		return rec.instance(), fmt.Errorf("start %s: %w", spec.Name, err)
	}
	if err := d.writeRecord(rec); err != nil {
		// The process runs but a restarted edged would not find it: kill it
		// rather than leave an orphan nobody manages.
		_ = syscall.Kill(-ch.pid, syscall.SIGKILL)
		return driver.Instance{}, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	d.log.Info().Str("instance", rec.Name).Int("pid", rec.PID).Strs("command", cmdline).Msg("process started")
	return rec.instance(), nil
}

// spawn starts the process of rec and the goroutine that waits for it, and
// fills in rec's process fields.
func (d *Driver) spawn(rec *record, task protocol.Task) (*child, error) {
	env := map[string]string{"PATH": DefaultPath}
	for k, v := range task.Env {
		env[k] = v
	}
	prog, err := lookPath(task.Config.Command[0], env["PATH"])
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(d.LogPath(rec.Name), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	// The child holds its own copy of the descriptor.
	defer logf.Close()

	cmd := osexec.Command(prog, task.Config.Command[1:]...)
	cmd.Args[0] = task.Config.Command[0]
	cmd.Env = envList(env)
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	// A new session: the process leaves edged's process group and
	// controlling terminal, so it survives edged stopping, and it leads its
	// own process group, which Stop signals as a whole.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("exec %s: %w", prog, err)
	}
	pid := cmd.Process.Pid
	// The process cannot be reaped before Wait below, so its /proc entry
	// exists (at least as a zombie) here.
	info, err := readProc(pid)
	if err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = cmd.Wait()
		return nil, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	rec.State = driver.StateRunning
	rec.PID = pid
	rec.StartTicks = info.startTicks
	rec.BootID = d.boot
	rec.StartedAt = time.Now().UTC()
	rec.Note = ""

	ch := &child{pid: pid, done: make(chan struct{})}
	d.mu.Lock()
	d.children[rec.Name] = ch
	d.mu.Unlock()
	go d.wait(rec.Name, cmd, ch, info.startTicks)
	return ch, nil
}

// wait collects the exit status of a child, records it and tells watchers.
func (d *Driver) wait(name string, cmd *osexec.Cmd, ch *child, ticks uint64) {
	err := cmd.Wait()
	ch.at = time.Now().UTC()
	ch.code = ExitCodeUnknown
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
		ch.code = exitCodeFromWaitStatus(ws)
	} else if err != nil {
		d.log.Warn().Err(err).Str("instance", name).Msg("wait for process")
	}
	// Close done before taking the lock: List and Stop may hold the lock
	// while they wait for done.
	close(ch.done)
	if err := d.recordExit(name, ch.pid, ticks, ch.code, ch.at, ""); err != nil {
		d.log.Error().Err(err).Str("instance", name).Msg("record exit")
	}
	// Forget the child only once its exit is on disk: until then List must
	// find it here and take the code from it, not conclude from /proc that
	// the process died without a parent (exit code unknown).
	d.mu.Lock()
	if d.children[name] == ch {
		delete(d.children, name)
	}
	d.mu.Unlock()
	d.log.Info().Str("instance", name).Int("pid", ch.pid).Int("code", ch.code).Msg("process exited")
	d.notify()
}

// recordExit marks the record of name exited, if it still describes the
// process pid/ticks (it may have been removed, or replaced by a new
// instance of the same name).
func (d *Driver) recordExit(name string, pid int, ticks uint64, code int, at time.Time, note string) error {
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	rec, err := d.readRecord(name)
	if errors.Is(err, driver.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if rec.PID != pid || rec.StartTicks != ticks {
		return nil
	}
	rec.State, rec.ExitCode, rec.FinishedAt, rec.Note = driver.StateExited, code, at, note
	return d.writeRecord(rec)
}

// List reads every record and checks the processes against /proc.
func (d *Driver) List(ctx context.Context, device string) ([]driver.Instance, error) {
	unlock, err := d.lock()
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	defer unlock()
	paths, err := filepath.Glob(filepath.Join(d.dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	sort.Strings(paths)
	var out []driver.Instance
	for _, p := range paths {
		name := strings.TrimSuffix(filepath.Base(p), ".json")
		rec, err := d.readRecord(name)
		if errors.Is(err, driver.ErrNotFound) {
			continue // removed meanwhile, or not a name this driver makes
		}
		if err != nil {
			// One unreadable record must not blind edged to all the others.
			d.log.Warn().Err(err).Str("instance", name).Msg("skipping unreadable record")
			continue
		}
		if _, ok := rec.Labels[driver.LabelAlloc]; !ok || rec.Labels[driver.LabelDevice] != device {
			continue
		}
		if err := d.refreshLocked(ctx, rec); err != nil {
			return nil, fmt.Errorf("list: %w", err)
		}
		out = append(out, rec.instance())
	}
	return out, nil
}

// refreshLocked settles a running record against /proc: still running, or
// exited (with the exit code when it can be known), which it then writes.
// The caller holds the lock.
func (d *Driver) refreshLocked(ctx context.Context, rec *record) error {
	if rec.State != driver.StateRunning {
		return nil
	}
	alive, info := d.alive(rec)
	if alive {
		return nil
	}
	code, at, note := ExitCodeUnknown, time.Now().UTC(), ""
	d.mu.Lock()
	ch := d.children[rec.Name]
	d.mu.Unlock()
	switch {
	case ch != nil && ch.pid == rec.PID:
		// Our child: Wait is collecting it right now and closes done
		// before it needs the lock.
		select {
		case <-ch.done:
			code, at = ch.code, ch.at
		case <-ctx.Done():
			return ctx.Err()
		}
	case info != nil && info.state == 'Z' && info.waitStatus >= 0:
		// A zombie whose parent is not this edged still shows its status.
		code = exitCodeFromWaitStatus(syscall.WaitStatus(info.waitStatus))
		note = "exited while edged was not its parent; exit code read from the zombie process"
	default:
		note = "exited while edged was not its parent; exit code unknown"
	}
	rec.State, rec.ExitCode, rec.FinishedAt, rec.Note = driver.StateExited, code, at, note
	if note != "" {
		d.log.Info().Str("instance", rec.Name).Int("pid", rec.PID).Int("code", code).Str("note", note).Msg("process found exited")
	}
	return d.writeRecord(rec)
}

// alive reports whether the process of a running record still runs. info
// is the process as /proc shows it when the pid still exists and is the
// same process (possibly a zombie), nil otherwise.
func (d *Driver) alive(rec *record) (bool, *procInfo) {
	if rec.PID <= 0 || (rec.BootID != "" && rec.BootID != d.boot) {
		return false, nil
	}
	info, err := readProc(rec.PID)
	if err != nil {
		if !errors.Is(err, errNoProcess) {
			d.log.Warn().Err(err).Str("instance", rec.Name).Msg("check process")
		}
		return false, nil
	}
	if info.startTicks != rec.StartTicks {
		return false, nil // the pid was recycled
	}
	return !info.dead(), &info
}

// Stop sends SIGTERM to the instance's process group, waits up to timeout
// for the process to exit, then sends SIGKILL. Once the process is gone
// the rest of its group gets SIGKILL too, so nothing it spawned lingers.
func (d *Driver) Stop(ctx context.Context, id string, timeout time.Duration) error {
	rec, err := d.current(ctx, id)
	if err != nil {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	if rec.State != driver.StateRunning {
		return nil
	}
	d.log.Info().Str("instance", id).Int("pid", rec.PID).Dur("timeout", timeout).Msg("stopping process")
	d.signal(rec, syscall.SIGTERM)
	if !d.waitDead(ctx, rec, timeout) {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("stop %s: %w", id, err)
		}
		d.log.Warn().Str("instance", id).Int("pid", rec.PID).Msg("process ignored SIGTERM; killing")
		d.signal(rec, syscall.SIGKILL)
		if !d.waitDead(ctx, rec, killWait) {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("stop %s: %w", id, err)
			}
			return fmt.Errorf("stop %s: pid %d still alive %v after SIGKILL", id, rec.PID, killWait)
		}
	}
	_ = syscall.Kill(-rec.PID, syscall.SIGKILL) // leftovers of the group; ESRCH when none
	if _, err := d.current(ctx, id); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	return nil
}

// Remove kills the instance's process group if it still runs and deletes
// its record and log.
func (d *Driver) Remove(ctx context.Context, id string) error {
	rec, err := d.current(ctx, id)
	if err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if rec.State == driver.StateRunning {
		d.signal(rec, syscall.SIGKILL)
		if !d.waitDead(ctx, rec, killWait) {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("remove %s: %w", id, err)
			}
			return fmt.Errorf("remove %s: pid %d still alive %v after SIGKILL", id, rec.PID, killWait)
		}
	}
	unlock, err := d.lock()
	if err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	defer unlock()
	cur, err := d.readRecord(id)
	if err != nil && !errors.Is(err, driver.ErrNotFound) {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if cur == nil || cur.PID != rec.PID || cur.StartTicks != rec.StartTicks {
		// Removed, or replaced by a new instance, while we were killing.
		return fmt.Errorf("remove %s: %w", id, driver.ErrNotFound)
	}
	if err := os.Remove(d.recordPath(id)); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	if err := os.Remove(d.LogPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn().Err(err).Str("instance", id).Msg("remove log")
	}
	d.log.Info().Str("instance", id).Msg("instance removed")
	return nil
}

// current reads the record of id and settles its state against /proc.
func (d *Driver) current(ctx context.Context, id string) (*record, error) {
	unlock, err := d.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	rec, err := d.readRecord(id)
	if err != nil {
		return nil, err
	}
	if err := d.refreshLocked(ctx, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// signal sends sig to the process group of rec, after checking that the
// pid still is rec's process. The check and the kill are not atomic, but
// the kernel does not reuse a pid while its group exists, and a whole
// cycle of pids within that window is not a practical concern.
func (d *Driver) signal(rec *record, sig syscall.Signal) {
	if alive, _ := d.alive(rec); !alive {
		return
	}
	if err := syscall.Kill(-rec.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		d.log.Warn().Err(err).Str("instance", rec.Name).Int("pid", rec.PID).Str("signal", sig.String()).Msg("signal process group")
	}
}

// waitDead waits up to timeout for the process of rec to exit and reports
// whether it did. For a child it waits on Wait; for an adopted process it
// polls /proc, as nothing else tells when a non-child exits.
func (d *Driver) waitDead(ctx context.Context, rec *record, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	d.mu.Lock()
	ch := d.children[rec.Name]
	d.mu.Unlock()
	if ch != nil && ch.pid == rec.PID {
		select {
		case <-ch.done:
			return true
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if alive, _ := d.alive(rec); !alive {
			return true
		}
		select {
		case <-tick.C:
		case <-timer.C:
			alive, _ := d.alive(rec)
			return !alive
		case <-ctx.Done():
			return false
		}
	}
}

// Watch signals, without blocking, whenever a process this driver started
// exits, until ctx ends; then it closes the channel. Processes adopted from
// an earlier edged are not watched: edged's periodic resync finds them.
func (d *Driver) Watch(ctx context.Context) (<-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	d.mu.Lock()
	d.watchers[ch] = struct{}{}
	d.mu.Unlock()
	context.AfterFunc(ctx, func() {
		d.mu.Lock()
		delete(d.watchers, ch)
		close(ch) // under the lock, so no notify can send on it after
		d.mu.Unlock()
	})
	return ch, nil
}

func (d *Driver) notify() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for ch := range d.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// lookPath finds prog in path (the task's PATH, not edged's) the way a
// shell does; a name with a slash is used as it is.
func lookPath(prog, path string) (string, error) {
	if strings.Contains(prog, "/") {
		if err := executable(prog); err != nil {
			return "", fmt.Errorf("program %s: %w", prog, err)
		}
		return prog, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue // an empty entry would mean the working directory, "/"
		}
		p := filepath.Join(dir, prog)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("program %s not found in PATH %s", prog, path)
}

func executable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Close waits, up to a few seconds, until the exit of every process that
// has already ended is written to its record. Processes still running are
// left alone: they outlive edged by design.
func (d *Driver) Close() error {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		busy := false
		d.mu.Lock()
		for _, ch := range d.children {
			select {
			case <-ch.done:
				busy = true // exited; its record is being written
			default:
			}
		}
		d.mu.Unlock()
		if !busy {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
