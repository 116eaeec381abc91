package main

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tether-edge/tether/protocol"
)

func TestScenarioOrderAndDependencies(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, allScenarios},
		{[]string{"-scenario", "all"}, []string{"connect", "system", "restart", "steady", "service"}},
		{[]string{"-scenario", "connect"}, []string{"connect"}},
		{[]string{"-scenario", "service"}, []string{"connect", "service"}},
		{[]string{"-scenario", "restart"}, []string{"connect", "system", "restart"}},
		{[]string{"-scenario", "steady,system"}, []string{"connect", "system", "steady"}},
		{[]string{"-scenario", "all", "-broker-impl", "broker-only"}, []string{"connect"}},
	} {
		o, err := parseFlags(tc.args, io.Discard)
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if !slices.Equal(o.scenarios, tc.want) {
			t.Errorf("%v: scenarios %v, want %v", tc.args, o.scenarios, tc.want)
		}
	}
	for _, bad := range [][]string{{"-scenario", "nope"}, {"-broker-impl", "rabbit"}, {"-devices", "0"}, {"-per-sim", "9000"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%v: accepted", bad)
		}
	}
}

// The jobs fleetbench submits must pass the planner's validation at every
// fleet size, 18,000 devices (180,000 instances) included.
func TestJobsAreValid(t *testing.T) {
	t.Parallel()
	for _, job := range []protocol.Job{systemJob(), serviceJob(10, "1"), serviceJob(10_000, "1"), serviceJob(180_000, "2")} {
		job.Normalize()
		if err := job.Validate(); err != nil {
			t.Errorf("%s with %d groups: %v", job.ID, len(job.Groups), err)
		}
	}
	j := serviceJob(180_000, "1")
	total := 0
	for _, g := range j.Groups {
		total += g.Instances()
	}
	if total != 180_000 || len(j.Groups) != 18 {
		t.Errorf("180,000 instances: %d in %d groups, want 180,000 in 18", total, len(j.Groups))
	}
}

func TestSampleReadsProc(t *testing.T) {
	t.Parallel()
	u := sample(os.Getpid())
	if !u.exists || u.rssKB <= 0 || u.anonKB <= 0 || u.anonKB > u.rssKB {
		t.Errorf("sample of this process: %+v", u)
	}
	if u := sample(1 << 30); u.exists {
		t.Errorf("sample of a process that does not exist: %+v", u)
	}
}

func TestServerWarnings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	log := strings.Join([]string{
		"MQTT broker:   mqtt://127.0.0.1:1",
		"23:06:55 WRN --insecure-plaintext: credentials and desired state cross the network unencrypted",
		`23:06:55 WRN client connection failed error="packet too large" component=mochi client=a remote=127.0.0.1:5 part=broker`,
		`23:06:56 WRN client connection failed error="packet too large" component=mochi client=b remote=127.0.0.1:6 part=broker`,
		"23:06:57 INF something fine",
		`23:06:58 ERR reconcile error="publish fleet summary: timed out" part=planner`,
	}, "\n")
	if err := os.WriteFile(filepath.Join(dir, "server-1.log"), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &bench{dir: dir, serverRuns: 1}
	got := b.serverWarnings(logMark{run: 1})
	want := []string{
		`server log: 2× WRN client connection failed error="packet too large" component=mochi part=broker`,
		`server log: 1× ERR reconcile error="publish fleet summary: timed out" part=planner`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestMarkdownRow(t *testing.T) {
	t.Parallel()
	res := &Result{Devices: 10, BrokerImpl: "embedded", Sims: 1, Scenarios: []*Scenario{
		{Name: "restart", OK: false, Error: "first line | with a bar\nsecond line", Metrics: []Metric{{"workloads_restarted", 3, ""}, {"reconverged_s", 7.25, "s"}},
			Usage: map[string]ProcUsage{"server": {CPUSeconds: 1.5, CPUPercent: 20, RSSEndMB: 100, RSSPeakMB: 120}}},
	}}
	md := markdown(res)
	row := ""
	for _, l := range strings.Split(md, "\n") {
		if strings.HasPrefix(l, "| restart") {
			row = l
		}
	}
	for _, want := range []string{"NO: first line / with a bar", "reconverged_s 7.2s", "workloads_restarted 3", "1.5 (20%)", "100 (120)"} {
		if !strings.Contains(row, want) {
			t.Errorf("row %q lacks %q", row, want)
		}
	}
	if strings.Contains(md, "second line") {
		t.Errorf("a multi-line error broke the table:\n%s", md)
	}
}
