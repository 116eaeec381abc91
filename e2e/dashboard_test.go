package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// chromiumBin is Debian's Chromium, which the browser tests drive through
// playwright-core (which must never download a browser of its own).
const chromiumBin = "/usr/bin/chromium"

// TestDashboardInBrowser runs the dashboard's browser tests
// (dashboard/test/*.test.mjs, node:test): the real tether binary serves the
// page, headless Chromium loads it, and the tests follow a device and a job,
// a broker restart, and 10,000 synthetic devices. Screenshots go to
// ARTIFACTS_DIR, or to a new temporary folder the output names.
func TestDashboardInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	missing := func(msg string) {
		t.Helper()
		msg += ": the dashboard's browser tests need Node 20 or later, npm and Debian's chromium"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	for _, need := range []struct{ what, path string }{{"node", "node"}, {"npm", "npm"}, {"Chromium", chromiumBin}} {
		if _, err := exec.LookPath(need.path); err != nil {
			missing(need.what + " is not installed (" + need.path + ")")
		}
	}
	// playwright-core wants Node 20; Debian 12's own nodejs is 18.
	if out, err := exec.Command("node", "--version").Output(); err != nil {
		missing("node --version: " + err.Error())
	} else if v := strings.TrimSpace(string(out)); nodeMajor(v) < 20 {
		missing("node is " + v)
	}
	dir, err := filepath.Abs("../dashboard")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	if stale(filepath.Join(dir, "node_modules", ".package-lock.json"), filepath.Join(dir, "package-lock.json")) {
		stream(ctx, t, dir, nil, "npm", "ci", "--no-audit", "--no-fund")
	}
	stream(ctx, t, dir, nil, "npm", "run", "--silent", "check-vendor")

	start := time.Now()
	stream(ctx, t, dir, []string{"TETHER_BIN=" + bin("tether"), "CHROMIUM_BIN=" + chromiumBin},
		"node", "--test", "--test-concurrency=1", "--test-reporter=spec", "test/")
	t.Logf("browser tests took %s", time.Since(start).Round(100*time.Millisecond))
}

// nodeMajor is the major version in "v20.20.2", or 0.
func nodeMajor(v string) int {
	major, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0
	}
	return n
}

// stale reports whether the installed packages are missing or older than
// the lock file (npm writes node_modules/.package-lock.json on install).
func stale(installed, lock string) bool {
	a, err := os.Stat(installed)
	if err != nil {
		return true
	}
	b, err := os.Stat(lock)
	return err != nil || b.ModTime().After(a.ModTime())
}

// stream runs a command in dir, logging its output line by line as it
// comes, and fails the test if it does not exit 0. The command and its
// children (tether dev, Chromium) run in their own process group, which is
// killed if ctx ends first.
func stream(ctx context.Context, t *testing.T, dir string, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	t.Logf("$ %s %s", name, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	lines := make(chan struct{})
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			t.Log(sc.Text())
		}
	}()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var err error
	select {
	case err = <-waited:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		err = errors.Join(ctx.Err(), <-waited)
	}
	pw.Close()
	<-lines
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
}
