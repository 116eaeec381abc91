package edged

import (
	"bufio"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"

	"github.com/tether-edge/tether/protocol"
)

// gatherFacts reads what the planner needs to know about this device from
// the running system. Values that cannot be read are left at safe guesses.
func gatherFacts(device string, labels map[string]string, drivers []string) protocol.Facts {
	f := protocol.Facts{
		Device:   device,
		Arch:     runtime.GOARCH,
		OS:       runtime.GOOS,
		CPUCores: runtime.NumCPU(),
		Labels:   labels,
		Drivers:  append([]string(nil), drivers...),
	}
	sort.Strings(f.Drivers)
	f.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f.Kernel = strings.TrimSpace(string(b))
	}
	f.MemoryMB = memTotalMB()
	f.CPUMHz = f.CPUCores * cpuMHz()
	return f
}

// memTotalMB reads MemTotal from /proc/meminfo; 0 when unknown.
func memTotalMB() int {
	fh, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.Atoi(fields[1])
			return kb / 1024
		}
	}
	return 0
}

// cpuMHz is the clock of one core from /proc/cpuinfo, or 1000 when the
// kernel does not say (common on ARM boards).
func cpuMHz() int {
	fh, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 1000
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(name) == "cpu MHz" {
			if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil && v > 0 {
				return int(v)
			}
		}
	}
	return 1000
}
