package protocol

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
