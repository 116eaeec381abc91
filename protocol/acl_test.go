package protocol

import (
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestAllowed(t *testing.T) {
	var tp Topics
	devA := Principal{Role: RoleDevice, Name: "a"}
	op := Principal{Role: RoleOperator, Name: "0a1b2c3d4e5f"}
	viewer := Principal{Role: RoleViewer, Name: "ffffffffffff"}
	enroll := Principal{Role: RoleEnroll, Name: "eeeeeeeeeeee"}
	opCID := "token/0a1b2c3d4e5f/cli-1"
	vCID := "token/ffffffffffff/dash-1"
	cases := []struct {
		p     Principal
		cid   string
		topic string
		write bool
		want  bool
	}{
		// A device: its own reports out, its own desired state in.
		{devA, "a", "tether/v1/devices/a/presence", true, true},
		{devA, "a", "tether/v1/devices/a/facts", true, true},
		{devA, "a", "tether/v1/devices/a/reported", true, true},
		{devA, "a", "tether/v1/devices/a/events", true, true},
		{devA, "a", "tether/v1/devices/a/desired", false, true},
		{devA, "a", "tether/v1/devices/a/reported", false, true}, // echo
		{devA, "a", "tether/v1/devices/a/desired", true, false},
		{devA, "a", "tether/v1/devices/a/scheduling", true, false},
		{devA, "a", "tether/v1/devices/b/desired", false, false},
		{devA, "a", "tether/v1/devices/b/reported", true, false},
		{devA, "a", "tether/v1/devices/+/desired", false, false},
		{devA, "a", "tether/v1/devices/a/+", false, false},
		{devA, "a", "tether/v1/devices/a/#", false, false},
		{devA, "a", "#", false, false},
		{devA, "a", "tether/v1/#", false, false},
		{devA, "a", "tether/v1/jobs/evil", true, false},
		{devA, "a", "$SYS/broker/clients", false, false},
		{devA, "a", "tether/v1/sync/a/x1", true, true},
		{devA, "a", "tether/v1/sync/a/+", false, true},
		{devA, "a", "tether/v1/sync/b/x1", true, false},
		{devA, "a", "tether/v1/sync/a/#", false, false},
		{devA, "a", "tether/v1/fleet/devices/+", false, false},
		{devA, "a", "tether/v1/fleet/devices/0", false, false},
		{devA, "a", "tether/v1/fleet/devices/0", true, false},
		// An operator: jobs, promotions, scheduling, dry runs, its own admin.
		{op, opCID, "tether/v1/jobs/hello", true, true},
		{op, opCID, "tether/v1/jobs/hello/promote", true, true},
		{op, opCID, "tether/v1/devices/a/scheduling", true, true},
		{op, opCID, "tether/v1/plans/n1", true, true},
		{op, opCID, "tether/v1/admin/0a1b2c3d4e5f/n1", true, true},
		{op, opCID, "tether/v1/admin/999999999999/n1", true, false},
		{op, opCID, "tether/v1/devices/a/desired", true, false},
		{op, opCID, "tether/v1/devices/a/reported", true, false},
		{op, opCID, "tether/v1/jobs/hello/status", true, false},
		{op, opCID, "tether/v1/jobs/+", true, false},
		{op, opCID, "tether/v1/#", false, true},
		{op, opCID, "tether/v1/devices/a/desired", false, true},
		{op, opCID, "tether/v1/admin/0a1b2c3d4e5f/n1/result", false, true},
		{op, opCID, "tether/v1/admin/999999999999/n1/result", false, false},
		{op, opCID, "#", false, false},
		{op, opCID, "tether/v1/sync/" + opCID + "/x", true, true},
		{op, opCID, "tether/v1/fleet/devices/+", false, true},
		{op, opCID, "tether/v1/fleet/devices/0", false, true},
		{op, opCID, "tether/v1/fleet/devices/0", true, false},
		{op, opCID, "tether/v1/fleet/summary", true, false},
		// A viewer: status only.
		{viewer, vCID, "tether/v1/jobs/+/status", false, true},
		{viewer, vCID, "tether/v1/jobs/hello/history", false, true},
		{viewer, vCID, "tether/v1/fleet/summary", false, true},
		{viewer, vCID, "tether/v1/fleet/devices/+", false, true},
		{viewer, vCID, "tether/v1/fleet/devices/3", false, true},
		{viewer, vCID, "tether/v1/fleet/devices/0", true, false},
		{viewer, vCID, "tether/v1/fleet/devices/#", false, false},
		{viewer, vCID, "tether/v1/fleet/#", false, false},
		{viewer, vCID, "tether/v1/fleet/+", false, false},
		{viewer, vCID, "tether/v1/devices/+/presence", false, true},
		{viewer, vCID, "tether/v1/devices/a/events", false, true},
		{viewer, vCID, "tether/v1/devices/+/desired", false, false},
		{viewer, vCID, "tether/v1/devices/a/desired", false, false},
		{viewer, vCID, "tether/v1/jobs/+", false, false},
		{viewer, vCID, "tether/v1/jobs/#", false, false},
		{viewer, vCID, "tether/v1/devices/+/+", false, false},
		{viewer, vCID, "tether/v1/#", false, false},
		{viewer, vCID, "tether/v1/jobs/hello", true, false},
		{viewer, vCID, "tether/v1/devices/a/presence", true, false},
		{viewer, vCID, "tether/v1/sync/" + vCID + "/x", true, true},
		// Enrollment: its own request and answer, nothing else.
		{enroll, "newdev", "tether/v1/enroll/eeeeeeeeeeee/newdev", true, true},
		{enroll, "newdev", "tether/v1/enroll/eeeeeeeeeeee/newdev/result", false, true},
		{enroll, "newdev", "tether/v1/enroll/eeeeeeeeeeee/other/result", false, false},
		{enroll, "newdev", "tether/v1/enroll/eeeeeeeeeeee/+/result", false, false},
		{enroll, "newdev", "tether/v1/devices/newdev/presence", true, false},
		{enroll, "newdev", "tether/v1/devices/newdev/desired", false, false},
		{enroll, "newdev", "tether/v1/fleet/devices/+", false, false},
		// The planner: everything.
		{Principal{Role: RolePlanner}, "p", "#", false, true},
		{Principal{Role: RolePlanner}, "p", "tether/v1/fleet/devices/0", true, true},
	}
	for _, c := range cases {
		if got := tp.Allowed(c.p, c.cid, c.topic, c.write); got != c.want {
			t.Errorf("%s %s as %q, %q write=%v: got %v, want %v", c.p.Role, c.p.Name, c.cid, c.topic, c.write, got, c.want)
		}
	}
}

func TestCheckClientID(t *testing.T) {
	op := Principal{Role: RoleOperator, Name: "0a1b2c3d4e5f"}
	for _, c := range []struct {
		p   Principal
		cid string
		ok  bool
	}{
		{Principal{Role: RoleDevice, Name: "a"}, "a", true},
		{Principal{Role: RoleDevice, Name: "a"}, "b", false},
		{op, "token/0a1b2c3d4e5f/cli-1", true},
		{op, "token/0a1b2c3d4e5f/", false},
		{op, "token/0a1b2c3d4e5fx", false},
		{op, "a", false},
		{op, "token/0a1b2c3d4e5f/+", false},
		{Principal{Role: RoleEnroll, Name: "e"}, "newdev", true},
		{Principal{Role: RoleEnroll, Name: "e"}, "token/e/x", false},
	} {
		if err := CheckClientID(c.p, c.cid); (err == nil) != c.ok {
			t.Errorf("%s %q: err=%v, want ok=%v", c.p.Role, c.cid, err, c.ok)
		}
	}
}

// A principal other than the planner and operators never gets a filter
// that matches another device's topic, whatever filter it asks for.
func TestAllowedNeverLeaksOtherDevices(t *testing.T) {
	var tp Topics
	level := rapid.SampledFrom([]string{"devices", "a", "b", "desired", "reported", "events", "presence", "+", "#", "jobs", "sync", "x", "status", ""})
	rapid.Check(t, func(t *rapid.T) {
		levels := rapid.SliceOfN(level, 1, 5).Draw(t, "levels")
		filter := "tether/v1/" + strings.Join(levels, "/")
		write := rapid.Bool().Draw(t, "write")
		p := Principal{Role: rapid.SampledFrom([]Role{RoleDevice, RoleViewer, RoleEnroll}).Draw(t, "role"), Name: "a"}
		cid := "a"
		if p.Role == RoleViewer {
			cid = "token/a/x"
		}
		if !tp.Allowed(p, cid, filter, write) {
			return
		}
		// Every concrete topic the filter matches must be one the rules
		// name: here, nothing of device b may be reachable by a device or
		// an enrollment client, and no viewer may see desired state.
		for _, b := range []string{"tether/v1/devices/b/desired", "tether/v1/devices/b/reported", "tether/v1/devices/b/events"} {
			if p.Role != RoleViewer && matches(filter, b) {
				t.Fatalf("%s %q may use %q, which matches %q", p.Role, p.Name, filter, b)
			}
		}
		if p.Role == RoleViewer && matches(filter, "tether/v1/devices/b/desired") {
			t.Fatalf("viewer may read %q", filter)
		}
	})
}

// matches is MQTT topic matching, written independently of filterWithin.
func matches(filter, topic string) bool {
	f, tl := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, l := range f {
		if l == "#" {
			return true
		}
		if i >= len(tl) || l != "+" && l != tl[i] {
			return false
		}
	}
	return len(f) == len(tl)
}

func TestRetainable(t *testing.T) {
	var tp Topics
	for topic, want := range map[string]bool{
		tp.Job("j"): true, tp.JobStatus("j"): true, tp.History("j"): true, tp.Desired("d"): true,
		tp.Reported("d"): true, tp.Presence("d"): true, tp.Facts("d"): true, tp.Scheduling("d"): true,
		tp.FleetSummary(): true, tp.DeviceIndex(0): true, tp.DeviceIndex(41): true,
		tp.DeviceIndexFilter(): false, "tether/v1/fleet/devices/01": false,
		tp.Events("d"): false, tp.Promote("j"): false, tp.Plan("n"): false, tp.PlanResult("n"): false,
		tp.Admin("o", "n"): false, tp.Enroll("e", "d"): false, "tether/v1/sync/c/x": false, "other": false,
	} {
		if got := tp.Retainable(topic); got != want {
			t.Errorf("Retainable(%q) = %v, want %v", topic, got, want)
		}
	}
}
