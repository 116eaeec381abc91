package core

import (
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := infeasible(placeChecks, &tt.dev, &tt.group); got != tt.place {
				t.Errorf("placement reason = %q, want %q", got, tt.place)
			}
			if got := infeasible(keepChecks, &tt.dev, &tt.group); got != tt.keep {
				t.Errorf("keep reason = %q, want %q", got, tt.keep)
			}
		})
	}
}

func TestAllocID(t *testing.T) {
	t.Parallel()
	// sha256("a") = ca978112ca1bbdca...
	if got, want := AllocID("web", "api", 2, "a"), "web.api.2-ca9781"; got != want {
		t.Errorf("AllocID = %q, want %q", got, want)
	}
	if AllocID("web", "api", 0, "a") == AllocID("web", "api", 0, "b") {
		t.Error("ids on different devices must differ")
	}
}
