package edged

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/fake"
	"github.com/tether-edge/tether/protocol"
)

// Test planner keys, from fixed seeds so failures are reproducible.
var (
	testPlannerKey = newTestKey(1) // what every test edged trusts by default
	otherKey       = newTestKey(2)
)

func newTestKey(seed byte) ed25519.PrivateKey {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	return ed25519.NewKeyFromSeed(s)
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

// testPlannerKeys is Config.PlannerKeys for tests: testPlannerKey.
func testPlannerKeys() []ed25519.PublicKey { return []ed25519.PublicKey{pub(testPlannerKey)} }

// sign signs d with key and the endorsement chain, as the planner does.
func sign(t *testing.T, d protocol.Desired, key ed25519.PrivateKey, chain ...protocol.Endorsement) protocol.Desired {
	t.Helper()
	s, err := protocol.SignDesired(d, key, chain)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fleetAuth is the broker's access policy in the fleet tests: anonymous
// loopback clients are the planner; "token/<id>" are enrollment tokens;
// any other username is a device, admitted with the secret it enrolled
// with. Topic access follows protocol.Topics.Allowed, so edged is held to
// the rules the real server enforces.
type fleetAuth struct {
	topics protocol.Topics

	mu      sync.Mutex
	tokens  map[string]string // token id → secret
	devices map[string]string // device id → secret
	logins  map[string]int    // by username, "" for the planner
}

func (f *fleetAuth) principal(username string) protocol.Principal {
	switch {
	case username == "":
		return protocol.Principal{Role: protocol.RolePlanner}
	case strings.HasPrefix(username, protocol.TokenUserPrefix):
		return protocol.Principal{Role: protocol.RoleEnroll, Name: strings.TrimPrefix(username, protocol.TokenUserPrefix)}
	}
	return protocol.Principal{Role: protocol.RoleDevice, Name: username}
}

func (f *fleetAuth) Authenticate(p broker.Peer, password []byte) error {
	pr := f.principal(p.Username)
	if err := protocol.CheckClientID(pr, p.ClientID); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var want string
	var ok bool
	switch pr.Role {
	case protocol.RolePlanner:
		ok, want = true, ""
	case protocol.RoleEnroll:
		want, ok = f.tokens[pr.Name]
	case protocol.RoleDevice:
		want, ok = f.devices[pr.Name]
	}
	if !ok || string(password) != want {
		return errBadLogin
	}
	f.logins[p.Username]++
	return nil
}

var errBadLogin = errors.New("unknown user or wrong password")

func (f *fleetAuth) Authorize(p broker.Peer, topic string, write bool) bool {
	return f.topics.Allowed(f.principal(p.Username), p.ClientID, topic, write)
}

func (f *fleetAuth) loginsOf(user string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.logins[user]
}

// fleetRig is a real broker with fleetAuth and a client that plays the
// planner: it answers enrollment requests (with answer), publishes desired
// documents and records what devices publish.
type fleetRig struct {
	t      *testing.T
	log    zerolog.Logger
	topics protocol.Topics
	addr   string
	auth   *fleetAuth
	pl     *bus.Client

	mu       sync.Mutex
	answer   func(token string, req protocol.EnrollRequest) (protocol.EnrollResult, bool) // false: do not answer
	requests []protocol.EnrollRequest
	reports  map[string]protocol.Reported
	facts    map[string]protocol.Facts
	events   map[string][]protocol.Event
}

func newFleetRig(t *testing.T) *fleetRig {
	t.Helper()
	log := zerolog.New(zerolog.NewTestWriter(t))
	r := &fleetRig{
		t: t, log: log,
		auth:    &fleetAuth{tokens: map[string]string{}, devices: map[string]string{}, logins: map[string]int{}},
		reports: map[string]protocol.Reported{}, facts: map[string]protocol.Facts{}, events: map[string][]protocol.Event{},
	}
	b, err := broker.New(broker.Config{MQTTAddr: "127.0.0.1:0", Authenticator: r.auth, Log: log.Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	r.addr = "mqtt://" + b.MQTTAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pl, err := bus.Dial(ctx, bus.Config{Brokers: []string{r.addr}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pl.Close)
	r.pl = pl
	subs := map[string]bus.Handler{
		r.topics.EnrollFilter():                       r.onEnroll,
		r.topics.DevicesFilter(protocol.KindReported): r.onReport,
		r.topics.DevicesFilter(protocol.KindFacts):    r.onFacts,
		r.topics.DevicesFilter(protocol.KindEvents):   r.onEvent,
	}
	for filter, h := range subs {
		if err := pl.Subscribe(ctx, filter, 1, h); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// addToken creates an enrollment token the broker admits.
func (r *fleetRig) addToken(id string) protocol.Token {
	raw := sha256.Sum256([]byte(id))
	tok := protocol.Token{ID: id, Secret: base64.RawURLEncoding.EncodeToString(raw[:])}
	r.auth.mu.Lock()
	r.auth.tokens[id] = tok.Secret
	r.auth.mu.Unlock()
	return tok
}

// addDevice lets device in with password, as if it had been added by an
// operator.
func (r *fleetRig) addDevice(device, password string) {
	r.auth.mu.Lock()
	r.auth.devices[device] = password
	r.auth.mu.Unlock()
}

// onEnroll plays the planner's side of enrollment: on an accepting answer
// the device's secret becomes its password at the broker.
func (r *fleetRig) onEnroll(m bus.Message) {
	token, device, err := r.topics.ParseEnroll(m.Topic)
	if err != nil {
		return // an answer on .../result
	}
	req, err := protocol.DecodeEnrollRequest(m.Payload)
	if err != nil {
		r.t.Errorf("enrollment request: %v", err)
		return
	}
	if req.Device != device {
		r.t.Errorf("enrollment request for %q on the topic of %q", req.Device, device)
	}
	r.mu.Lock()
	r.requests = append(r.requests, req)
	answer := r.answer
	r.mu.Unlock()
	if answer == nil {
		return
	}
	res, ok := answer(token, req)
	if !ok {
		return
	}
	if res.OK {
		r.auth.mu.Lock()
		r.auth.devices[device] = req.Secret
		r.auth.mu.Unlock()
	}
	raw, err := protocol.Encode(res)
	if err != nil {
		r.t.Error(err)
		return
	}
	// Not on the dispatch goroutine: it must not wait on the network.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.pl.Publish(ctx, r.topics.EnrollResult(token, device), raw, false, 1); err != nil {
			r.t.Errorf("answer enrollment: %v", err)
		}
	}()
}

func (r *fleetRig) onReport(m bus.Message) {
	rep, err := protocol.DecodeReported(m.Payload)
	if err != nil {
		r.t.Errorf("bad report: %v", err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.reports[rep.Device]; !ok || old.Epoch != rep.Epoch || rep.Seq > old.Seq {
		r.reports[rep.Device] = rep
	}
}

func (r *fleetRig) onFacts(m bus.Message) {
	f, err := protocol.DecodeFacts(m.Payload)
	if err != nil {
		r.t.Errorf("bad facts: %v", err)
		return
	}
	r.mu.Lock()
	r.facts[f.Device] = f
	r.mu.Unlock()
}

func (r *fleetRig) onEvent(m bus.Message) {
	e, err := protocol.DecodeEvent(m.Payload)
	if err != nil {
		r.t.Errorf("bad event: %v", err)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, old := range r.events[e.Device] {
		if old.Epoch == e.Epoch && old.Seq == e.Seq {
			return // a re-sent duplicate
		}
	}
	r.events[e.Device] = append(r.events[e.Device], e)
}

// publish sends a desired document to device's topic as the planner does:
// retained, QoS 1.
func (r *fleetRig) publish(device string, d protocol.Desired) {
	r.t.Helper()
	raw, err := protocol.Encode(d)
	if err != nil {
		r.t.Fatal(err)
	}
	r.publishRaw(device, raw)
}

func (r *fleetRig) publishRaw(device string, raw []byte) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.pl.Publish(ctx, r.topics.Desired(device), raw, true, 1); err != nil {
		r.t.Fatal(err)
	}
}

func (r *fleetRig) report(device string) (protocol.Reported, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep, ok := r.reports[device]
	return rep, ok
}

// refusals returns the desired_refused events device sent so far.
func (r *fleetRig) refusals(device string) []protocol.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []protocol.Event
	for _, e := range r.events[device] {
		if e.Type == protocol.EventDesiredRefused {
			out = append(out, e)
		}
	}
	return out
}

func (r *fleetRig) enrollRequests() []protocol.EnrollRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]protocol.EnrollRequest(nil), r.requests...)
}

// waitApplied waits until device reports generation gen with every
// allocation running.
func (r *fleetRig) waitApplied(device string, gen uint64) protocol.Reported {
	r.t.Helper()
	var rep protocol.Reported
	eventually(r.t, "generation "+strconv.FormatUint(gen, 10)+" to run on "+device, func() bool {
		var ok bool
		rep, ok = r.report(device)
		if !ok || rep.ObservedGeneration != gen || len(rep.Allocations) == 0 {
			return false
		}
		for _, a := range rep.Allocations {
			if a.State != protocol.AllocRunning {
				return false
			}
		}
		return true
	})
	return rep
}

// deviceConfig is an edged of device over a new fake runtime, connected
// to the rig's broker, trusting no planner key yet.
func (r *fleetRig) deviceConfig(device, dir string) (Config, *fake.Driver) {
	rt := fake.New(fake.Options{Log: r.log})
	return Config{DeviceID: device, Brokers: []string{r.addr}, DataDir: dir, Drivers: []driver.Driver{rt}, Resync: 100 * time.Millisecond, Log: r.log}, rt
}

// oneAlloc is a desired document with one long-running allocation.
func oneAlloc(device string, gen uint64, job string) protocol.Desired {
	return protocol.Desired{Device: device, Generation: gen, IssuedAt: time.Now().UTC(), Allocations: []protocol.Allocation{{
		ID: job + ".g.0-abcdef", Job: job, JobVersion: 1, Group: "g", Type: protocol.JobService, Tasks: []protocol.Task{forever("app")},
	}}}
}
