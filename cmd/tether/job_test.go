package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tether-edge/tether/protocol"
)

// A status that leaves allocations out says how many, by state, after the
// ones it lists; its JSON passes the count through.
func TestJobStatusSaysWhatItLeftOut(t *testing.T) {
	t.Parallel()
	lb := newListBroker(t)
	lb.publish(lb.topics.JobStatus("fleet"), protocol.JobStatus{Job: "fleet", State: protocol.JobDegraded, Version: 1, Type: protocol.JobService,
		Allocs: []protocol.AllocSummary{
			{ID: "fleet.web.2-c", Group: "web", Device: "pi-09", Version: 1, State: protocol.AllocFailed, Message: "httpd: exited with code 1"},
			{ID: "fleet.web.0-a", Group: "web", Device: "pi-07", Version: 1, State: protocol.AllocRunning, Health: protocol.Healthy, Message: "replaces fleet.web.0-z"}},
		AllocsOmitted: 179998,
		Counts:        protocol.PlacementCounts{Desired: 180000, Placed: 180000, Running: 179990, Complete: 0, Pending: 9, Failed: 1}})
	lb.publish(lb.topics.JobStatus("small"), protocol.JobStatus{Job: "small", State: protocol.JobRunning, Version: 1,
		Allocs: []protocol.AllocSummary{{ID: "small.web.0-a", Group: "web", Device: "pi-07", Version: 1, State: protocol.AllocRunning}},
		Counts: protocol.PlacementCounts{Desired: 1, Placed: 1, Running: 1}})

	out, stderr, err := lb.run("job", "status", "fleet")
	if err != nil {
		t.Fatalf("job status: %v\n%s", err, stderr)
	}
	want := `Allocations
ID             GROUP  DEVICE  VERSION  STATE    HEALTH   MESSAGE
fleet.web.2-c  web    pi-09   1        failed   -        httpd: exited with code 1
fleet.web.0-a  web    pi-07   1        running  healthy  replaces fleet.web.0-z
…and 179998 more allocations (179989 running, 9 pending); see ` + "`tether device list`\n"
	if !strings.HasSuffix(out, want) {
		t.Errorf("job status ends:\n%s\nwant it to end:\n%s", out, want)
	}

	out, stderr, err = lb.run("job", "status", "fleet", "-o", "json")
	if err != nil {
		t.Fatalf("job status -o json: %v\n%s", err, stderr)
	}
	var st protocol.JobStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.AllocsOmitted != 179998 || len(st.Allocs) != 2 {
		t.Errorf("job status -o json: %v\n%s", err, out)
	}

	out, stderr, err = lb.run("job", "status", "small")
	if err != nil {
		t.Fatalf("job status: %v\n%s", err, stderr)
	}
	if strings.Contains(out, "more allocations") {
		t.Errorf("a status that lists every allocation says there are more:\n%s", out)
	}
}

func TestOmittedStates(t *testing.T) {
	t.Parallel()
	listed := []protocol.AllocSummary{{State: protocol.AllocFailed}, {State: protocol.AllocRunning}}
	for _, c := range []struct {
		omitted int
		counts  protocol.PlacementCounts
		want    string
	}{
		{3, protocol.PlacementCounts{Running: 3, Failed: 1, Lost: 1}, " (2 running, 1 lost)"},
		{5, protocol.PlacementCounts{Running: 3, Failed: 1, Lost: 1}, ""}, // counts short of what was left out
		{1, protocol.PlacementCounts{Running: 3, Failed: 1}, ""},          // counts over it
		{1, protocol.PlacementCounts{Running: 2}, ""},                     // a listed failure not counted
	} {
		st := protocol.JobStatus{Allocs: listed, AllocsOmitted: c.omitted, Counts: c.counts}
		if got := omittedStates(st); got != c.want {
			t.Errorf("%d omitted of %+v: %q, want %q", c.omitted, c.counts, got, c.want)
		}
	}
}
