package protocol

import (
	"bytes"
	"crypto/ed25519"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func intp(i int) *int { return &i }

func boolp(b bool) *bool { return &b }

// goldenMessages are encoded and compared with testdata/golden/NAME.json,
// then decoded back: the wire format is reviewable as a diff.
func goldenMessages() map[string]any {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	task := Task{Name: "httpd", Driver: DriverPodman, Config: TaskConfig{Image: "localhost/busybox:latest", Command: []string{"/bin/httpd", "-f"}},
		Env: map[string]string{"GREETING": "hi"}, Resources: Resources{CPU: 100, Memory: 32},
		Restart: &RestartPolicy{Attempts: 3, Delay: Duration(2 * time.Second), Interval: Duration(30 * time.Minute), Mode: RestartDelay}}
	return map[string]any{
		"desired": Desired{Device: "pi-07", Generation: 4, IssuedAt: at, Allocations: []Allocation{
			{ID: "hello.web.0-abc123", Job: "hello", JobVersion: 2, Group: "web", Type: JobService, Tasks: []Task{task}}}},
		"reported": Reported{Device: "pi-07", ObservedGeneration: 4, Time: at, Allocations: []AllocStatus{
			{ID: "hello.web.0-abc123", Job: "hello", JobVersion: 2, Group: "web", State: AllocRunning,
				Tasks: []TaskStatus{{Name: "httpd", State: TaskRunning, Restarts: 1, ExitCode: intp(137), StartedAt: &at}}}}},
		"presence": Presence{Device: "pi-07", Status: Online, Since: &at, Version: "v0.1.0"},
		"facts": Facts{Device: "pi-07", Hostname: "pi", Arch: "arm64", OS: "linux", Kernel: "6.1.0", CPUCores: 4, CPUMHz: 6000,
			MemoryMB: 3900, Drivers: []string{"exec", "podman"}, Labels: map[string]string{"site": "berlin"}},
		"event": Event{Device: "pi-07", Seq: 17, Time: at, Type: EventRestarting, Alloc: "hello.web.0-abc123", Job: "hello", Task: "httpd", ExitCode: intp(137), Message: "exited with code 137"},
		"fleetsummary": FleetSummary{Devices: DeviceCounts{Total: 3, Online: 2, Offline: 1, ByArch: map[string]int{"amd64": 1, "arm64": 2},
			ByLabel: map[string]map[string]int{"site": {"berlin": 2, "paris": 1}}},
			Jobs: []JobBrief{{Job: "hello", Type: JobService, Version: 2, State: JobRunning, Counts: PlacementCounts{Desired: 2, Placed: 2, Running: 2}}}, UpdatedAt: at},
		"jobstatus": JobStatus{Job: "hello", State: JobRunning, Version: 2, Type: JobService, Submission: "ab12",
			Groups: []GroupStatus{{Name: "web", Desired: 2, Placed: 1, Unplaced: "1 of 2 instances unplaced: 0 of 1 devices feasible: 1 lack driver podman"}},
			Allocs: []AllocSummary{{ID: "hello.web.0-abc123", Group: "web", Device: "pi-07", Version: 2, State: AllocRunning}},
			Counts: PlacementCounts{Desired: 2, Placed: 1, Running: 1}, UpdatedAt: at},
		"jobstatus-omitted": JobStatus{Job: "fleet", State: JobDegraded, Version: 1, Type: JobService,
			Groups: []GroupStatus{{Name: "web", Desired: 3, Placed: 3}},
			Allocs: []AllocSummary{{ID: "fleet.web.2-c", Group: "web", Device: "pi-09", Version: 1, State: AllocFailed, Message: "httpd: exited with code 1"},
				{ID: "fleet.web.0-a", Group: "web", Device: "pi-07", Version: 1, State: AllocRunning}},
			AllocsOmitted: 1, Counts: PlacementCounts{Desired: 3, Placed: 3, Running: 2, Failed: 1}, UpdatedAt: at},
		"jobstatus-rollout": JobStatus{Job: "hello", State: JobRunning, Version: 3, Type: JobSystem,
			Allocs: []AllocSummary{{ID: "hello.web.0-abc123", Group: "web", Device: "pi-07", Version: 3, State: AllocRunning, Health: Healthy}},
			Counts: PlacementCounts{Desired: 1, Placed: 1, Running: 1},
			Rollout: &Rollout{Version: 3, State: RolloutPaused, Description: "canaries healthy: waiting for promotion", StartedAt: at, ProgressAt: at,
				Groups: []RolloutGroup{{Name: "web", Total: 40, Canaries: 2, Updated: 3, Healthy: 2, PendingOffline: 1}}}, UpdatedAt: at},
		"promote":    Promote{Job: "hello", Version: 3},
		"scheduling": Scheduling{Device: "pi-07", Drain: true},
		"history": JobHistory{Job: "hello", Versions: []JobVersionEntry{{Version: 2, SubmittedAt: at, Digest: "ab12", Stable: true,
			Rollout: &Rollout{Version: 2, State: RolloutSuccessful, StartedAt: at, ProgressAt: at, Groups: []RolloutGroup{{Name: "web", Total: 2, Updated: 2, Healthy: 2}}},
			Job:     Job{ID: "hello", Type: JobService, Groups: []Group{{Name: "web", Update: &Update{MaxParallel: 2, Canary: 1, AutoRevert: true, Abort: &Abort{FailureRatio: 0.1, MinDevices: 20}}, Tasks: []Task{task}}}}}}},
		"planresult": PlanResult{Job: "hello", Version: 3, Destructive: []PlannedAlloc{{ID: "hello.web.0-abc123", Group: "web", Device: "pi-07"}},
			Deferred: []PlannedAlloc{{ID: "hello.web.1-def456", Group: "web", Device: "pi-08", Reason: "max_parallel 1"}},
			Groups:   []GroupStatus{{Name: "web", Desired: 2, Placed: 2}}},
		"desired-signed": goldenSignedDesired(at),
		"adminrequest":   AdminRequest{Op: OpEnrollCreate, Name: "batch 7", Uses: 500, TTL: Duration(24 * time.Hour), Labels: map[string]string{"site": "berlin"}},
		"adminresult": AdminResult{OK: true, Token: "0a1b2c3d4e5f.c2VjcmV0", Tokens: []TokenInfo{{ID: "0a1b2c3d4e5f", Role: RoleEnroll, Name: "batch 7",
			CreatedAt: at, ExpiresAt: &at, UsesLeft: 500, Labels: map[string]string{"site": "berlin"}}}},
		"enrollrequest": EnrollRequest{Device: "pi-07", Secret: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"},
		"deviceindex": DeviceIndexPage{Page: 1, Pages: 3, UpdatedAt: at, Devices: []DeviceBrief{
			{ID: "pi-07", Presence: &PresenceBrief{Status: Online, Since: &at},
				Facts:            &FactsBrief{Arch: "arm64", OS: "linux", CPUMHz: 6000, MemoryMB: 3900, Drivers: []string{"exec", "podman"}, Labels: map[string]string{"site": "berlin"}},
				Scheduling:       &SchedulingBrief{Eligible: boolp(false), Drain: true},
				AllocationsTotal: 2, AllocationsRunning: 1, ReportedAt: &at},
			{ID: "pi-08"}}},
		"enrollresult": EnrollResult{Device: "pi-07", OK: true, Labels: map[string]string{"site": "berlin"}, PlannerKeys: []string{EncodeKey(goldenKey().Public().(ed25519.PublicKey))}},
	}
}

// goldenKey is a fixed signing key, so that signed golden files are stable
// (ed25519 signatures are deterministic).
func goldenKey() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)) }

func goldenSignedDesired(at time.Time) Desired {
	next := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	d, err := SignDesired(Desired{Device: "pi-07", Generation: 5, IssuedAt: at, Allocations: []Allocation{}},
		next, []Endorsement{Endorse(goldenKey(), next.Public().(ed25519.PublicKey))})
	if err != nil {
		panic(err)
	}
	return d
}

func TestGolden(t *testing.T) {
	decoders := map[string]func([]byte) (any, error){
		"desired":           func(b []byte) (any, error) { return DecodeDesired(b) },
		"reported":          func(b []byte) (any, error) { return DecodeReported(b) },
		"presence":          func(b []byte) (any, error) { return DecodePresence(b) },
		"facts":             func(b []byte) (any, error) { return DecodeFacts(b) },
		"event":             func(b []byte) (any, error) { return DecodeEvent(b) },
		"jobstatus":         func(b []byte) (any, error) { return DecodeJobStatus(b) },
		"fleetsummary":      func(b []byte) (any, error) { return DecodeFleetSummary(b) },
		"jobstatus-rollout": func(b []byte) (any, error) { return DecodeJobStatus(b) },
		"jobstatus-omitted": func(b []byte) (any, error) { return DecodeJobStatus(b) },
		"promote":           func(b []byte) (any, error) { return DecodePromote(b) },
		"scheduling":        func(b []byte) (any, error) { return DecodeScheduling(b) },
		"history":           func(b []byte) (any, error) { return DecodeJobHistory(b) },
		"planresult":        func(b []byte) (any, error) { return DecodePlanResult(b) },
		"desired-signed":    func(b []byte) (any, error) { return DecodeDesired(b) },
		"adminrequest":      func(b []byte) (any, error) { return DecodeAdminRequest(b) },
		"adminresult":       func(b []byte) (any, error) { return DecodeAdminResult(b) },
		"enrollrequest":     func(b []byte) (any, error) { return DecodeEnrollRequest(b) },
		"enrollresult":      func(b []byte) (any, error) { return DecodeEnrollResult(b) },
		"deviceindex":       func(b []byte) (any, error) { return DecodeDeviceIndexPage(b) },
	}
	for name, msg := range goldenMessages() {
		t.Run(name, func(t *testing.T) {
			raw, err := Encode(msg)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "golden", name+".json")
			if *update {
				os.MkdirAll(filepath.Dir(path), 0o755)
				if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./protocol -update to create it)", err)
			}
			if strings.TrimSpace(string(want)) != string(raw) {
				t.Errorf("wire format changed:\n got %s\nwant %s", raw, want)
			}
			back, err := decoders[name](want)
			if err != nil {
				t.Fatalf("decode golden: %v", err)
			}
			again, _ := Encode(back)
			if string(again) != string(raw) {
				t.Errorf("decode/encode round trip changed it:\n got %s\nwant %s", again, raw)
			}
		})
	}
}

func decodeIndex(b []byte) error { _, err := DecodeDeviceIndexPage(b); return err }

func TestDecodersRejectBadInput(t *testing.T) {
	cases := []struct {
		name string
		fn   func([]byte) error
		in   string
		want string
	}{
		{"desired device", func(b []byte) error { _, err := DecodeDesired(b); return err }, `{"device":"a/b","generation":1,"allocations":[]}`, "device: invalid identifier"},
		{"desired dup alloc", func(b []byte) error { _, err := DecodeDesired(b); return err },
			`{"device":"d","generation":1,"allocations":[{"id":"a","job":"j","group":"g","type":"service","tasks":[{"name":"t","driver":"exec","config":{"command":["x"]},"resources":{"cpu":1,"memory":1}}]},{"id":"a","job":"j","group":"g","type":"service","tasks":[{"name":"t","driver":"exec","config":{"command":["x"]},"resources":{"cpu":1,"memory":1}}]}]}`,
			`allocations[1].id: duplicate allocation "a"`},
		{"desired negative generation", func(b []byte) error { _, err := DecodeDesired(b); return err }, `{"device":"d","generation":-1}`, "generation: want non-negative integer"},
		{"reported state", func(b []byte) error { _, err := DecodeReported(b); return err }, `{"device":"d","allocations":[{"id":"a","state":"weird"}]}`, `allocations[0].state: unknown state "weird"`},
		{"presence status", func(b []byte) error { _, err := DecodePresence(b); return err }, `{"device":"d","status":"maybe"}`, `status: unknown status "maybe"`},
		{"facts label", func(b []byte) error { _, err := DecodeFacts(b); return err }, `{"device":"d","labels":{"a b":"x"}}`, "labels.a b: invalid label key"},
		{"event type", func(b []byte) error { _, err := DecodeEvent(b); return err }, `{"device":"d"}`, "type: required"},
		{"index page past pages", decodeIndex, `{"page":3,"pages":3,"devices":[]}`, "page: 3 is past the last page: pages is 3"},
		{"index no pages", decodeIndex, `{"page":0,"pages":0,"devices":[]}`, "pages: must be at least 1"},
		{"index negative page", decodeIndex, `{"page":-1,"pages":1}`, "page: must not be negative"},
		{"index device id", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"a/b"}]}`, "devices[0].id: invalid identifier"},
		{"index order", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"b"},{"id":"a"}]}`, `devices[1].id: "a" after "b": want ids in ascending order`},
		{"index duplicate", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"a"},{"id":"a"}]}`, `devices[1].id: "a" after "a"`},
		{"index presence", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"a","presence":{"status":"maybe"}}]}`, `devices[0].presence.status: unknown status "maybe"`},
		{"index label", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"a","facts":{"labels":{"a b":"x"}}}]}`, "devices[0].facts.labels.a b: invalid label key"},
		{"index memory", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"a","facts":{"memory_mb":-1}}]}`, "devices[0].facts.memory_mb: must not be negative"},
		{"index drain", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"a","scheduling":{"eligible":true,"drain":true}}]}`, "devices[0].scheduling.eligible: must be false while drain is true"},
		{"index running", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"a","allocations_total":1,"allocations_running":2}]}`, "devices[0].allocations_running: 2: want 0 to allocations_total (1)"},
		{"index unknown field", decodeIndex, `{"page":0,"pages":1,"devices":[{"id":"a","allocations":[]}]}`, "devices[0].allocations: unknown field"},
		{"job status omitted", func(b []byte) error { _, err := DecodeJobStatus(b); return err }, `{"job":"j","state":"running","version":1,"allocations_omitted":-1,"counts":{}}`, "allocations_omitted: must not be negative"},
		{"trailing", func(b []byte) error { _, err := DecodePresence(b); return err }, `{"device":"d","status":"online"} {}`, "trailing data"},
		{"unknown field", func(b []byte) error { _, err := DecodePresence(b); return err }, `{"device":"d","status":"online","x":1}`, "x: unknown field"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.fn([]byte(c.in))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want error containing %q", err, c.want)
			}
		})
	}
}
