package exec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/tether-edge/tether/edged/driver"
)

// recordVersion is bumped when the record format changes incompatibly.
const recordVersion = 1

// record is what the driver knows about one instance, in DIR/NAME.json.
type record struct {
	Version int               `json:"v"`
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels,omitempty"`
	Command []string          `json:"command"`
	// State is created (never started), running (was running when last
	// looked at; /proc decides) or exited.
	State      driver.State `json:"state"`
	PID        int          `json:"pid,omitempty"`
	StartTicks uint64       `json:"start_ticks,omitempty"`
	BootID     string       `json:"boot_id,omitempty"`
	StartedAt  time.Time    `json:"started_at,omitzero"`
	FinishedAt time.Time    `json:"finished_at,omitzero"`
	ExitCode   int          `json:"exit_code"`
	// Note says why a state is what it is when that is not obvious (start
	// failed, exit code unknown); it goes to the log, as driver.Instance
	// has no field for it.
	Note string `json:"note,omitempty"`
}

func (r *record) instance() driver.Instance {
	in := driver.Instance{
		ID:         r.Name,
		Name:       r.Name,
		Labels:     map[string]string{},
		State:      r.State,
		ExitCode:   r.ExitCode,
		StartedAt:  r.StartedAt,
		FinishedAt: r.FinishedAt,
	}
	for k, v := range r.Labels {
		in.Labels[k] = v
	}
	return in
}

// namePattern is driver.Spec's rule for names; it also keeps names from
// escaping the directory.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

func validName(name string) bool {
	return namePattern.MatchString(name) && name != "." && name != ".." && !strings.HasPrefix(name, ".")
}

func (d *Driver) recordPath(name string) string { return filepath.Join(d.dir, name+".json") }

// LogPath returns the file that holds the stdout and stderr of instance
// name.
func (d *Driver) LogPath(name string) string { return filepath.Join(d.dir, name+".log") }

// readRecord returns the record of name, or an error wrapping
// driver.ErrNotFound.
func (d *Driver) readRecord(name string) (*record, error) {
	if !validName(name) {
		return nil, fmt.Errorf("instance %q: %w", name, driver.ErrNotFound)
	}
	b, err := os.ReadFile(d.recordPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("instance %s: %w", name, driver.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read record: %w", err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse record %s: %w", d.recordPath(name), err)
	}
	if r.Version != recordVersion {
		return nil, fmt.Errorf("record %s has version %d, want %d", d.recordPath(name), r.Version, recordVersion)
	}
	return &r, nil
}

// writeRecord replaces the record atomically (temp file, fsync, rename) so
// a crash never leaves half a record.
func (d *Driver) writeRecord(r *record) error {
	r.Version = recordVersion
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode record %s: %w", r.Name, err)
	}
	path := d.recordPath(r.Name)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write record %s: %w", path, err)
	}
	return nil
}

// lock takes the directory's exclusive flock, which serialises every
// read-modify-write of records, within this process and across processes
// (each call opens its own file description, so goroutines exclude each
// other too).
func (d *Driver) lock() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(d.dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", d.dir, err)
	}
	return func() { f.Close() }, nil
}
