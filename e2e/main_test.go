package e2e

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// podmanTags are the build tags the Podman bindings need (kept in step with
// Taskfile.yml).
const podmanTags = "remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp"

var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tether-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	for _, name := range []string{"tether", "edged"} {
		cmd := exec.Command("go", "build", "-tags", podmanTags, "-o", filepath.Join(dir, name), "../cmd/"+name)
		cmd.Env = append(os.Environ(), "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", name, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func bin(name string) string { return filepath.Join(binDir, name) }

// proc is a long-running binary whose output is captured line by line.
type proc struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	done  chan struct{}
}

func start(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	p := &proc{t: t, name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin(name), args...)
	p.cmd.Env = append(os.Environ(), env...)
	pr, pw := io.Pipe()
	p.cmd.Stdout = pw
	p.cmd.Stderr = pw
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
	}()
	go func() {
		p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			p.mu.Lock()
			t.Logf("--- output of %s %s:\n%s", name, strings.Join(args, " "), strings.Join(p.lines, "\n"))
			p.mu.Unlock()
		}
	})
	return p
}

// stop sends SIGINT and waits.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// kill ends the process at once, like a power cut for a daemon.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// waitLine returns the first output line with the prefix, waiting for it.
func (p *proc) waitLine(prefix string) string {
	p.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for _, l := range p.lines {
			if strings.HasPrefix(l, prefix) {
				p.mu.Unlock()
				return l
			}
		}
		p.mu.Unlock()
		select {
		case <-p.done:
			p.t.Fatalf("%s exited before printing %q", p.name, prefix)
		case <-time.After(50 * time.Millisecond):
		}
	}
	p.t.Fatalf("%s never printed %q", p.name, prefix)
	return ""
}

// result of a CLI run.
type result struct {
	code           int
	stdout, stderr string
}

// run runs a CLI command to completion.
func run(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin(name), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	t.Logf("$ %s %s (exit %d)\n%s%s", name, strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// eventually polls cond until it holds, failing after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// devServer starts `tether dev` on free ports and returns it with the
// environment that points CLI commands at it.
func devServer(t *testing.T, extra ...string) (*proc, []string) {
	t.Helper()
	p, env, _ := devServerDir(t, extra...)
	return p, env
}

// devServerDir is devServer that also returns the data dir, for
// plannerKeyArgs.
func devServerDir(t *testing.T, extra ...string) (*proc, []string, string) {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"dev", "--data-dir", dir, "--mqtt-addr", "127.0.0.1:0", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, extra...)
	p := start(t, "tether", nil, args...)
	line := p.waitLine("MQTT broker:")
	url := strings.TrimSpace(strings.TrimPrefix(line, "MQTT broker:"))
	return p, []string{"TETHER_BROKER=" + url}, dir
}

// plannerKeyArgs are the edged flags that pin the planner key of the
// `tether dev --data-dir devDataDir` server: edged applies only desired
// state that planner signed. The server writes its public keys to
// planner-key.pub in its own data dir, which `tether dev` puts under
// server/, before it says it is listening.
func plannerKeyArgs(devDataDir string) []string {
	return []string{"--planner-key-file", filepath.Join(devDataDir, "server", "planner-key.pub")}
}
