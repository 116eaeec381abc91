package exec

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// procInfo is what /proc/PID/stat says about a process.
type procInfo struct {
	state      byte   // R, S, D, Z, X, ...
	startTicks uint64 // field 22: start time after boot, in clock ticks
	// waitStatus is field 52, the exit status in waitpid(2) form; only
	// meaningful for a zombie, and -1 when the kernel does not show it.
	waitStatus int
}

// dead reports whether the process has exited (possibly not yet reaped).
func (p procInfo) dead() bool { return p.state == 'Z' || p.state == 'X' }

// errNoProcess means /proc has no entry for the pid.
var errNoProcess = errors.New("no such process")

// readProc reads /proc/PID/stat.
func readProc(pid int) (procInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return procInfo{}, errNoProcess
	}
	if err != nil {
		return procInfo{}, fmt.Errorf("read /proc/%d/stat: %w", pid, err)
	}
	return parseStat(b)
}

// parseStat parses a /proc/PID/stat line. The command name (field 2) is in
// parentheses and may itself contain spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(b []byte) (procInfo, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return procInfo{}, fmt.Errorf("malformed /proc stat %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 22-2 {
		return procInfo{}, fmt.Errorf("short /proc stat %q", b)
	}
	ticks, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return procInfo{}, fmt.Errorf("/proc stat start time %q: %w", f[22-3], err)
	}
	p := procInfo{state: f[0][0], startTicks: ticks, waitStatus: -1}
	if len(f) >= 52-2 {
		if ws, err := strconv.Atoi(f[52-3]); err == nil {
			p.waitStatus = ws
		}
	}
	return p, nil
}

// exitCodeFromWaitStatus turns a waitpid(2) status into the code a shell
// (and Podman) reports: the exit status, or 128 + signal.
func exitCodeFromWaitStatus(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// bootID identifies this boot: start ticks restart from zero at every boot,
// so a record from before a reboot could otherwise match a new process.
func bootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
