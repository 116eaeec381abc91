package exec_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/driver/drivertest"
	"github.com/tether-edge/tether/edged/exec"
	"github.com/tether-edge/tether/protocol"
)

// helperEnv makes the test binary act as a short-lived edged: it starts
// the spec in $TETHER_EXEC_HELPER_DIR and exits at once, orphaning the
// process the way an edged restart does.
const helperEnv = "TETHER_EXEC_HELPER_SPEC"

func TestMain(m *testing.M) {
	if raw := os.Getenv(helperEnv); raw != "" {
		os.Exit(runHelper(raw))
	}
	os.Exit(m.Run())
}

func runHelper(raw string) int {
	var spec driver.Spec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	d, err := exec.New(os.Getenv("TETHER_EXEC_HELPER_DIR"), zerolog.Nop())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := d.Start(context.Background(), spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func newDriver(t *testing.T, dir string) *exec.Driver {
	t.Helper()
	d, err := exec.New(dir, zerolog.New(zerolog.NewTestWriter(t)))
	if err != nil {
		t.Fatal(err)
	}
	// Registered after the TempDir: runs before it is removed.
	t.Cleanup(func() { d.Close() })
	return d
}

func task(cmd ...string) protocol.Task {
	return protocol.Task{Driver: protocol.DriverExec, Config: protocol.TaskConfig{Command: cmd}}
}

func TestContract(t *testing.T) {
	t.Parallel()
	broken := task("/nonexistent/program")
	exit3 := task("/bin/sh", "-c", "sleep 0.2; exit $CODE")
	exit3.Env = map[string]string{"CODE": "3"}
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		return newDriver(t, t.TempDir())
	}, drivertest.Options{
		Long:   task("sleep", "3600"),
		Exit3:  exit3,
		Broken: &broken,
		Reopen: func(t *testing.T, d driver.Driver) driver.Driver {
			return newDriver(t, d.(*exec.Driver).Dir())
		},
	})
}

func spec(name string, t protocol.Task) driver.Spec {
	return driver.Spec{
		Name:   name,
		Labels: map[string]string{driver.LabelAlloc: "a-" + name, driver.LabelDevice: "dev", driver.LabelTask: name},
		Task:   t,
	}
}

// startOrphan starts spec through a separate process that exits right
// away, so the test process is not the instance's parent.
func startOrphan(t *testing.T, dir string, s driver.Spec) {
	t.Helper()
	raw, _ := json.Marshal(s)
	cmd := osexec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(raw), "TETHER_EXEC_HELPER_DIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper edged: %v\n%s", err, out)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func listOne(t *testing.T, d *exec.Driver, name string) driver.Instance {
	t.Helper()
	list, err := d.List(context.Background(), "dev")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range list {
		if in.Name == name {
			return in
		}
	}
	t.Fatalf("%s not listed: %+v", name, list)
	return driver.Instance{}
}

// TestAdoptOrphan runs the real restart case: the edged that started the
// process is gone, a new one lists it running, stops it, and reports the
// exit code as unknown.
func TestAdoptOrphan(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	startOrphan(t, dir, spec("orphan", task("sleep", "3600")))
	d := newDriver(t, dir)
	in := listOne(t, d, "orphan")
	if in.State != driver.StateRunning {
		t.Fatalf("orphan state %s, want running", in.State)
	}
	if err := d.Stop(context.Background(), "orphan", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	in = listOne(t, d, "orphan")
	// Reaped by init: unknown. If init is slow to reap, the zombie still
	// shows the real status, 143 (SIGTERM).
	if in.State != driver.StateExited || (in.ExitCode != exec.ExitCodeUnknown && in.ExitCode != 143) {
		t.Errorf("after Stop: %+v, want exited with -1 or 143", in)
	}
	if in.FinishedAt.IsZero() {
		t.Errorf("FinishedAt is zero")
	}
	if err := d.Remove(context.Background(), "orphan"); err != nil {
		t.Fatal(err)
	}
}

// TestOrphanDiesUnwatched: a process that exits while no edged is its
// parent is found exited, with the exit code unknown.
func TestOrphanDiesUnwatched(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	marker := filepath.Join(t.TempDir(), "ran")
	startOrphan(t, dir, spec("short", task("/bin/sh", "-c", "echo hello; touch "+marker+"; exit 5")))
	waitFor(t, "orphan to run", func() bool { _, err := os.Stat(marker); return err == nil })
	d := newDriver(t, dir)
	var in driver.Instance
	waitFor(t, "orphan listed exited", func() bool {
		in = listOne(t, d, "short")
		return in.State == driver.StateExited
	})
	if in.ExitCode != exec.ExitCodeUnknown && in.ExitCode != 5 {
		t.Errorf("ExitCode = %d, want -1 (or 5 from a zombie)", in.ExitCode)
	}
	// The answer is written down: a second look agrees.
	if again := listOne(t, d, "short"); again.ExitCode != in.ExitCode || !again.FinishedAt.Equal(in.FinishedAt) {
		t.Errorf("second List %+v differs from first %+v", again, in)
	}
	b, err := os.ReadFile(d.LogPath("short"))
	if err != nil || strings.TrimSpace(string(b)) != "hello" {
		t.Errorf("log = %q, %v; want hello", b, err)
	}
}

// TestRecycledPID: a record whose pid now belongs to another process (here:
// the test itself, with a different start time) is exited, and Stop must
// not signal that other process.
func TestRecycledPID(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rec := map[string]any{
		"v": 1, "name": "recycled", "command": []string{"sleep", "1"}, "state": "running",
		"labels": map[string]string{driver.LabelAlloc: "a", driver.LabelDevice: "dev"},
		"pid":    os.Getpid(), "start_ticks": 1, "started_at": time.Now().Add(-time.Hour),
	}
	raw, _ := json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(dir, "recycled.json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	d := newDriver(t, dir)
	if err := d.Stop(context.Background(), "recycled", time.Second); err != nil {
		t.Fatal(err)
	}
	in := listOne(t, d, "recycled")
	if in.State != driver.StateExited || in.ExitCode != exec.ExitCodeUnknown {
		t.Errorf("recycled pid: %+v, want exited -1", in)
	}
	// Still here to tell: the test process was not killed.
}

func TestEnvPathAndLog(t *testing.T) {
	t.Parallel()
	d := newDriver(t, t.TempDir())
	tk := task("sh", "-c", `echo "$GREETING|$PATH"; echo err >&2`)
	tk.Env = map[string]string{"GREETING": "hi"}
	if _, err := d.Start(context.Background(), spec("env", tk)); err != nil {
		t.Fatal(err)
	}
	var in driver.Instance
	waitFor(t, "exit", func() bool { in = listOne(t, d, "env"); return in.State == driver.StateExited })
	if in.ExitCode != 0 {
		t.Errorf("ExitCode = %d", in.ExitCode)
	}
	b, _ := os.ReadFile(d.LogPath("env"))
	if want := "hi|" + exec.DefaultPath + "\nerr\n"; string(b) != want {
		t.Errorf("log = %q, want %q", b, want)
	}

	// A task's own PATH is where its program is looked up.
	tk = task("sleep", "1")
	tk.Env = map[string]string{"PATH": t.TempDir()}
	if _, err := d.Start(context.Background(), spec("nopath", tk)); err == nil || !strings.Contains(err.Error(), "not found in PATH") {
		t.Errorf("Start with a PATH lacking sleep: %v, want not found", err)
	}
}

func TestStopKillsGroupAndIgnoredTERM(t *testing.T) {
	t.Parallel()
	d := newDriver(t, t.TempDir())
	pidFile := filepath.Join(t.TempDir(), "pid")
	// The shell ignores TERM and leaves a grandchild in its group.
	tk := task("/bin/sh", "-c", `trap "" TERM; sleep 3600 & echo $! > `+pidFile+`; while :; do sleep 0.05; done`)
	if _, err := d.Start(context.Background(), spec("stubborn", tk)); err != nil {
		t.Fatal(err)
	}
	var grandchild int
	waitFor(t, "grandchild pid", func() bool {
		b, err := os.ReadFile(pidFile)
		grandchild, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && grandchild > 0
	})
	start := time.Now()
	if err := d.Stop(context.Background(), "stubborn", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("Stop took %v, less than the timeout although TERM is ignored", took)
	}
	in := listOne(t, d, "stubborn")
	if in.State != driver.StateExited || in.ExitCode != 137 {
		t.Errorf("after Stop: %+v, want exited 137 (SIGKILL)", in)
	}
	// The grandchild (not our child: its parent, the shell, is dead, so it
	// was reparented and reaped elsewhere) must be gone or a zombie.
	waitFor(t, "grandchild gone", func() bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(grandchild) + "/stat")
		return err != nil || strings.Contains(string(b), ") Z ")
	})
}

func TestStartRejects(t *testing.T) {
	t.Parallel()
	d := newDriver(t, t.TempDir())
	ctx := context.Background()
	for _, name := range []string{"", "..", "../x", "a/b", ".hidden"} {
		if _, err := d.Start(ctx, spec(name, task("sleep", "1"))); err == nil {
			t.Errorf("Start(%q) succeeded", name)
		}
	}
	if _, err := d.Start(ctx, spec("nocmd", task())); err == nil {
		t.Errorf("Start without command succeeded")
	}
	if _, err := d.Start(ctx, spec("dup", task("sleep", "3600"))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Remove(context.Background(), "dup") })
	if _, err := d.Start(ctx, spec("dup", task("sleep", "3600"))); err == nil {
		t.Errorf("second Start of the same name succeeded")
	}
	if err := d.Stop(ctx, "../../etc/passwd", time.Second); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("Stop of a path-like id: %v, want ErrNotFound", err)
	}
}
