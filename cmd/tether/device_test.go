package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/planner"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// listBroker is a real embedded broker that lets loopback clients in
// without credentials, as `tether dev` does, with an inline client to
// publish through.
type listBroker struct {
	t      *testing.T
	url    string
	broker *broker.Broker
	pub    *bus.Inline
	topics protocol.Topics
}

func newListBroker(t *testing.T) *listBroker {
	t.Helper()
	b, err := broker.New(broker.Config{MQTTAddr: "127.0.0.1:0", AllowAnonymousLoopback: true, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	pub := bus.NewInline(b)
	t.Cleanup(pub.Close)
	return &listBroker{t: t, url: "mqtt://" + b.MQTTAddr(), broker: b, pub: pub}
}

func (lb *listBroker) publish(topic string, v any) {
	lb.t.Helper()
	raw, err := protocol.Encode(v)
	if err != nil {
		lb.t.Fatal(err)
	}
	if err := lb.pub.Publish(context.Background(), topic, raw, true, 1); err != nil {
		lb.t.Fatal(err)
	}
}

// list runs `tether device list` against the broker, in process.
func (lb *listBroker) list(args ...string) (stdout, stderr string, err error) {
	lb.t.Helper()
	return lb.run(append([]string{"device", "list"}, args...)...)
}

// run runs a tether command against the broker, in process.
func (lb *listBroker) run(args ...string) (stdout, stderr string, err error) {
	lb.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := newRoot()
	root.SetArgs(append([]string{"--broker", lb.url}, args...))
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func (lb *listBroker) listJSON() ([]protocol.DeviceBrief, string) {
	lb.t.Helper()
	out, stderr, err := lb.list("-o", "json")
	if err != nil {
		lb.t.Fatalf("device list -o json: %v\n%s", err, stderr)
	}
	var devs []protocol.DeviceBrief
	if err := json.Unmarshal([]byte(out), &devs); err != nil {
		lb.t.Fatalf("device list -o json: %v\n%s", err, out)
	}
	return devs, stderr
}

func briefIDs(devs []protocol.DeviceBrief) []string {
	var ids []string
	for _, d := range devs {
		ids = append(ids, d.ID)
	}
	return ids
}

// The list comes from the index when there is one: devices that are only
// in the index are listed, devices that only have topics of their own are
// not, and pages past the index's end are left-overs, not devices.
func TestDeviceListReadsTheIndex(t *testing.T) {
	t.Parallel()
	lb := newListBroker(t)
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	no := false
	lb.publish(lb.topics.DeviceIndex(0), protocol.DeviceIndexPage{Page: 0, Pages: 2, UpdatedAt: at, Devices: []protocol.DeviceBrief{
		{ID: "x1", Presence: &protocol.PresenceBrief{Status: protocol.Online, Since: &at},
			Facts:            &protocol.FactsBrief{Arch: "arm64", OS: "linux", CPUMHz: 6000, MemoryMB: 3900, Drivers: []string{"exec", "podman"}, Labels: map[string]string{"site": "berlin", "role": "gw"}},
			AllocationsTotal: 3, AllocationsRunning: 2, ReportedAt: &at},
		{ID: "x2", Scheduling: &protocol.SchedulingBrief{Eligible: &no}}}})
	lb.publish(lb.topics.DeviceIndex(1), protocol.DeviceIndexPage{Page: 1, Pages: 2, UpdatedAt: at, Devices: []protocol.DeviceBrief{
		{ID: "x3", Presence: &protocol.PresenceBrief{Status: protocol.Offline}, Scheduling: &protocol.SchedulingBrief{Eligible: &no, Drain: true}}}})
	lb.publish(lb.topics.DeviceIndex(2), protocol.DeviceIndexPage{Page: 2, Pages: 3, UpdatedAt: at, Devices: []protocol.DeviceBrief{{ID: "zz-left-over"}}})
	lb.publish(lb.topics.Presence("only-own-topics"), protocol.Presence{Device: "only-own-topics", Status: protocol.Online})

	out, stderr, err := lb.list()
	if err != nil {
		t.Fatalf("device list: %v\n%s", err, stderr)
	}
	want := `DEVICE  STATUS              ARCH   CPU(MHz)  MEMORY(MB)  DRIVERS      ALLOCS       LABELS
x1      online              arm64  6000      3900        exec,podman  2/3 running  role=gw,site=berlin
x2      unknown,ineligible  -      -         -           -            0/0 running  -
x3      offline,draining    -      -         -           -            0/0 running  -
`
	if out != want {
		t.Errorf("table:\n%s\nwant:\n%s", out, want)
	}
	if stderr != "" {
		t.Errorf("stderr %q, want nothing: the index is there", stderr)
	}
	devs, _ := lb.listJSON()
	if ids := briefIDs(devs); !slices.Equal(ids, []string{"x1", "x2", "x3"}) {
		t.Errorf("json lists %v", ids)
	}
	if d := devs[0]; d.Presence == nil || d.Presence.Status != protocol.Online || d.AllocationsRunning != 2 || d.ReportedAt == nil || !d.ReportedAt.Equal(at) {
		t.Errorf("json x1: %+v", d)
	}
}

// Without an index (an older server), the list is read from every device's
// own topics, as before, with a warning that it may be incomplete.
func TestDeviceListFallsBackToDeviceTopics(t *testing.T) {
	t.Parallel()
	lb := newListBroker(t)
	now := time.Now()
	lb.publish(lb.topics.Facts("d1"), protocol.Facts{Device: "d1", Arch: "amd64", OS: "linux", CPUCores: 2, CPUMHz: 4000, MemoryMB: 2048, Drivers: []string{"exec"}, Labels: map[string]string{"site": "paris"}})
	lb.publish(lb.topics.Presence("d1"), protocol.Presence{Device: "d1", Status: protocol.Online, Since: &now})
	lb.publish(lb.topics.Reported("d1"), protocol.Reported{Device: "d1", Time: now, Allocations: []protocol.AllocStatus{
		{ID: "a.g.0", State: protocol.AllocRunning}, {ID: "b.g.0", State: protocol.AllocFailed}}})
	lb.publish(lb.topics.Scheduling("d2"), protocol.Scheduling{Device: "d2", Drain: true})

	out, stderr, err := lb.list()
	if err != nil {
		t.Fatalf("device list: %v\n%s", err, stderr)
	}
	want := `DEVICE  STATUS            ARCH   CPU(MHz)  MEMORY(MB)  DRIVERS  ALLOCS       LABELS
d1      online            amd64  4000      2048        exec     1/2 running  site=paris
d2      unknown,draining  -      -         -           -        0/0 running  -
`
	if out != want {
		t.Errorf("table:\n%s\nwant:\n%s", out, want)
	}
	if !strings.Contains(stderr, "warning: no device index") || !strings.Contains(stderr, "8,192") {
		t.Errorf("stderr %q, want a warning that the list may be incomplete beyond 8,192 devices", stderr)
	}
}

// An index whose pages disagree is read again; one that stays so is an
// error that says what is wrong, never a silently short list.
func TestDeviceListIndexNotWhole(t *testing.T) {
	t.Parallel()
	lb := newListBroker(t)
	page := func(n, pages int, ids ...string) protocol.DeviceIndexPage {
		pg := protocol.DeviceIndexPage{Page: n, Pages: pages, Devices: []protocol.DeviceBrief{}}
		for _, id := range ids {
			pg.Devices = append(pg.Devices, protocol.DeviceBrief{ID: id})
		}
		return pg
	}
	lb.publish(lb.topics.DeviceIndex(0), page(0, 2, "a", "b"))
	_, _, err := lb.list()
	if err == nil || !strings.Contains(err.Error(), "device index page 1 of 2 is missing") || !strings.Contains(err.Error(), "after 3 reads") {
		t.Errorf("page 1 missing: %v", err)
	}
	lb.publish(lb.topics.DeviceIndex(1), page(1, 3, "c"))
	if _, _, err := lb.list(); err == nil || !strings.Contains(err.Error(), "device index page 1 says there are 3 pages, page 0 says 2") {
		t.Errorf("pages disagree: %v", err)
	}
	lb.publish(lb.topics.DeviceIndex(1), page(1, 2, "b", "c"))
	if _, _, err := lb.list(); err == nil || !strings.Contains(err.Error(), "device index page 1 starts with b, which does not sort after b at the end of page 0") {
		t.Errorf("a device on two pages: %v", err)
	}

	// The planner publishing the rest of the index while it is read: the
	// first read finds page 1 old, the next one has it new.
	lb.publish(lb.topics.DeviceIndex(1), page(1, 3, "c"))
	synced := make(chan struct{}, 16)
	if err := lb.pub.Subscribe(context.Background(), lb.topics.Base()+"/sync/#", 1, func(bus.Message) {
		select {
		case synced <- struct{}{}:
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		<-synced // the command's first read
		lb.publish(lb.topics.DeviceIndex(1), page(1, 2, "c"))
	}()
	devs, _ := lb.listJSON()
	if ids := briefIDs(devs); !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Errorf("after the index was republished during the read: %v", ids)
	}
}

// With a planner publishing the index, pages of two devices each, the list
// shows every device, and the table is the one the devices' own topics
// give.
func TestDeviceListFromThePlannersIndex(t *testing.T) {
	t.Parallel()
	lb := newListBroker(t)
	st, err := store.Open(filepath.Join(t.TempDir(), "planner.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pbus := bus.NewInline(lb.broker)
	t.Cleanup(pbus.Close)
	p := planner.New(planner.Config{Bus: pbus, Store: st, Topics: lb.topics, Log: zerolog.New(zerolog.NewTestWriter(t)), IndexPageSize: 2})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	now := time.Now()
	ids := []string{"e1", "e2", "e3", "e4", "e5"}
	for i, id := range ids {
		lb.publish(lb.topics.Facts(id), protocol.Facts{Device: id, Arch: "arm64", OS: "linux", CPUCores: 4, CPUMHz: 1000 * (i + 1), MemoryMB: 512, Drivers: []string{"exec"}, Labels: map[string]string{"n": id}})
		lb.publish(lb.topics.Presence(id), protocol.Presence{Device: id, Status: protocol.Online, Since: &now})
	}
	lb.publish(lb.topics.Reported("e2"), protocol.Reported{Device: "e2", Epoch: "x", Seq: 1, Time: now, Allocations: []protocol.AllocStatus{{ID: "a.g.0", State: protocol.AllocRunning}}})
	lb.publish(lb.topics.Scheduling("e4"), protocol.Scheduling{Device: "e4", Drain: true})

	deadline := time.Now().Add(20 * time.Second)
	for {
		devs, stderr := lb.listJSON()
		if stderr == "" && slices.Equal(briefIDs(devs), ids) && devs[1].AllocationsTotal == 1 && devs[3].Scheduling != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the index never listed %v with e2's report and e4's drain: %v (stderr %q)", ids, briefIDs(devs), stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fromIndex, _, err := lb.list()
	if err != nil {
		t.Fatal(err)
	}

	// The same devices read the old way, from their own topics.
	c, err := bus.Dial(context.Background(), bus.Config{Brokers: []string{lb.url}, ClientID: bus.RandomID("test-"), CleanSession: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	devs, err := readDeviceTopics(context.Background(), c, lb.topics)
	if err != nil {
		t.Fatal(err)
	}
	var fromTopics bytes.Buffer
	if err := printDevices(&fromTopics, "table", devs); err != nil {
		t.Fatal(err)
	}
	if fromIndex != fromTopics.String() {
		t.Errorf("from the index:\n%s\nfrom the devices' topics:\n%s", fromIndex, fromTopics.String())
	}
	if !strings.Contains(fromIndex, "e4      online,draining") || !strings.Contains(fromIndex, "1/1 running") {
		t.Errorf("table:\n%s", fromIndex)
	}
}
