package edged

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/tether-edge/tether/protocol"
)

// gatherFacts reads what the planner needs to know about this device from
// the running system. Values that cannot be read are left at safe guesses.
func gatherFacts(device, dataDir string, labels map[string]string, drivers []string) protocol.Facts {
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
	f.DiskMB = diskFreeMB(dataDir)
	f.Devices = deviceResources("/dev", "/sys/bus/usb/devices")
	return f
}

// diskFreeMB is the space available to unprivileged users on the file
// system holding dir.
func diskFreeMB(dir string) int {
	var st syscall.Statfs_t
	if dir == "" || syscall.Statfs(dir, &st) != nil {
		return 0
	}
	return int(st.Bavail * uint64(st.Bsize) / (1 << 20))
}

// deviceResources finds countable devices tasks can ask for: NVIDIA GPUs
// (/dev/nvidiaN) and USB devices by vendor:product (from sysfs).
func deviceResources(devDir, usbDir string) []protocol.DeviceResource {
	counts := map[string]int{}
	if ents, err := os.ReadDir(devDir); err == nil {
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, "nvidia") && len(n) > 6 && strings.Trim(n[6:], "0123456789") == "" {
				counts["nvidia/gpu"]++
			}
		}
	}
	if ents, err := os.ReadDir(usbDir); err == nil {
		for _, e := range ents {
			vendor, err1 := os.ReadFile(filepath.Join(usbDir, e.Name(), "idVendor"))
			product, err2 := os.ReadFile(filepath.Join(usbDir, e.Name(), "idProduct"))
			if err1 != nil || err2 != nil {
				continue
			}
			counts["usb/"+strings.ToLower(strings.TrimSpace(string(vendor)))+":"+strings.ToLower(strings.TrimSpace(string(product)))]++
		}
	}
	out := make([]protocol.DeviceResource, 0, len(counts))
	for name, n := range counts {
		out = append(out, protocol.DeviceResource{Name: name, Count: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
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
