package sim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/server"
	"github.com/tether-edge/tether/sim"
)

// startServer runs a real tether server (planner and embedded broker) on
// loopback, open to anonymous clients as the benchmarks run it.
func startServer(t *testing.T) *server.Server {
	t.Helper()
	topics, _ := protocol.NewTopics(protocol.DefaultRoot)
	srv, err := server.Start(context.Background(), server.Config{
		DataDir: t.TempDir(), MQTTAddr: "127.0.0.1:0", InsecureAllowAnonymous: true,
		Topics: topics, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// submit publishes a job document as `tether job run` does.
func submit(t *testing.T, url string, job protocol.Job) {
	t.Helper()
	job.Normalize()
	payload, err := protocol.Encode(job)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := bus.Dial(ctx, bus.Config{Brokers: []string{url}, CleanSession: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topics, _ := protocol.NewTopics(protocol.DefaultRoot)
	if err := c.Publish(ctx, topics.Job(job.ID), payload, true, 1); err != nil {
		t.Fatal(err)
	}
}

func systemJob(id string) protocol.Job {
	return protocol.Job{ID: id, Type: protocol.JobSystem, Groups: []protocol.Group{{
		Name: "agent",
		Tasks: []protocol.Task{{Name: "run", Driver: protocol.DriverPodman,
			Config:    protocol.TaskConfig{Image: "localhost/busybox:latest", Command: []string{"sleep", "infinity"}},
			Resources: protocol.Resources{CPU: 10, Memory: 8}}},
	}}}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// poll calls cond every 100ms until it holds or the deadline passes.
func poll(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type simRun struct {
	base   string // base URL of the status endpoint
	cancel context.CancelFunc
	done   chan struct{}
	sum    sim.Summary
	err    error
}

func startSim(t *testing.T, cfg sim.Config) *simRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &simRun{cancel: cancel, done: make(chan struct{})}
	addr := make(chan string, 1)
	cfg.StatusAddr = "127.0.0.1:0"
	cfg.OnListen = func(a string) { addr <- a }
	cfg.DataDir = t.TempDir()
	cfg.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	go func() {
		defer close(r.done)
		r.sum, r.err = sim.Run(ctx, cfg)
	}()
	select {
	case a := <-addr:
		r.base = "http://" + a
	case <-r.done:
		t.Fatalf("sim.Run: %v", r.err)
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *simRun) stop(t *testing.T) sim.Summary {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("sim.Run did not return within 30s of its context ending")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.sum
}

func (r *simRun) status(t *testing.T) sim.Status {
	var s sim.Status
	getJSON(t, r.base+"/status", &s)
	return s
}

func TestFleetRunsASystemJob(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a server and 20 simulated devices")
	}
	t.Parallel()
	const n = 20
	srv := startServer(t)
	url := srv.Endpoints().MQTTURL()
	ref := time.Now()
	r := startSim(t, sim.Config{
		Devices: n, Prefix: "t-", First: 100, Brokers: []string{url}, PlannerKeys: srv.PlannerKeys(),
		Ramp: 200, StartLatency: 50 * time.Millisecond, Reference: ref,
	})

	// The connect storm: every device connects and has its (empty) first
	// report confirmed by the broker's echo.
	poll(t, "every device connected and reported", 30*time.Second, func() bool {
		s := r.status(t)
		return s.Connected == n && s.Reported == n
	})
	// The planner may have sent each an empty desired document by now.
	if s := r.status(t); s.Running != 0 || s.WorkloadStarts != 0 || len(s.Jobs) != 0 {
		t.Fatalf("before any job: %+v, want nothing running or started", s)
	}

	submitted := time.Now()
	submit(t, url, systemJob("sys"))
	poll(t, "every device runs the system job", 60*time.Second, func() bool {
		s := r.status(t)
		return s.Running == n && s.Jobs["sys"].RunningByVersion[1] == n
	})

	var devs []sim.DeviceStatus
	getJSON(t, r.base+"/devices?job=sys", &devs)
	if len(devs) != n {
		t.Fatalf("/devices lists %d devices, want %d", len(devs), n)
	}
	if devs[0].ID != "t-00100" || devs[n-1].ID != fmt.Sprintf("t-%05d", 100+n-1) {
		t.Errorf("ids %s..%s, want t-00100..t-%05d", devs[0].ID, devs[n-1].ID, 100+n-1)
	}
	for _, d := range devs {
		if d.Version != 1 || d.DesiredAt < submitted.UnixNano() || d.RunningAt < d.DesiredAt+int64(50*time.Millisecond) {
			t.Errorf("%s: version %d desired at %d running at %d, want version 1, desired after the submission (%d), running at least the start latency later",
				d.ID, d.Version, d.DesiredAt, d.RunningAt, submitted.UnixNano())
		}
		if !d.Connected || d.Connects != 1 || d.Starts != 1 || !d.Running {
			t.Errorf("%s: %+v, want connected once, one workload start, running", d.ID, d)
		}
	}

	sum := r.stop(t)
	if sum.Devices != n || sum.Started != n || sum.Failed != 0 || sum.Connected != n || sum.Connects != n ||
		sum.DesiredReceived != n || sum.Running != n || sum.WorkloadStarts != n {
		t.Errorf("summary counts %+v, want %d of each and no failures", sum.Status, n)
	}
	if c := sum.DesiredToRunning; c.Count != n || c.P50 < 0.05 || c.P50 > c.P95 || c.P95 > c.P99 || c.P99 > c.Max {
		t.Errorf("desired→running %+v, want %d samples, ordered, p50 at least the 50ms start latency", c, n)
	}
	since := submitted.Sub(ref).Seconds()
	if c := sum.ReferenceToRunning; c.Count != n || c.P50 < since || c.Max < c.P99 {
		t.Errorf("reference→running %+v, want %d samples after the submission (%.2fs after the reference)", c, n, since)
	}
	if c := sum.FirstConnect; c.Count != n || c.Max <= 0 {
		t.Errorf("first connect %+v, want %d samples", c, n)
	}
	tr := sum.Traffic
	// Each device sent at least birth, facts, the empty report, a started
	// event and the running report, and received at least its desired
	// document and the echoes.
	if tr.MsgsSent < 5*n || tr.MsgsReceived < 4*n || tr.BytesSent <= 0 || tr.WireBytesSent <= tr.BytesSent || tr.WireBytesReceived <= tr.BytesReceived {
		t.Errorf("traffic %+v, want at least 5 messages sent and 4 received per device, wire bytes above payload bytes", tr)
	}
}

func TestCrashesRestartWorkloads(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a server and simulated devices")
	}
	t.Parallel()
	const n = 4
	srv := startServer(t)
	url := srv.Endpoints().MQTTURL()
	r := startSim(t, sim.Config{
		Devices: n, Brokers: []string{url}, PlannerKeys: srv.PlannerKeys(),
		CrashRate: 1, CrashWithin: 100 * time.Millisecond, ExitCodes: []int{7},
	})
	poll(t, "every device connected", 30*time.Second, func() bool { return r.status(t).Reported == n })
	job := systemJob("crashy")
	job.Groups[0].Tasks[0].Restart = &protocol.RestartPolicy{Attempts: 1, Delay: protocol.Duration(100 * time.Millisecond), Interval: protocol.Duration(time.Hour), Mode: protocol.RestartFail}
	submit(t, url, job)
	// Started, crashed, restarted once, crashed again: failed.
	poll(t, "every workload started twice", 30*time.Second, func() bool { return r.status(t).WorkloadStarts == 2*n })
	time.Sleep(500 * time.Millisecond)
	if s := r.status(t); s.WorkloadStarts != 2*n || s.Running != 0 {
		t.Errorf("%+v, want %d starts (one restart each) and nothing running", s, 2*n)
	}
}

func TestRefusesMoreDevicesThanFiles(t *testing.T) {
	t.Parallel()
	_, err := sim.Run(context.Background(), sim.Config{Devices: 1_000_000, Brokers: []string{"mqtt://127.0.0.1:1"}, PlannerKeys: nil})
	if err == nil {
		t.Fatal("Run accepted a million devices and no planner key")
	}
	for _, want := range []string{"open files", "planner keys"} {
		if !contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
