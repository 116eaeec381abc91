package core

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/tether-edge/tether/protocol"
)

func TestFeasibilityReasons(t *testing.T) {
	t.Parallel()
	podman := task("web", protocol.DriverPodman, 100, 64)
	exec := task("sidecar", protocol.DriverExec, 100, 64)
	tests := []struct {
		name  string
		dev   Device
		group protocol.Group
		place string // reason from placeChecks
		keep  string // reason from keepChecks
	}{
		{name: "all good", dev: dev("a"), group: group("g")},
		{name: "no facts first", dev: dev("a", noFacts, offline), group: group("g"), place: "no facts yet", keep: "no facts yet"},
		{name: "offline only matters for placement", dev: dev("a", offline), group: group("g"), place: "offline"},
		{name: "never seen is offline", dev: dev("a", neverSeen), group: group("g"), place: "offline"},
		{name: "offline before driver", dev: dev("a", offline, withDrivers()), group: group("g"), place: "offline", keep: "lack driver podman"},
		{name: "first missing driver in task order", dev: dev("a", withDrivers()), group: group("g", tasks(exec, podman)), place: "lack driver exec", keep: "lack driver exec"},
		{name: "missing second driver", dev: dev("a", withDrivers("exec")), group: group("g", tasks(exec, podman)), place: "lack driver podman", keep: "lack driver podman"},
		{name: "driver before constraint", dev: dev("a", withDrivers("exec")), group: group("g", constrain("${device.arch}", "=", "arm64")), place: "lack driver podman", keep: "lack driver podman"},
		{name: "arch", dev: dev("a"), group: group("g", constrain("${device.arch}", "=", "arm64")), place: "constraint ${device.arch} = arm64", keep: "constraint ${device.arch} = arm64"},
		{name: "arch holds", dev: dev("a", withArch("arm64")), group: group("g", constrain("${device.arch}", "=", "arm64"))},
		{name: "double equals", dev: dev("a"), group: group("g", constrain("${device.arch}", "==", "arm64")), place: "constraint ${device.arch} == arm64", keep: "constraint ${device.arch} == arm64"},
		{name: "empty operator is equals", dev: dev("a"), group: group("g", constrain("${device.arch}", "", "arm64")), place: "constraint ${device.arch} = arm64", keep: "constraint ${device.arch} = arm64"},
		{name: "not equal", dev: dev("a"), group: group("g", constrain("${device.arch}", "!=", "amd64")), place: "constraint ${device.arch} != amd64", keep: "constraint ${device.arch} != amd64"},
		{name: "first failing constraint", dev: dev("a"), group: group("g", constrain("${device.os}", "=", "linux"), constrain("${device.os}", "!=", "linux"), constrain("${device.arch}", "=", "x")), place: "constraint ${device.os} != linux", keep: "constraint ${device.os} != linux"},
		{name: "kernel", dev: dev("a", withKernel("5.10")), group: group("g", constrain("${device.kernel}", "=", "5.10"))},
		{name: "os", dev: dev("a", withOS("darwin")), group: group("g", constrain("${device.os}", "=", "linux")), place: "constraint ${device.os} = linux", keep: "constraint ${device.os} = linux"},
		{name: "device id", dev: dev("rpi-7"), group: group("g", constrain("${device.id}", "=", "rpi-7"))},
		{name: "device id is the device's, not the facts'", dev: dev("rpi-7", func(d *Device) { d.Facts.Device = "other" }), group: group("g", constrain("${device.id}", "=", "other")), place: "constraint ${device.id} = other", keep: "constraint ${device.id} = other"},
		{name: "hostname", dev: dev("a", withHostname("gw")), group: group("g", constrain("${device.hostname}", "=", "gw"))},
		{name: "cpu cores", dev: dev("a", withCores(8)), group: group("g", constrain("${device.cpu.cores}", "=", "8"))},
		{name: "cpu mhz", dev: dev("a", withCapacity(2400, 512)), group: group("g", constrain("${device.cpu.mhz}", "=", "2400"), constrain("${device.memory}", "=", "512"))},
		{name: "memory", dev: dev("a"), group: group("g", constrain("${device.memory}", "!=", "4096")), place: "constraint ${device.memory} != 4096", keep: "constraint ${device.memory} != 4096"},
		{name: "label", dev: dev("a", withLabels("zone", "north")), group: group("g", constrain("${device.labels.zone}", "=", "north"))},
		{name: "label differs", dev: dev("a", withLabels("zone", "south")), group: group("g", constrain("${device.labels.zone}", "=", "north")), place: "constraint ${device.labels.zone} = north", keep: "constraint ${device.labels.zone} = north"},
		{name: "missing label fails equals", dev: dev("a"), group: group("g", constrain("${device.labels.zone}", "=", "north")), place: "constraint ${device.labels.zone} = north", keep: "constraint ${device.labels.zone} = north"},
		{name: "missing label passes not equal", dev: dev("a"), group: group("g", constrain("${device.labels.zone}", "!=", "north"))},
		{name: "missing label equals empty", dev: dev("a"), group: group("g", constrain("${device.labels.zone}", "=", ""))},
		{name: "dotted label key", dev: dev("a", withLabels("site.rack", "3")), group: group("g", constrain("${device.labels.site.rack}", "=", "3"))},
		{name: "unknown attribute never holds", dev: dev("a"), group: group("g", constrain("${device.gpu}", "!=", "x")), place: "constraint ${device.gpu} != x", keep: "constraint ${device.gpu} != x"},
		{name: "unknown operator never holds", dev: dev("a"), group: group("g", constrain("${device.arch}", "<", "x")), place: "constraint ${device.arch} < x", keep: "constraint ${device.arch} < x"},
		// Numbers.
		{name: "at least cores", dev: dev("a", withCores(8)), group: group("g", constrain("${device.cpu.cores}", ">=", "4"))},
		{name: "too few cores", dev: dev("a", withCores(2)), group: group("g", constrain("${device.cpu.cores}", ">=", "4")), place: "constraint ${device.cpu.cores} >= 4", keep: "constraint ${device.cpu.cores} >= 4"},
		{name: "strictly less", dev: dev("a"), group: group("g", constrain("${device.memory}", "<", "4096")), place: "constraint ${device.memory} < 4096", keep: "constraint ${device.memory} < 4096"},
		{name: "at most", dev: dev("a"), group: group("g", constrain("${device.memory}", "<=", "4096"), constrain("${device.cpu.mhz}", ">", "3999.5"))},
		{name: "numeric label", dev: dev("a", withLabels("temp", "41.5")), group: group("g", constrain("${device.labels.temp}", "<", "50"))},
		{name: "label not a number", dev: dev("a", withLabels("temp", "hot")), group: group("g", constrain("${device.labels.temp}", "<", "50")), place: "constraint ${device.labels.temp} < 50", keep: "constraint ${device.labels.temp} < 50"},
		{name: "missing label is no number", dev: dev("a"), group: group("g", constrain("${device.labels.temp}", "<", "50")), place: "constraint ${device.labels.temp} < 50", keep: "constraint ${device.labels.temp} < 50"},
		// Versions.
		{name: "kernel in range", dev: dev("a", withKernel("6.1.0-18-amd64")), group: group("g", constrain("${device.kernel}", "version", ">= 5.10, < 6.2"))},
		{name: "kernel too new", dev: dev("a", withKernel("6.6.31+rpt-rpi-v8")), group: group("g", constrain("${device.kernel}", "version", ">= 5.10, < 6.2")), place: "constraint ${device.kernel} version >= 5.10, < 6.2", keep: "constraint ${device.kernel} version >= 5.10, < 6.2"},
		{name: "kernel unknown", dev: dev("a", withKernel("")), group: group("g", constrain("${device.kernel}", "version", ">= 1")), place: "constraint ${device.kernel} version >= 1", keep: "constraint ${device.kernel} version >= 1"},
		{name: "label not a version", dev: dev("a", withLabels("fw", "beta")), group: group("g", constrain("${device.labels.fw}", "version", ">= 1")), place: "constraint ${device.labels.fw} version >= 1", keep: "constraint ${device.labels.fw} version >= 1"},
		// Regular expressions match anywhere unless anchored.
		{name: "regexp", dev: dev("cam-12", withHostname("cam-12.berlin")), group: group("g", constrain("${device.hostname}", "regexp", "cam-[0-9]+"))},
		{name: "regexp anchored", dev: dev("a", withHostname("xcam-1")), group: group("g", constrain("${device.hostname}", "regexp", "^cam-")), place: "constraint ${device.hostname} regexp ^cam-", keep: "constraint ${device.hostname} regexp ^cam-"},
		{name: "regexp on a missing label", dev: dev("a"), group: group("g", constrain("${device.labels.x}", "regexp", ".*")), place: "constraint ${device.labels.x} regexp .*", keep: "constraint ${device.labels.x} regexp .*"},
		// Sets.
		{name: "set contains all", dev: dev("a", withLabels("features", "npu, camera,gpu")), group: group("g", constrain("${device.labels.features}", "set_contains", "camera,npu"))},
		{name: "set lacks one", dev: dev("a", withLabels("features", "camera")), group: group("g", constrain("${device.labels.features}", "set_contains", "camera,npu")), place: "constraint ${device.labels.features} set_contains camera,npu", keep: "constraint ${device.labels.features} set_contains camera,npu"},
		{name: "set contains any", dev: dev("a", withLabels("features", "camera")), group: group("g", constrain("${device.labels.features}", "set_contains_any", "npu, camera"))},
		{name: "set contains none", dev: dev("a", withLabels("features", "gpu")), group: group("g", constrain("${device.labels.features}", "set_contains_any", "npu,camera")), place: "constraint ${device.labels.features} set_contains_any npu,camera", keep: "constraint ${device.labels.features} set_contains_any npu,camera"},
		{name: "no set", dev: dev("a"), group: group("g", constrain("${device.labels.features}", "set_contains_any", "npu")), place: "constraint ${device.labels.features} set_contains_any npu", keep: "constraint ${device.labels.features} set_contains_any npu"},
		// Presence of attributes.
		{name: "label set, even empty", dev: dev("a", withLabels("gpu", "")), group: group("g", constrain("${device.labels.gpu}", "is_set", ""))},
		{name: "label not set", dev: dev("a"), group: group("g", constrain("${device.labels.gpu}", "is_set", "")), place: "constraint ${device.labels.gpu} is_set", keep: "constraint ${device.labels.gpu} is_set"},
		{name: "label is not set", dev: dev("a"), group: group("g", constrain("${device.labels.retired}", "is_not_set", ""))},
		{name: "label is set after all", dev: dev("a", withLabels("retired", "yes")), group: group("g", constrain("${device.labels.retired}", "is_not_set", "")), place: "constraint ${device.labels.retired} is_not_set", keep: "constraint ${device.labels.retired} is_not_set"},
		{name: "empty text attribute is not set", dev: dev("a", withKernel("")), group: group("g", constrain("${device.kernel}", "is_not_set", ""))},
		{name: "numbers are always set", dev: dev("a", withCores(0)), group: group("g", constrain("${device.cpu.cores}", "is_set", ""))},
		// Distinct constraints depend on what is placed: no static reason.
		{name: "distinct constraints are not static", dev: dev("a"), group: group("g", constrain("", "distinct_hosts", ""), constrain("${device.labels.site}", "distinct_property", ""))},
		// Device resources.
		{name: "has the device resource", dev: dev("a", withResources("nvidia/gpu", 1)), group: group("g", tasks(withDevices(task("t", "podman", 100, 64), "nvidia/gpu", 2)))},
		{name: "lacks the device resource", dev: dev("a", withResources("usb/1d6b:0002", 1)), group: group("g", tasks(withDevices(task("t", "podman", 100, 64), "nvidia/gpu", 1))), place: "lack device nvidia/gpu", keep: "lack device nvidia/gpu"},
		{name: "constraint before device resource", dev: dev("a"), group: group("g", constrain("${device.arch}", "=", "arm64"), tasks(withDevices(task("t", "podman", 100, 64), "nvidia/gpu", 1))), place: "constraint ${device.arch} = arm64", keep: "constraint ${device.arch} = arm64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := compileGroup(&tt.group)
			if got := infeasible(placeChecks, &tt.dev, spec); got != tt.place {
				t.Errorf("placement reason = %q, want %q", got, tt.place)
			}
			if got := infeasible(keepChecks, &tt.dev, spec); got != tt.keep {
				t.Errorf("keep reason = %q, want %q", got, tt.keep)
			}
		})
	}
}

func TestAllocID(t *testing.T) {
	t.Parallel()
	// sha256("a") = ca978112ca1bbdca...
	if got, want := AllocID("web", "api", 2, "a"), "web.api.2-ca978112ca1b"; got != want {
		t.Errorf("AllocID = %q, want %q", got, want)
	}
	if AllocID("web", "api", 0, "a") == AllocID("web", "api", 0, "b") {
		t.Error("ids on different devices must differ")
	}
}

// Placed ids stay unique when two devices' hashes share their first 48 bits,
// or an existing allocation already has the id a placement would get.
func TestAllocIDCollision(t *testing.T) {
	t.Parallel()
	j := job("mon", typ(protocol.JobSystem))
	squatter := allocOf(job("mon", typ(protocol.JobSystem)), "g", 0, "a")
	squatter.Device = "elsewhere" // has the id mon.g.0-<hash of a> on another device
	p := Compute(Snapshot{Jobs: []Job{j}, Devices: []Device{dev("a"), dev("b")}, Allocations: []Alloc{squatter}}, t0)
	if len(p.Place) != 2 {
		t.Fatalf("placed %s", shorts(p.Place))
	}
	sum := sha256.Sum256([]byte("a"))
	if want := "mon.g.0-" + hex.EncodeToString(sum[:]); p.Place[0].ID != want {
		t.Errorf("placement on a has id %s, want %s", p.Place[0].ID, want)
	}
	if p.Place[1].ID != AllocID("mon", "g", 0, "b") {
		t.Errorf("placement on b has id %s", p.Place[1].ID)
	}
}
