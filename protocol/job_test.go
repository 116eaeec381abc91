package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"
)

const helloYAML = `
id: hello
type: service
groups:
  - name: web
    count: 2
    constraints:
      - {attribute: "${device.arch}", operator: "=", value: "amd64"}
      - {attribute: "${device.labels.site}", operator: "=", value: "berlin"}
    tasks:
      - name: httpd
        driver: podman
        config: {image: "localhost/busybox:latest", command: ["/bin/httpd", "-f", "-p", "8080"]}
        env: {GREETING: hi}
        resources: {cpu: 100, memory: 32}
        restart: {attempts: 3, delay: 2s, mode: delay}
`

func TestParseJobGood(t *testing.T) {
	j, err := ParseJob([]byte(helloYAML))
	if err != nil {
		t.Fatal(err)
	}
	if j.ID != "hello" || j.Type != JobService || j.Groups[0].Instances() != 2 {
		t.Fatalf("unexpected job %+v", j)
	}
	task := j.Groups[0].Tasks[0]
	if task.Restart.Delay.Std() != 2*time.Second || task.Restart.Attempts != 3 || task.Restart.Mode != RestartDelay {
		t.Errorf("restart = %+v", task.Restart)
	}
	if task.Restart.Interval.Std() != 30*time.Minute {
		t.Errorf("restart interval default = %s", task.Restart.Interval.Std())
	}
	// The JSON form of the normalized job parses to the same job.
	raw, _ := Encode(j)
	j2, err := ParseJob(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !j.Equal(j2) {
		t.Errorf("JSON round trip changed the job:\n%s", raw)
	}
}

func TestParseJobDefaults(t *testing.T) {
	j, err := ParseJob([]byte(`{"id":"b","groups":[{"name":"g","tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	task := j.Groups[0].Tasks[0]
	if j.Type != JobService || *j.Groups[0].Count != 1 || task.Resources.CPU != DefaultCPU || task.Resources.Memory != DefaultMemory || task.Restart == nil {
		t.Errorf("defaults not applied: %+v", j)
	}
}

func TestParseJobErrors(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		want []string // every one must appear, each as "path: ..."
	}{
		{"unknown driver", `
id: x
groups:
  - name: g
    tasks:
      - {name: a, driver: podman, config: {image: i}}
      - {name: b, driver: dokcer, config: {image: i}}
`, []string{`groups[0].tasks[1].driver: unknown driver "dokcer", want podman or exec`}},
		{"every problem at once", `
id: "bad/id"
type: daemon
groups:
  - name: g
    count: -1
    constraints:
      - {attribute: "${node.arch}", operator: "~", value: x}
    tasks:
      - {name: t, driver: exec, config: {image: i}}
      - {name: t, driver: podman, config: {}}
`, []string{
			"id: invalid identifier",
			`type: unknown job type "daemon"`,
			"groups[0].count: want 0 to 10000, got -1",
			"groups[0].constraints[0].attribute: unknown attribute",
			`groups[0].constraints[0].operator: unknown operator "~"`,
			"groups[0].tasks[0].config.command: required for driver exec",
			"groups[0].tasks[0].config.image: not used by driver exec",
			`groups[0].tasks[1].name: duplicate task name "t"`,
			"groups[0].tasks[1].config.image: required for driver podman",
		}},
		{"unknown and mistyped fields", `
id: x
groups:
  - name: g
    cuont: 2
    tasks:
      - name: t
        driver: podman
        config: {image: i, command: "/bin/sh"}
        resources: {cpu: "lots", memory: 1.5}
        restart: {delay: soon}
`, []string{
			"groups[0].cuont: unknown field",
			"groups[0].tasks[0].config.command: want list, got string",
			"groups[0].tasks[0].resources.cpu: want integer, got string",
			"groups[0].tasks[0].resources.memory: want integer, got 1.5",
			`groups[0].tasks[0].restart.delay: want a duration such as "15s", got "soon"`,
		}},
		{"shape and validation errors together", `
id: x
groups:
  - name: g
    bogus: 1
    tasks:
      - {name: t, driver: dokcer, config: {image: i}, resources: {cpu: "x"}}
`, []string{
			"groups[0].bogus: unknown field",
			`groups[0].tasks[0].driver: unknown driver "dokcer"`,
			"groups[0].tasks[0].resources.cpu: want integer, got string",
		}},
		{"topic escape", `{"id":"x/#","groups":[]}`, []string{"id: invalid identifier", "groups: want at least one group"}},
		{"empty", ``, []string{"empty job document"}},
		{"not yaml", "id: [unclosed", []string{"invalid YAML"}},
		{"not an object", `[1,2]`, []string{"want object, got list"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseJob([]byte(c.doc))
			if err == nil {
				t.Fatal("accepted")
			}
			errs := FieldErrors(err)
			var lines []string
			for _, e := range errs {
				lines = append(lines, e.Error())
			}
			all := strings.Join(lines, "\n")
			for _, w := range c.want {
				if !strings.Contains(all, w) {
					t.Errorf("missing %q in:\n%s", w, all)
				}
			}
		})
	}
}

func TestExamplesAreValid(t *testing.T) {
	files, _ := filepath.Glob("../deploy/examples/*.yaml")
	if len(files) == 0 {
		t.Fatal("no examples found in deploy/examples")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseJob(raw); err != nil && !strings.Contains(f, "invalid") {
			t.Errorf("%s: %v", f, err)
		} else if err == nil && strings.Contains(f, "invalid") {
			t.Errorf("%s: accepted, but it is meant to show errors", f)
		}
	}
}

func TestSpecHashStable(t *testing.T) {
	a := Task{Name: "t", Driver: "exec", Env: map[string]string{"A": "1", "B": "2", "C": "3"}}
	b := Task{Name: "t", Driver: "exec", Env: map[string]string{"C": "3", "B": "2", "A": "1"}}
	if SpecHash(a) != SpecHash(b) {
		t.Error("equal tasks hash differently")
	}
	b.Env["A"] = "x"
	if SpecHash(a) == SpecHash(b) {
		t.Error("different tasks hash equal")
	}
}

func TestParseJobModel(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "jobs", "model.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := ParseJob(raw)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := Encode(j)
	if err != nil {
		t.Fatal(err)
	}
	var indented bytes.Buffer
	if err := json.Indent(&indented, enc, "", "  "); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "jobs", "model.json")
	if *update {
		if err := os.WriteFile(golden, indented.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != indented.String() {
		t.Errorf("normalized job differs from %s:\n%s", golden, indented.String())
	}
	g := j.Groups[0]
	if g.Spreads[1].Weight != DefaultSpreadWeight || g.Affinities[0].Operator != OpEqual {
		t.Errorf("spread and affinity defaults not applied: %+v %+v", g.Spreads, g.Affinities)
	}
	if d := g.Tasks[0].Resources.Devices; d[0].Count != 1 || d[1].Count != 2 {
		t.Errorf("device request counts = %+v", d)
	}
	j2, err := ParseJob(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !j.Equal(j2) {
		t.Error("JSON round trip changed the job")
	}
}

func TestParseJobModelErrors(t *testing.T) {
	doc := `
id: x
type: service
groups:
  - name: g
    constraints:
      - {attribute: "${device.cpu.cores}", operator: "<", value: abc}
      - {attribute: "${device.kernel}", operator: version, value: ">= 1.x"}
      - {attribute: "${device.hostname}", operator: regexp, value: "cam-("}
      - {attribute: "${device.labels.f}", operator: set_contains, value: " , "}
      - {attribute: "${device.labels.gpu}", operator: is_set, value: "yes"}
      - {attribute: "${device.arch}", operator: distinct_hosts}
      - {attribute: "${device.labels.rack}", operator: distinct_property, value: "0"}
      - {operator: distinct_property}
      - {attribute: "${device.arch}", operator: "~="}
    affinities:
      - {attribute: "${device.labels.site}", value: berlin}
      - {attribute: "${device.labels.site}", value: berlin, weight: 150}
      - {operator: distinct_hosts, weight: 10}
    spreads:
      - attribute: "${device.labels.site}"
        weight: 101
        targets:
          - {value: berlin, percent: 70}
          - {value: berlin, percent: 50}
          - {percent: -1}
      - attribute: "${device.labels.site}"
      - attribute: "${node.site}"
    tasks:
      - name: t
        driver: podman
        config: {image: i}
        resources:
          disk: -1
          devices:
            - {name: "NVIDIA/GPU"}
            - {name: "usb/1D6B:2"}
            - {name: nvidia/gpu, count: -2}
            - {name: nvidia/gpu}
  - name: s
    tasks: [{name: t, driver: exec, config: {command: [/bin/true]}}]
`
	want := []string{
		`groups[0].constraints[0].value: want a number for operator <, got "abc"`,
		`groups[0].constraints[1].value: want a version range such as ">= 1.2, < 2.0" for operator version: invalid version "1.x"`,
		`groups[0].constraints[2].value: invalid regular expression for operator regexp`,
		`groups[0].constraints[3].value: want a comma-separated list of values for operator set_contains`,
		`groups[0].constraints[4].value: not used by operator is_set, got "yes"`,
		`groups[0].constraints[5].attribute: not used by operator distinct_hosts`,
		`groups[0].constraints[6].value: want the number of instances allowed per value (a positive integer, default 1) for operator distinct_property, got "0"`,
		`groups[0].constraints[7].attribute: unknown attribute ""`,
		`groups[0].constraints[8].operator: unknown operator "~=", want =, ==, !=, <, <=, >, >=, version, regexp, set_contains, set_contains_any, is_set, is_not_set, distinct_hosts, distinct_property`,
		`groups[0].affinities[0].weight: required: a non-zero weight from -100 to 100`,
		`groups[0].affinities[1].weight: want -100 to 100, got 150`,
		`groups[0].affinities[2].operator: unknown operator "distinct_hosts", want =, ==, !=, <, <=, >, >=, version, regexp, set_contains, set_contains_any, is_set, is_not_set`,
		`groups[0].spreads[0].weight: want 1 to 100, got 101`,
		`groups[0].spreads[0].targets[1].value: duplicate target value "berlin", also used by targets[0]`,
		`groups[0].spreads[0].targets[2].value: required`,
		`groups[0].spreads[0].targets[2].percent: want 0 to 100, got -1`,
		`groups[0].spreads[0].targets: percentages sum to 119, want at most 100`,
		`groups[0].spreads[1].attribute: duplicate spread attribute "${device.labels.site}", also used by spreads[0]`,
		`groups[0].spreads[2].attribute: unknown attribute "${node.site}"`,
		`groups[0].tasks[0].resources.disk: want a positive number of MB, got -1`,
		`groups[0].tasks[0].resources.devices[0].name: want a device name of lowercase letters, digits and . _ - : such as nvidia/gpu, got "NVIDIA/GPU"`,
		`groups[0].tasks[0].resources.devices[1].name: want usb/VENDOR:PRODUCT with 4 lowercase hex digits each, e.g. usb/1d6b:0002, got "usb/1D6B:2"`,
		`groups[0].tasks[0].resources.devices[2].count: want 1 or more, got -2`,
		`groups[0].tasks[0].resources.devices[3].name: duplicate device "nvidia/gpu", also requested by devices[2]`,
	}
	_, err := ParseJob([]byte(doc))
	var got []string
	for _, e := range FieldErrors(err) {
		got = append(got, e.Error())
	}
	all := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("missing %q", w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d errors, want %d:\n%s", len(got), len(want), all)
	}
}

func TestSystemJobsTakeNoAffinitiesOrSpreads(t *testing.T) {
	for _, typ := range []JobType{JobSystem, JobSysBatch} {
		doc := `{"id":"x","type":"` + string(typ) + `","groups":[{"name":"g",
			"affinities":[{"attribute":"${device.arch}","value":"arm64","weight":10}],
			"spreads":[{"attribute":"${device.labels.site}"}],
			"constraints":[{"operator":"distinct_hosts"}],
			"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`
		_, err := ParseJob([]byte(doc))
		got := fmt.Sprint(FieldErrors(err))
		for _, w := range []string{
			"groups[0].affinities: not used by " + string(typ) + " jobs",
			"groups[0].spreads: not used by " + string(typ) + " jobs",
		} {
			if !strings.Contains(got, w) {
				t.Errorf("%s: missing %q in %s", typ, w, got)
			}
		}
	}
}

func TestSysBatch(t *testing.T) {
	j, err := ParseJob([]byte(`{"id":"x","type":"sysbatch","groups":[{"name":"g","tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if r := *j.Groups[0].Tasks[0].Restart; r != DefaultRestart(JobBatch) {
		t.Errorf("sysbatch restart default = %+v, want batch's", r)
	}
	for _, c := range []struct {
		typ                        JobType
		valid, completes, everyDev bool
	}{
		{JobService, true, false, false},
		{JobBatch, true, true, false},
		{JobSystem, true, false, true},
		{JobSysBatch, true, true, true},
		{"daemon", false, false, false},
	} {
		if c.typ.Valid() != c.valid || c.typ.RunsToCompletion() != c.completes || c.typ.OnEveryDevice() != c.everyDev {
			t.Errorf("%s: Valid %v RunsToCompletion %v OnEveryDevice %v", c.typ, c.typ.Valid(), c.typ.RunsToCompletion(), c.typ.OnEveryDevice())
		}
	}
}

func TestConstraintString(t *testing.T) {
	for _, c := range []struct {
		c    Constraint
		want string
	}{
		{Constraint{Attribute: "${device.arch}", Value: "arm64"}, "${device.arch} = arm64"},
		{Constraint{Attribute: "${device.cpu.cores}", Operator: ">=", Value: "4"}, "${device.cpu.cores} >= 4"},
		{Constraint{Attribute: "${device.labels.gpu}", Operator: "is_set"}, "${device.labels.gpu} is_set"},
		{Constraint{Operator: "distinct_hosts"}, "distinct_hosts"},
		{Constraint{Attribute: "${device.labels.site}", Operator: "distinct_property"}, "distinct_property ${device.labels.site}"},
		{Constraint{Attribute: "${device.labels.site}", Operator: "distinct_property", Value: "2"}, "distinct_property ${device.labels.site} 2"},
	} {
		if got := c.c.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.c, got, c.want)
		}
	}
}

// Tasks written before disk and devices existed must keep their SpecHash, or
// edged would replace every running workload after an upgrade.
func TestSpecHashUnchangedByNewFields(t *testing.T) {
	task := Task{Name: "httpd", Driver: DriverPodman, Config: TaskConfig{Image: "localhost/busybox:latest", Command: []string{"/bin/httpd", "-f"}},
		Env: map[string]string{"GREETING": "hi"}, Resources: Resources{CPU: 100, Memory: 32},
		Restart: &RestartPolicy{Attempts: 3, Delay: Duration(2 * time.Second), Interval: Duration(30 * time.Minute), Mode: RestartDelay}}
	if got, want := SpecHash(task), "ed32e1572e8f52fd"; got != want { // computed by the code before disk and devices
		t.Errorf("SpecHash = %s, want %s", got, want)
	}
	task.Resources.Devices = []DeviceRequest{}
	if SpecHash(task) != "ed32e1572e8f52fd" {
		t.Error("an empty device list changed the hash")
	}
}

func TestTaskEqualAgreesWithSpecHash(t *testing.T) {
	// Equal must know every field: a new one needs a line in Equal and a new
	// count here.
	for _, c := range []struct {
		v    any
		want int
	}{{Task{}, 6}, {TaskConfig{}, 3}, {Resources{}, 4}, {RestartPolicy{}, 4}, {DeviceRequest{}, 2}} {
		if n := reflect.TypeOf(c.v).NumField(); n != c.want {
			t.Errorf("%T has %d fields, Task.Equal knows %d", c.v, n, c.want)
		}
	}
	rapid.Check(t, func(t *rapid.T) {
		a := genTask(t, "a")
		b := a
		if rapid.Bool().Draw(t, "independent") {
			b = genTask(t, "b")
		} else {
			b = mutate(t, a)
		}
		if eq, hashEq := a.Equal(b), SpecHash(a) == SpecHash(b); eq != hashEq {
			t.Fatalf("Equal = %v, SpecHash equal = %v:\n%+v\n%+v", eq, hashEq, a, b)
		}
	})
}

// genTask draws tasks from small pools so that independent draws are often
// equal.
func genTask(t *rapid.T, label string) Task {
	small := func(name string) string { return rapid.SampledFrom([]string{"", "a", "b"}).Draw(t, label+name) }
	strs := func(name string) []string {
		switch rapid.IntRange(0, 2).Draw(t, label+name) {
		case 0:
			return nil
		case 1:
			return []string{}
		}
		return rapid.SliceOfN(rapid.SampledFrom([]string{"x", "y"}), 1, 2).Draw(t, label+name+" items")
	}
	task := Task{
		Name: small("name"), Driver: small("driver"),
		Config:    TaskConfig{Image: small("image"), Command: strs("command"), Network: small("network")},
		Resources: Resources{CPU: rapid.IntRange(0, 1).Draw(t, label+"cpu"), Memory: rapid.IntRange(0, 1).Draw(t, label+"mem"), Disk: rapid.IntRange(0, 1).Draw(t, label+"disk")},
	}
	switch rapid.IntRange(0, 2).Draw(t, label+"env") {
	case 1:
		task.Env = map[string]string{}
	case 2:
		task.Env = map[string]string{small("k"): small("v")}
	}
	switch rapid.IntRange(0, 2).Draw(t, label+"devices") {
	case 1:
		task.Resources.Devices = []DeviceRequest{}
	case 2:
		task.Resources.Devices = []DeviceRequest{{Name: small("dev"), Count: rapid.IntRange(0, 2).Draw(t, label+"count")}}
	}
	if rapid.Bool().Draw(t, label+"restart") {
		task.Restart = &RestartPolicy{Attempts: rapid.IntRange(0, 1).Draw(t, label+"attempts"), Delay: Duration(rapid.IntRange(0, 1).Draw(t, label+"delay")), Mode: small("mode")}
	}
	return task
}

// mutate changes one field of a task, or none.
func mutate(t *rapid.T, a Task) Task {
	b := a
	b.Env = maps.Clone(a.Env)
	b.Config.Command = slices.Clone(a.Config.Command)
	switch rapid.IntRange(0, 8).Draw(t, "mutation") {
	case 1:
		b.Name += "x"
	case 2:
		b.Config.Command = append(b.Config.Command, "z")
	case 3:
		if b.Env == nil {
			b.Env = map[string]string{}
		}
		b.Env["new"] = "1"
	case 4:
		b.Resources.Disk++
	case 5:
		b.Resources.Devices = append(slices.Clone(b.Resources.Devices), DeviceRequest{Name: "nvidia/gpu", Count: 1})
	case 6:
		if b.Restart == nil {
			b.Restart = &RestartPolicy{}
		} else {
			r := *b.Restart
			r.Interval++
			b.Restart = &r
		}
	case 7:
		if b.Env == nil {
			b.Env = map[string]string{} // nil and empty are equal
		} else if len(b.Env) > 0 {
			for k := range b.Env {
				b.Env[k] += "!"
			}
		}
	case 8:
		if b.Restart != nil {
			r := *b.Restart // equal content at another address
			b.Restart = &r
		}
	}
	return b
}

func TestVersions(t *testing.T) {
	for _, c := range []struct {
		rng, version string
		want         bool
	}{
		{">= 1.2, < 2.0", "1.2", true},
		{">= 1.2, < 2.0", "1.2.0", true},
		{">= 1.2, < 2.0", "1.10.3", true},
		{">= 1.2, < 2.0", "2.0", false},
		{">= 1.2, < 2.0", "1.1.9", false},
		{">= 1.2, < 2.0", "v1.5", true},
		{">= 5.10", "6.1.0-18-amd64", true}, // a kernel's suffix is not a pre-release for a plain range
		{">= 6.1", "6.1.0-18-amd64", true},
		{"> 6.1", "6.1.0-18-amd64", false},
		{"< 6.2", "6.1.21-v8+", true},
		{"= 1.2", "1.2.0", true},
		{"1.2", "1.2.1", false},
		{"== 1.2.1", "1.2.1", true},
		{"!= 1.2.1", "1.2.1", false},
		{"<= 1.2.1", "1.2.1", true},
		{"~> 1.2", "1.9", true},
		{"~> 1.2", "2.0", false},
		{"~> 1.2", "1.1", false},
		{"~> 1.2.3", "1.2.9", true},
		{"~> 1.2.3", "1.3.0", false},
		{"~> 1", "1.9", true},
		{"~> 1", "2", false},
		{">= 1.0.0-rc.1", "1.0.0-rc.2", true},
		{">= 1.0.0-rc.1", "1.0.0-beta", false},
		{">= 1.0.0-rc.1", "1.0.0", true},
		{"< 1.0.0-rc.1", "1.0.0-alpha.10", true},
		{"> 1.0.0-alpha.2", "1.0.0-alpha.10", true}, // numeric identifiers compare as numbers
		{"> 1.0.0-alpha", "1.0.0-alpha.1", true},    // a longer pre-release is later
		{"< 1.0.0-alpha.1", "1.0.0-alpha.beta", false},
		{">= 1", "not a version", false},
		{">= 1", "", false},
	} {
		r, err := ParseVersionRange(c.rng)
		if err != nil {
			t.Errorf("%q: %v", c.rng, err)
			continue
		}
		v, err := ParseVersion(c.version)
		if got := err == nil && r.Contains(v); got != c.want {
			t.Errorf("%q contains %q = %v, want %v", c.rng, c.version, got, c.want)
		}
	}
	for _, bad := range []string{"", ">=", ">= 1,", "1.x", "1..2", ">= -1", "1.0-", "1.0-a..b", "~~> 1", "1.2.3 4"} {
		if _, err := ParseVersionRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSplitSetAndNumbers(t *testing.T) {
	if got := SplitSet(" a, b ,,c "); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("SplitSet = %q", got)
	}
	for _, s := range []string{"4", "-1", "2.5", "1e3"} {
		if _, err := ParseNumber(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	for _, s := range []string{"", "abc", "NaN", "Inf", "4 "} {
		if _, err := ParseNumber(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestDisconnectDefaults(t *testing.T) {
	j, err := ParseJob([]byte(`{"id":"x","groups":[{"name":"g","tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	g := j.Groups[0]
	if g.Disconnect != nil {
		t.Errorf("Normalize filled in a disconnect policy: %+v", g.Disconnect)
	}
	if g.LostAfter() != DefaultLostAfter || DefaultLostAfter != 5*time.Minute || !g.ReplacesLost(JobService) || !g.ReplacesLost(JobBatch) ||
		g.ReplacesLost(JobSystem) || g.ReplacesLost(JobSysBatch) || g.ReconcileStrategy() != ReconcileBestScore || g.StopAfter() != 0 {
		t.Errorf("defaults: lost after %s, replaces %v, reconcile %q, stop after %s", g.LostAfter(), g.ReplacesLost(JobService), g.ReconcileStrategy(), g.StopAfter())
	}
	// A document without the block encodes without it: jobs accepted before
	// it existed compare equal to the same document submitted again.
	raw, _ := Encode(j)
	if strings.Contains(string(raw), "disconnect") {
		t.Errorf("encoded a disconnect policy: %s", raw)
	}

	j, err = ParseJob([]byte(`
id: x
groups:
  - name: g
    disconnect: {lost_after: 90s, replace: false, reconcile: keep_replacement, stop_after: 10m}
    tasks: [{name: t, driver: exec, config: {command: [/bin/true]}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	g = j.Groups[0]
	if g.LostAfter() != 90*time.Second || g.ReplacesLost(JobService) || g.ReconcileStrategy() != ReconcileKeepReplacement || g.StopAfter() != 10*time.Minute {
		t.Errorf("policy: lost after %s, replaces %v, reconcile %q, stop after %s", g.LostAfter(), g.ReplacesLost(JobService), g.ReconcileStrategy(), g.StopAfter())
	}
	// A partial block keeps the other defaults, and is kept as written.
	j, err = ParseJob([]byte(`{"id":"x","groups":[{"name":"g","disconnect":{"stop_after":"30s"},"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	g = j.Groups[0]
	if g.LostAfter() != DefaultLostAfter || !g.ReplacesLost(JobBatch) || g.ReconcileStrategy() != DefaultReconcile || g.StopAfter() != 30*time.Second {
		t.Errorf("partial policy: %+v", *g.Disconnect)
	}
	if raw, _ := Encode(j); !strings.Contains(string(raw), `"disconnect":{"stop_after":"30s"}`) {
		t.Errorf("partial policy encoded as %s", raw)
	}
}

func TestDisconnectValidation(t *testing.T) {
	job := func(typ JobType, disconnect string) string {
		return `{"id":"x","type":"` + string(typ) + `","groups":[{"name":"g","disconnect":` + disconnect +
			`,"tasks":[{"name":"t","driver":"exec","config":{"command":["/bin/true"]}}]}]}`
	}
	for _, c := range []struct {
		doc  string
		want []string // nil: valid
	}{
		{job(JobService, `{"lost_after":"-1m","stop_after":"-5s","reconcile":"x"}`), []string{
			"groups[0].disconnect.lost_after: want a positive duration, got -1m0s",
			"groups[0].disconnect.stop_after: want a positive duration, got -5s",
			`groups[0].disconnect.reconcile: unknown strategy "x", want keep_original, keep_replacement, best_score or longest_running`,
		}},
		{job(JobSystem, `{"replace":true}`), []string{
			"groups[0].disconnect.replace: not used by system jobs, whose allocations are bound to their device and never replaced",
		}},
		{job(JobSysBatch, `{"replace":true,"reconcile":"keep_original"}`), []string{
			"groups[0].disconnect.replace: not used by sysbatch jobs, whose allocations are bound to their device and never replaced",
		}},
		{job(JobSystem, `{"replace":false,"lost_after":"1h","stop_after":"2h"}`), nil},
		{job(JobSysBatch, `{}`), nil},
		{job(JobBatch, `{"replace":true,"reconcile":"longest_running","stop_after":"1m"}`), nil},
		// Shape errors: each is reported (with others the undecodable
		// duration causes), not just the first.
		{job(JobService, `{"lost_after":"soon","replace":"yes","lsot_after":"1m"}`), []string{
			`groups[0].disconnect.lost_after: want a duration such as "15s", got "soon"`,
			"groups[0].disconnect.replace: want boolean, got string",
			"groups[0].disconnect.lsot_after: unknown field, want one of lost_after, replace, reconcile, stop_after",
		}},
	} {
		checkFieldErrors(t, c.doc, c.want)
	}
}

// checkFieldErrors parses a job document and checks that it is accepted
// (want nil) or refused with every error in want, each with its path.
func checkFieldErrors(t *testing.T, doc string, want []string) {
	t.Helper()
	_, err := ParseJob([]byte(doc))
	var got []string
	for _, fe := range FieldErrors(err) {
		got = append(got, fe.Error())
	}
	if want == nil && err != nil {
		t.Errorf("%s: refused: %q", doc, got)
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s: missing %q in %q", doc, w, got)
		}
	}
}
