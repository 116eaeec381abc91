package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-edge/tether/internal/podmantest"
	"github.com/tether-edge/tether/protocol"
)

type container struct {
	ID     string            `json:"Id"`
	State  string            `json:"State"`
	Labels map[string]string `json:"Labels"`
}

// containers lists the containers labelled with the device, straight from
// Podman.
func containers(t *testing.T, device string) []container {
	t.Helper()
	out, err := exec.Command("podman", "ps", "-a", "--filter", "label=tether.device="+device, "--format", "json").Output()
	if err != nil {
		t.Fatalf("podman ps: %v", err)
	}
	var cs []container
	if err := json.Unmarshal(out, &cs); err != nil {
		t.Fatalf("podman ps output: %v\n%s", err, out)
	}
	return cs
}

func runningContainers(t *testing.T, device string) []container {
	var out []container
	for _, c := range containers(t, device) {
		if c.State == "running" {
			out = append(out, c)
		}
	}
	return out
}

const helloJob = `id: %JOB%
type: service
groups:
  - name: web
    count: 1
    tasks:
      - name: httpd
        driver: podman
        config:
          image: %IMAGE%
          command: ["/bin/httpd", "-f", "-p", "8080"]
        env: {GREETING: hi}
        resources: {cpu: 100, memory: 32}
        restart: {attempts: 3, delay: 1s, mode: delay}
`

// TestPodmanEndToEnd is the main path with real binaries and real Podman:
// tether dev + tether job run → a labelled container runs → job status
// shows it → the container is killed → edged restarts it → tether job stop
// → the container is gone. An invalid job file fails with its field errors
// and changes nothing.
func TestPodmanEndToEnd(t *testing.T) {
	socket, image := podmanTest(t)
	device := podmantest.NewDevice(t)
	_, env := devServer(t, "--device-id", device, "--podman-socket", socket, "--label", "site=lab")

	job := "hello-" + strings.TrimPrefix(device, "pt-")
	file := filepath.Join(t.TempDir(), "hello.yaml")
	doc := strings.NewReplacer("%JOB%", job, "%IMAGE%", image).Replace(helloJob)
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}

	begin := time.Now()
	r := run(t, env, "tether", "job", "run", file, "--timeout", "2m")
	elapsed := time.Since(begin)
	if r.code != 0 || !strings.Contains(r.stdout, "is running") {
		t.Fatalf("job run: exit %d", r.code)
	}
	t.Logf("tether job run → running container: %s", elapsed.Round(time.Millisecond))

	cs := runningContainers(t, device)
	if len(cs) != 1 {
		t.Fatalf("want 1 running container for %s, got %+v", device, containers(t, device))
	}
	first := cs[0]
	for _, l := range []string{"tether.alloc", "tether.job", "tether.group", "tether.task", "tether.spec", "tether.device"} {
		if first.Labels[l] == "" {
			t.Errorf("container lacks label %s: %v", l, first.Labels)
		}
	}
	if first.Labels["tether.job"] != job || first.Labels["tether.group"] != "web" || first.Labels["tether.task"] != "httpd" {
		t.Errorf("labels %v", first.Labels)
	}

	r = run(t, env, "tether", "job", "status", job, "-o", "json")
	var st protocol.JobStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 {
		t.Fatalf("job status: %v", err)
	}
	if st.State != protocol.JobRunning || len(st.Allocs) != 1 || st.Allocs[0].Device != device || st.Allocs[0].ID != first.Labels["tether.alloc"] {
		t.Fatalf("status %+v", st)
	}
	r = run(t, env, "tether", "device", "list")
	if !strings.Contains(r.stdout, device) || !strings.Contains(r.stdout, "online") || !strings.Contains(r.stdout, "1/1 running") {
		t.Errorf("device list does not show the device online with its allocation")
	}

	// Kill the container behind edged's back: edged restarts it.
	if out, err := exec.Command("podman", "kill", first.ID).CombinedOutput(); err != nil {
		t.Fatalf("podman kill: %v\n%s", err, out)
	}
	eventually(t, 60*time.Second, "edged to restart the killed container", func() bool {
		cs := runningContainers(t, device)
		return len(cs) == 1 && cs[0].ID != first.ID
	})
	eventually(t, 30*time.Second, "the status to show the restart", func() bool {
		r := run(t, env, "tether", "job", "status", job, "-o", "json")
		var st protocol.JobStatus
		return json.Unmarshal([]byte(r.stdout), &st) == nil && st.State == protocol.JobRunning
	})

	// An invalid document fails with every error and changes nothing.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte(strings.Replace(doc, "driver: podman", "driver: dokcer", 1)+"    bogus: 1\n"), 0o644)
	r = run(t, env, "tether", "job", "run", bad)
	if r.code != 1 || !strings.Contains(r.stderr, `groups[0].tasks[0].driver: unknown driver "dokcer", want podman or exec`) || !strings.Contains(r.stderr, "groups[0].bogus: unknown field") {
		t.Fatalf("invalid job: exit %d, stderr %q", r.code, r.stderr)
	}
	if cs := runningContainers(t, device); len(cs) != 1 {
		t.Fatalf("the invalid job changed the running containers: %+v", cs)
	}
	r = run(t, env, "tether", "job", "status", job, "-o", "json")
	if json.Unmarshal([]byte(r.stdout), &st) != nil || st.Version != 1 || len(st.Errors) != 0 {
		t.Fatalf("the invalid job reached the planner: %+v", st)
	}

	r = run(t, env, "tether", "job", "stop", job)
	if r.code != 0 || !strings.Contains(r.stdout, "Job stopped") {
		t.Fatalf("job stop: exit %d", r.code)
	}
	if cs := containers(t, device); len(cs) != 0 {
		t.Fatalf("containers left after job stop: %+v", cs)
	}
	r = run(t, env, "tether", "job", "status", job, "-o", "json")
	if json.Unmarshal([]byte(r.stdout), &st) != nil || st.State != protocol.JobStopped {
		t.Fatalf("status after stop: %+v", st)
	}
}

func podmanTest(t *testing.T) (string, string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test")
	}
	return podmantest.Setup(t)
}
