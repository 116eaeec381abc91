package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process: the server, mosquitto or a simulator. Its
// output goes to a log file in the work dir.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// start runs bin with args; the child is killed if fleetbench dies.
func start(name, logPath string, bin string, args ...string) (*proc, error) {
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace, then kills.
func (p *proc) stop(grace time.Duration) error {
	if p == nil || p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.name, grace)
	}
}

// tail returns the last lines of the process's log, for error messages.
func (p *proc) tail(n int) string {
	raw, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitLog waits until the log holds a line containing want.
func (p *proc) waitLog(ctx context.Context, want string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if raw, err := os.ReadFile(p.log); err == nil && strings.Contains(string(raw), want) {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited (%v) before it was ready:\n%s", p.name, p.err, p.tail(20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %s:\n%s", p.name, d, p.tail(20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// usage is a process's CPU time and memory at one moment.
type usage struct {
	pid    int
	at     time.Time
	cpu    float64 // user+system seconds
	rssKB  int64
	anonKB int64 // RssAnon: heap and stacks, without mapped files
	hwmKB  int64
	exists bool
}

// clkTck is USER_HZ, 100 on every Linux this runs on.
const clkTck = 100

// sample reads /proc/PID/stat and /proc/PID/status.
func sample(pid int) usage {
	u := usage{pid: pid, at: time.Now()}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u
	}
	// The command name may hold spaces; fields count from after it.
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return u
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return u
	}
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14, utime
	st, _ := strconv.ParseFloat(f[12], 64) // field 15, stime
	u.cpu = (ut + st) / clkTck
	u.exists = true
	fh, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			u.rssKB = kb
		case "VmHWM":
			u.hwmKB = kb
		case "RssAnon":
			u.anonKB = kb
		}
	}
	return u
}

// meter samples a set of processes every second and keeps the peak RSS
// since the last reset.
type meter struct {
	mu    sync.Mutex
	peak  map[string]int64 // by name, KB
	last  map[int]usage    // by pid: a process's last sample before it exits
	procs func() map[string]int
}

func newMeter(procs func() map[string]int) *meter {
	return &meter{peak: map[string]int64{}, last: map[int]usage{}, procs: procs}
}

// lastOf is the last sample of the process pid.
func (m *meter) lastOf(pid int) (usage, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.last[pid]
	return u, ok
}

func (m *meter) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		m.tick()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *meter) tick() {
	for name, pid := range m.procs() {
		u := sample(pid)
		if !u.exists {
			continue
		}
		m.mu.Lock()
		m.peak[name] = max(m.peak[name], u.rssKB)
		m.last[pid] = u
		m.mu.Unlock()
	}
}

// reset forgets the peaks and returns them.
func (m *meter) reset() map[string]int64 {
	m.tick()
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.peak
	m.peak = map[string]int64{}
	return old
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before it is used; on loopback in a benchmark that is unlikely.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitPort waits until something accepts connections on addr.
func waitPort(ctx context.Context, addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on %s after %s: %w", addr, d, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// findBinary resolves a program given as a path or a name in PATH.
func findBinary(name string) (string, error) {
	if strings.ContainsRune(name, filepath.Separator) {
		if _, err := os.Stat(name); err != nil {
			return "", err
		}
		return filepath.Abs(name)
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", errors.New(name + " not found in PATH")
	}
	return p, nil
}
