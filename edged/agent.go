package edged

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/protocol"
)

// Config of an edged instance.
type Config struct {
	DeviceID string
	// Brokers are tried in order (failover).
	Brokers  []string
	Username string
	Password string
	// TLS, for mqtts:// and wss:// brokers: the CA to check them against
	// and, to authenticate with a certificate, the device's own.
	TLS *tls.Config
	// DataDir holds edged.db and driver state.
	DataDir string
	Labels  map[string]string
	Drivers []driver.Driver
	Topics  protocol.Topics
	Version string
	// Resync is how often the worker looks at the drivers without being
	// woken; default 10s.
	Resync time.Duration
	// StopTimeout is the grace period before a stopped task is killed;
	// default 10s.
	StopTimeout time.Duration
	// KeepAlive is the MQTT keepalive: a dead link (even a half-open one)
	// is noticed within about 1.5 times it. Default 30s.
	KeepAlive time.Duration
	// ClockOffset is added to every timestamp edged publishes (tests of a
	// device whose clock is off; edged's own timers are unaffected).
	ClockOffset time.Duration
	// CPUMHz and MemoryMB, when set, replace what the system reports (for
	// simulators and for reserving capacity for the host).
	CPUMHz   int
	MemoryMB int
	// Arch and CPUCores, when set, replace what the system reports
	// (simulators).
	Arch     string
	CPUCores int
	// PlannerKeys are the planner's public keys, always trusted: a desired
	// document must be signed by one of them, or by a key that one of them
	// endorsed (protocol.VerifyDesired). Keys learned from endorsements and
	// from enrollment are kept in edged.db and trusted too; when
	// PlannerKeys is set, enrollment's keys are not taken.
	PlannerKeys []ed25519.PublicKey
	// AcceptUnsigned (insecure) accepts desired documents without a
	// signature. A signed one must still verify, unless no planner key is
	// known at all.
	AcceptUnsigned bool
	// EnrollToken is a fleet enrollment token as handed out,
	// "<id>.<secret>". edged uses it once, when edged.db holds no
	// credentials and Username is empty, to obtain its own credentials,
	// labels and the planner's keys (see enroll.go).
	EnrollToken string
	// Observe, when set, is told what the agent does (see Observation):
	// simulators and load tools measure with it. It runs on the agent's
	// goroutines (the worker, the publisher, the MQTT dispatch goroutine),
	// possibly at once, so it must be safe for concurrent use, return
	// quickly and never block. Unset, it costs nothing.
	Observe func(Observation)
	Log     zerolog.Logger
}

// Agent is a running edged.
type Agent struct {
	cfg     Config
	log     zerolog.Logger
	state   *localState
	drivers map[string]driver.Driver
	kick    chan struct{}

	mu      sync.Mutex
	inbox   [][]byte // desired payloads not yet processed
	client  *bus.Client
	slots   slots
	outKick chan struct{}
	lastRep []byte // last report content (without time and seq) queued
	epoch   string // of the local database's report and event stream

	// connEpoch changes with every connect and connection loss: an outbox
	// entry sent on an earlier connection and not yet echoed is sent again.
	connEpoch atomic.Uint64
	// offlineSince is when edged last lost (or, at start, had not yet got)
	// its broker connection, in Unix nanoseconds; 0 while connected.
	offlineSince atomic.Int64

	// linkNoted is when the worker last stored that the link was up.
	linkNoted time.Time

	// refusal explains the last desired document refused; it is reported
	// until a newer one is applied. refusedDigest is that document's
	// SHA-256, so that the retained copy delivered again on every
	// reconnect is not announced again; notices are events (refusals)
	// for the next pass to send. Worker only.
	refusal       string
	refusedDigest [sha256.Size]byte
	notices       []pendingEvent

	// trusted are the planner keys desired documents are verified with:
	// the configured ones and those stored in edged.db. Set before the
	// worker starts; worker only afterwards.
	trusted []ed25519.PublicKey
	// token is the parsed EnrollToken (nil without one); username,
	// password and labels are what edged connects and reports with, once
	// enrollment (if any) is done. Set in Run before anything connects.
	token    *protocol.Token
	username string
	password string
	labels   map[string]string
	// enrollWait is how long edged first waits for an answer to its
	// enrollment request before asking again (doubling up to
	// maxEnrollWait); tests shorten it.
	enrollWait time.Duration

	// health holds the health judgements by allocation id, loaded at start
	// and stored with the task records after every pass; since holds when
	// each running instance started, on the monotonic clock, by
	// incarnation. Worker only.
	health map[string]healthRecord
	since  map[string]time.Time

	// afterPass, if set, runs on the worker after every pass (tests).
	afterPass func()
}

// slots hold presence and facts: retained, idempotent, and rebuilt at every
// start, so they need no durable outbox. Reports and events go through the
// outbox in edged.db.
type slots struct {
	facts    []byte
	presence []byte
}

// maxQueuedEvents bounds the durable outbox; beyond it the oldest events are
// dropped (and an events_dropped event says so). Reports are never dropped.
const maxQueuedEvents = 10000

// New opens edged's local state; Run starts it.
func New(cfg Config) (*Agent, error) {
	if err := protocol.ValidateID(cfg.DeviceID); err != nil {
		return nil, fmt.Errorf("device id: %w", err)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("data dir: required")
	}
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("brokers: at least one broker URL is required")
	}
	for _, b := range cfg.Brokers {
		if _, err := bus.NormalizeURL(b); err != nil {
			return nil, err
		}
	}
	if cfg.Resync == 0 {
		cfg.Resync = 10 * time.Second
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.KeepAlive < time.Second {
		return nil, fmt.Errorf("keepalive: %s is too short, want at least 1s", cfg.KeepAlive)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	var token *protocol.Token
	if cfg.EnrollToken != "" {
		tok, err := protocol.ParseToken(cfg.EnrollToken)
		if err != nil {
			return nil, fmt.Errorf("enroll token: %w", err)
		}
		token = &tok
	}
	st, err := openState(filepath.Join(cfg.DataDir, "edged.db"))
	if err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:        cfg,
		log:        cfg.Log.With().Str("device", cfg.DeviceID).Logger(),
		state:      st,
		drivers:    map[string]driver.Driver{},
		kick:       make(chan struct{}, 1),
		outKick:    make(chan struct{}, 1),
		token:      token,
		enrollWait: 10 * time.Second,
	}
	if err := a.checkTrust(); err != nil {
		st.close()
		return nil, err
	}
	a.setDrivers(cfg.Drivers)
	return a, nil
}

// setDrivers sets the drivers; before Run only.
func (a *Agent) setDrivers(ds []driver.Driver) {
	a.drivers = map[string]driver.Driver{}
	for _, d := range ds {
		a.drivers[d.Name()] = d
	}
}

// clock is the device's time as it publishes it.
func (a *Agent) clock() time.Time { return time.Now().Add(a.cfg.ClockOffset).UTC() }

func (a *Agent) wake() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) wakeOut() {
	select {
	case a.outKick <- struct{}{}:
	default:
	}
}

func (a *Agent) driverNames() []string {
	names := make([]string, 0, len(a.drivers))
	for n := range a.drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Run reconciles until ctx ends. It works without a broker: it applies the
// last desired document it stored and keeps restarting tasks while it
// connects in the background. On return it publishes offline presence if it
// can and closes the local state.
func (a *Agent) Run(ctx context.Context) error {
	defer a.state.close()
	a.log.Info().Strs("drivers", a.driverNames()).Strs("brokers", a.cfg.Brokers).Msg("edged starting")
	if a.cfg.AcceptUnsigned {
		a.log.Warn().Msg("INSECURE: accepting unsigned desired documents (--insecure-accept-unsigned): " +
			"whoever can publish to this device's desired topic decides what it runs")
	}
	// Enrollment, if due, comes first: without credentials there is no
	// broker to talk to, and an unenrolled device has nothing stored to run.
	if err := a.setupIdentity(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while enrolling
		}
		return err
	}
	facts := gatherFacts(a.cfg.DeviceID, a.cfg.DataDir, a.labels, a.driverNames())
	if a.cfg.CPUMHz > 0 {
		facts.CPUMHz = a.cfg.CPUMHz
	}
	if a.cfg.MemoryMB > 0 {
		facts.MemoryMB = a.cfg.MemoryMB
	}
	if a.cfg.Arch != "" {
		facts.Arch = a.cfg.Arch
	}
	if a.cfg.CPUCores > 0 {
		facts.CPUCores = a.cfg.CPUCores
	}
	factsRaw, _ := protocol.Encode(facts)
	epoch, err := a.state.epoch()
	if err != nil {
		return err
	}
	a.epoch = epoch
	a.health, err = a.state.health()
	if err != nil {
		// Judgements start again rather than the workloads not at all.
		a.log.Error().Err(err).Msg("read health judgements")
		a.health = map[string]healthRecord{}
	}
	loaded := time.Now()
	for id, h := range a.health {
		// Carry the clock over the restart: edged began applying this
		// version as long ago (by the wall clock) as the record says, or
		// now if the wall clock went back.
		if h.Began = onMonotonic(h.Began, loaded); h.Began.After(loaded) {
			h.Began = loaded
		}
		a.health[id] = h
	}
	a.since = map[string]time.Time{}
	// Offline since the last time a previous run knew it was connected (so
	// stop_after counts across restarts and reboots), else since now.
	since := time.Now()
	if seen := a.state.linkSeen(); !seen.IsZero() && seen.Before(since) {
		since = seen
	}
	a.offlineSince.Store(since.UnixNano())
	a.mu.Lock()
	a.slots.facts = factsRaw
	a.mu.Unlock()

	for _, d := range a.drivers {
		if w, ok := d.(driver.Watcher); ok {
			ch, err := w.Watch(ctx)
			if err != nil {
				a.log.Warn().Err(err).Str("driver", d.Name()).Msg("driver events unavailable; relying on resync")
				continue
			}
			go func() {
				for range ch {
					a.wake()
				}
			}()
		}
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.connect(ctx) }()
	go func() { defer wg.Done(); a.publishLoop(ctx) }()
	a.worker(ctx)
	wg.Wait()

	a.mu.Lock()
	c := a.client
	a.mu.Unlock()
	if c != nil {
		// A clean goodbye: the broker does not send the last will after a
		// DISCONNECT, so say offline ourselves.
		now := a.clock()
		off, _ := protocol.Encode(protocol.Presence{Device: a.cfg.DeviceID, Status: protocol.Offline, Since: &now, Version: a.cfg.Version})
		pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.Publish(pctx, a.cfg.Topics.Presence(a.cfg.DeviceID), off, true, 1)
		cancel()
		c.Close()
	}
	a.log.Info().Msg("edged stopped")
	return nil
}

// connect dials the broker in the background, for as long as it takes.
func (a *Agent) connect(ctx context.Context) {
	t := a.cfg.Topics
	will, _ := protocol.Encode(protocol.Presence{Device: a.cfg.DeviceID, Status: protocol.Offline, Version: a.cfg.Version})
	var client *bus.Client
	cfg := bus.Config{
		TLS:            a.cfg.TLS,
		Brokers:        a.cfg.Brokers,
		ClientID:       a.cfg.DeviceID,
		Username:       a.username,
		Password:       a.password,
		CleanSession:   false,
		Will:           &bus.Will{Topic: t.Presence(a.cfg.DeviceID), Payload: will, Retain: true, QoS: 1},
		Log:            a.log,
		KeepAlive:      a.cfg.KeepAlive,
		ConnectTimeout: min(10*time.Second, a.cfg.KeepAlive),
		// Spread the reconnects of a fleet that lost its server at once.
		ReconnectJitter: 5 * time.Second,
		OnConnectionLost: func(error) {
			a.connEpoch.Add(1)
			now := time.Now()
			a.offlineSince.Store(now.UnixNano())
			_ = a.state.setLinkSeen(now)
			a.observe(Observation{Kind: ObsDisconnected})
			a.wake()
		},
		OnConnect: func() {
			a.log.Info().Msg("connected to broker")
			now := a.clock()
			birth, _ := protocol.Encode(protocol.Presence{Device: a.cfg.DeviceID, Status: protocol.Online, Since: &now, Version: a.cfg.Version})
			a.connEpoch.Add(1)
			a.offlineSince.Store(0)
			_ = a.state.setLinkSeen(time.Now())
			a.mu.Lock()
			a.slots.presence = birth
			// The retained report may be gone or stale on the broker's
			// side; publish the current one again.
			a.lastRep = nil
			a.mu.Unlock()
			a.observe(Observation{Kind: ObsConnected})
			a.wake()
			a.wakeOut()
		},
	}
	backoff := time.Second
	for ctx.Err() == nil {
		c, err := bus.Dial(ctx, cfg)
		if err == nil {
			client = c
			break
		}
		if ctx.Err() != nil {
			return
		}
		a.log.Warn().Err(err).Dur("retry_in", backoff).Msg("connect failed")
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	if client == nil {
		return
	}
	a.mu.Lock()
	a.client = client
	a.mu.Unlock()
	a.wakeOut()
	// Subscribe until the broker accepts; a refused or timed-out subscribe
	// must not leave edged connected but deaf.
	handler := func(m bus.Message) {
		a.observe(Observation{Kind: ObsReceived, Topic: m.Topic, Bytes: len(m.Payload)})
		a.mu.Lock()
		a.inbox = append(a.inbox, m.Payload)
		a.mu.Unlock()
		a.wake()
	}
	subs := []struct {
		filter string
		h      bus.Handler
	}{
		{t.Desired(a.cfg.DeviceID), handler},
		// edged's own reports and events come back to it: the echo is how
		// the outbox knows the broker has them.
		{t.Reported(a.cfg.DeviceID), func(m bus.Message) { a.onEcho(outReport, m) }},
		{t.Events(a.cfg.DeviceID), func(m bus.Message) { a.onEcho(outEvent, m) }},
	}
	for backoff = time.Second; ctx.Err() == nil && len(subs) > 0; backoff = min(2*backoff, 30*time.Second) {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := client.Subscribe(sctx, subs[0].filter, 1, subs[0].h)
		cancel()
		if err == nil {
			subs = subs[1:]
			backoff = time.Second / 2
			continue
		}
		a.log.Warn().Err(err).Str("filter", subs[0].filter).Dur("retry_in", backoff).Msg("subscribe failed")
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
	}
}

// publishLoop sends the outbox whenever the link is up. It alone owns
// sent: the outbox entries in flight, by outbox sequence.
func (a *Agent) publishLoop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	sent := map[uint64]sentMark{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.outKick:
		case <-retry.C:
		}
		if err := a.flush(ctx, sent); err != nil {
			if ctx.Err() != nil {
				return
			}
			var ep errEchoPending
			if errors.As(err, &ep) {
				retry.Reset(max(time.Until(ep.until), 10*time.Millisecond))
				continue
			}
			a.log.Debug().Err(err).Msg("publish deferred")
			retry.Reset(time.Second)
		}
	}
}

func (a *Agent) flush(ctx context.Context, sent map[uint64]sentMark) error {
	a.mu.Lock()
	c := a.client
	a.mu.Unlock()
	if c == nil || !c.IsConnected() {
		return errors.New("not connected")
	}
	t := a.cfg.Topics
	dev := a.cfg.DeviceID
	publish := func(topic string, payload []byte, retain bool) error {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return c.Publish(pctx, topic, payload, retain, 1)
	}
	// A slot is cleared only if it still holds what was sent.
	for _, slot := range []struct {
		field *[]byte
		topic string
	}{{&a.slots.presence, t.Presence(dev)}, {&a.slots.facts, t.Facts(dev)}} {
		a.mu.Lock()
		payload := *slot.field
		a.mu.Unlock()
		if payload == nil {
			continue
		}
		if err := publish(slot.topic, payload, true); err != nil {
			return err
		}
		a.observe(Observation{Kind: ObsSent, Topic: slot.topic, Bytes: len(payload)})
		a.mu.Lock()
		if bytes.Equal(*slot.field, payload) {
			*slot.field = nil
		}
		a.mu.Unlock()
	}
	// The durable outbox. An entry is deleted only when its message comes
	// back from the broker on edged's own subscription to its reports and
	// events (see onEcho): a completed publish token is no proof (paho #563).
	// Up to outWindow entries are in flight; an entry is sent again on a new
	// connection, or when its echo is overdue, and receivers drop the
	// duplicate by sequence.
	gen := a.connEpoch.Load()
	entries, err := a.state.pending(outWindow)
	if err != nil {
		return err
	}
	now := time.Now()
	// Forget what was acknowledged meanwhile: it is no longer pending.
	inOutbox := map[uint64]bool{}
	for _, e := range entries {
		inOutbox[e.Seq] = true
	}
	for seq := range sent {
		if !inOutbox[seq] {
			delete(sent, seq)
		}
	}
	var overdue time.Time
	for _, e := range entries {
		m, ok := sent[e.Seq]
		if ok && m.gen == gen && now.Sub(m.at) < echoTimeout {
			overdue = earliest(overdue, m.at.Add(echoTimeout))
			continue
		}
		if !c.IsConnected() {
			return errors.New("not connected")
		}
		if err := publish(e.Topic, e.Payload, e.Retain); err != nil {
			return err
		}
		a.observe(Observation{Kind: ObsSent, Topic: e.Topic, Bytes: len(e.Payload)})
		sent[e.Seq] = sentMark{gen: gen, at: time.Now()}
		overdue = earliest(overdue, time.Now().Add(echoTimeout))
	}
	if !overdue.IsZero() {
		return errEchoPending{until: overdue}
	}
	return nil
}

// errEchoPending asks publishLoop to look again when an echo is overdue.
type errEchoPending struct{ until time.Time }

func (e errEchoPending) Error() string { return "waiting for the broker to echo what was sent" }

// sentMark remembers on which connection, and when, an entry was sent.
type sentMark struct {
	gen uint64
	at  time.Time
}

const (
	outWindow   = 64               // entries sent and not yet echoed
	echoTimeout = 30 * time.Second // resend when an echo is this late
)

// onEcho acknowledges an outbox entry whose message came back from the
// broker, which proves the broker has it.
func (a *Agent) onEcho(kind outKind, m bus.Message) {
	a.observe(Observation{Kind: ObsReceived, Topic: m.Topic, Bytes: len(m.Payload)})
	var probe struct {
		Epoch string `json:"epoch"`
		Seq   uint64 `json:"seq"`
	}
	if json.Unmarshal(m.Payload, &probe) != nil || probe.Epoch != a.epoch || probe.Seq == 0 {
		return
	}
	found, err := a.state.ackMessage(kind, probe.Seq)
	if err != nil {
		a.log.Warn().Err(err).Msg("acknowledge outbox entry")
		return
	}
	if found {
		if kind == outReport {
			a.observeReport(m.Payload)
		}
		a.wakeOut()
	}
}

// worker is the single reconcile loop.
func (a *Agent) worker(ctx context.Context) {
	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	timer := time.NewTimer(0) // first pass at once: offline boot
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-resync.C:
		case <-timer.C:
		}
		a.takeInbox()
		wake := a.pass(ctx)
		if a.afterPass != nil {
			a.afterPass()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		if !wake.IsZero() {
			timer.Reset(max(time.Until(wake), time.Millisecond))
		}
	}
}

// takeInbox stores every desired document that is addressed to this
// device, signed by a trusted key (or unsigned, with AcceptUnsigned) and
// newer than the one applied. Anything else is refused: the stored
// document stays and keeps running, and the refusal is logged, reported
// and announced with a desired_refused event. A document of the applied
// generation is a re-delivery and ignored.
func (a *Agent) takeInbox() {
	a.mu.Lock()
	msgs := a.inbox
	a.inbox = nil
	a.mu.Unlock()
	for _, raw := range msgs {
		if len(raw) == 0 {
			continue // the retained document was cleared; keep what we have
		}
		d, learned, err := a.admit(raw)
		if errors.Is(err, errRedelivered) {
			continue
		}
		if err != nil {
			a.refuse(raw, d, err)
			continue
		}
		if len(learned) > 0 {
			// The document verified through these endorsements: trust
			// them from now on, across restarts, before it is stored.
			if err := a.state.addPlannerKeys(learned, time.Now()); err != nil {
				a.log.Error().Err(err).Msg("store planner keys")
				continue
			}
			for _, k := range learned {
				a.log.Info().Str("key", protocol.KeyID(k)).Msg("trusting a new planner key, endorsed by a trusted one")
			}
			a.trusted = append(a.trusted, learned...)
		}
		if err := a.state.putDesired(d); err != nil {
			a.log.Error().Err(err).Msg("store desired")
			continue
		}
		a.refusal = ""
		a.refusedDigest = [sha256.Size]byte{}
		a.observeDesired(d)
		a.log.Info().Uint64("generation", d.Generation).Int("allocations", len(d.Allocations)).Msg("desired state received")
	}
}

// errRedelivered: the document is of the applied generation.
var errRedelivered = errors.New("desired document of the applied generation")

// admit decides whether a desired document may be applied. On refusal it
// returns the reason (and the decoded document, as far as it decoded); it
// also returns the planner keys the document's endorsement chain made
// trusted.
func (a *Agent) admit(raw []byte) (protocol.Desired, []ed25519.PublicKey, error) {
	d, err := protocol.DecodeDesired(raw)
	if err != nil {
		return protocol.Desired{}, nil, fmt.Errorf("invalid document: %w", err)
	}
	if d.Device != a.cfg.DeviceID {
		return d, nil, fmt.Errorf("addressed to device %q, not to this one", d.Device)
	}
	var learned []ed25519.PublicKey
	switch {
	case d.Signature == nil && a.cfg.AcceptUnsigned:
		a.log.Warn().Uint64("generation", d.Generation).Msg("accepting an unsigned desired document (insecure: --insecure-accept-unsigned)")
	case d.Signature != nil && a.cfg.AcceptUnsigned && len(a.trusted) == 0:
		a.log.Warn().Uint64("generation", d.Generation).Str("key", d.Signature.Key).
			Msg("accepting a signed desired document unverified: no planner key is known (insecure: --insecure-accept-unsigned)")
	default:
		learned, err = protocol.VerifyDesired(d, a.trusted)
		if err != nil {
			return d, nil, err
		}
	}
	cur, err := a.state.desired()
	if err != nil {
		return d, nil, fmt.Errorf("read local state: %w", err)
	}
	if cur != nil && d.Generation < cur.Generation {
		return d, nil, fmt.Errorf("older than the applied generation %d", cur.Generation)
	}
	if cur != nil && d.Generation == cur.Generation {
		return d, nil, errRedelivered
	}
	return d, learned, nil
}

// refuse records why a desired document was refused: the log, the report
// (until a newer document is applied) and, once per document, an event.
func (a *Agent) refuse(raw []byte, d protocol.Desired, why error) {
	if d.Device == "" { // it did not decode
		a.refusal = fmt.Sprintf("refused a desired document: %v", why)
	} else {
		a.refusal = fmt.Sprintf("refused desired generation %d: %v", d.Generation, why)
	}
	digest := sha256.Sum256(raw)
	if digest == a.refusedDigest {
		a.log.Debug().Err(why).Uint64("generation", d.Generation).Msg("refusing desired document again")
		return
	}
	a.refusedDigest = digest
	a.log.Warn().Err(why).Uint64("generation", d.Generation).Msg("refusing desired document; keeping the applied one")
	a.notices = append(a.notices, pendingEvent{Type: protocol.EventDesiredRefused, Message: a.refusal})
}

// list asks every driver what runs; listed says which answered.
func (a *Agent) list(ctx context.Context) ([]observed, map[string]bool) {
	var obs []observed
	listed := map[string]bool{}
	for name, d := range a.drivers {
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		insts, err := d.List(lctx, a.cfg.DeviceID)
		cancel()
		if err != nil {
			a.log.Warn().Err(err).Str("driver", name).Msg("list instances")
			continue
		}
		listed[name] = true
		for _, i := range insts {
			obs = append(obs, observed{Driver: name, Instance: i})
		}
	}
	return obs, listed
}

// pass runs one reconcile: diff, act, report. It returns when it next
// needs to run (zero: only when woken).
func (a *Agent) pass(ctx context.Context) time.Time {
	desired, err := a.state.desired()
	if err != nil {
		a.log.Error().Err(err).Msg("read desired state")
		return time.Now().Add(time.Second)
	}
	recs, err := a.state.tasks()
	if err != nil {
		a.log.Error().Err(err).Msg("read task records")
		return time.Now().Add(time.Second)
	}
	now := time.Now()
	obs, listed := a.list(ctx)
	if a.offlineSince.Load() == 0 && now.Sub(a.linkNoted) > time.Minute {
		// Still connected: note it now and then, for the next start.
		a.linkNoted = now
		_ = a.state.setLinkSeen(now)
	}
	suspended, resume := a.stopAfter(desired, now)
	res := diffSuspended(a.cfg.DeviceID, desired, obs, recs, listed, suspended, now)
	a.beginHealth(desired, obs, res.Tasks, now)
	events := append(a.notices, res.Events...)
	a.notices = nil
	wake := res.Wake
	if !resume.IsZero() {
		wake = earliest(wake, resume)
	}
	for _, act := range res.Actions {
		d := a.drivers[act.Driver]
		log := a.log.With().Str("task", act.Key).Str("reason", act.Reason).Logger()
		switch act.Kind {
		case actRemove:
			if act.Stop {
				sctx, cancel := context.WithTimeout(ctx, a.cfg.StopTimeout+10*time.Second)
				if err := d.Stop(sctx, act.ID, a.cfg.StopTimeout); err != nil && !errors.Is(err, driver.ErrNotFound) {
					log.Warn().Err(err).Msg("stop")
				}
				cancel()
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			if err := d.Remove(rctx, act.ID); err != nil && !errors.Is(err, driver.ErrNotFound) {
				log.Warn().Err(err).Msg("remove")
			} else {
				log.Info().Str("instance", act.ID).Msg("removed")
			}
			cancel()
		case actStart:
			sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			inst, err := d.Start(sctx, act.Spec)
			cancel()
			rec := res.Tasks[act.Key]
			alloc, task := act.Spec.Labels[driver.LabelAlloc], act.Spec.Labels[driver.LabelTask]
			if err != nil {
				log.Warn().Err(err).Msg("start failed")
				code := -1
				rec.ExitCode = &code
				rec.Message = err.Error()
				rec.FinishedAt = now
				typ, pol := policyFor(act.Spec.Task, desired, alloc)
				next := onExit(&rec, typ, pol, -1, now)
				events = append(events, pendingEvent{Type: protocol.EventDriverErr, Alloc: alloc, Job: act.Spec.Labels[driver.LabelJob], Task: task, Message: err.Error()},
					pendingEvent{Type: next, Alloc: alloc, Job: act.Spec.Labels[driver.LabelJob], Task: task, Message: err.Error()})
				if rec.NextStart.After(now) {
					wake = earliest(wake, rec.NextStart)
				}
			} else {
				log.Info().Str("instance", inst.ID).Msg("started")
				a.observe(Observation{Kind: ObsWorkloadStarted, Alloc: alloc, Job: act.Spec.Labels[driver.LabelJob], Task: task})
				rec.StartedAt = inst.StartedAt
				rec.Message = ""
				events = append(events, pendingEvent{Type: protocol.EventStarted, Alloc: alloc, Job: act.Spec.Labels[driver.LabelJob], Task: task})
			}
			res.Tasks[act.Key] = rec
		}
	}
	if len(res.Actions) > 0 {
		obs, listed = a.list(ctx)
	}
	configured := map[string]bool{}
	for name := range a.drivers {
		configured[name] = true
	}
	allocs := buildReport(desired, obs, res.Tasks, listed, configured, now)
	verdicts, judgeAgain := a.judgeHealth(desired, allocs, obs, res.Tasks, suspended)
	events = append(events, verdicts...)
	if !judgeAgain.IsZero() {
		wake = earliest(wake, judgeAgain)
	}
	if err := a.state.putTasks(res.Tasks, a.health); err != nil {
		a.log.Error().Err(err).Msg("store task records")
	}
	a.report(desired, allocs, events, suspended, now)
	return wake
}

// stopAfter applies disconnect.stop_after: allocations that asked to be
// stopped after being without the server that long are suspended while
// edged is offline (their workloads stop, their records stay) and resume
// when it reconnects. It returns the suspended allocations with the reason,
// and when the next one is due (zero: none).
func (a *Agent) stopAfter(desired *protocol.Desired, now time.Time) (map[string]string, time.Time) {
	since := a.offlineSince.Load()
	if desired == nil || since == 0 {
		return nil, time.Time{}
	}
	offline := now.Sub(time.Unix(0, since))
	var next time.Time
	suspended := map[string]string{}
	for _, al := range desired.Allocations {
		limit := al.StopAfterDisconnect.Std()
		switch {
		case limit <= 0:
		case offline >= limit:
			suspended[al.ID] = fmt.Sprintf("stopped: no server for %s (disconnect.stop_after %s)", offline.Round(time.Second), limit)
		default:
			next = earliest(next, time.Unix(0, since).Add(limit))
		}
	}
	return suspended, next
}

// report queues the observed state of allocs (when it changed) and the
// events.
func (a *Agent) report(desired *protocol.Desired, allocs []protocol.AllocStatus, events []pendingEvent, suspended map[string]string, now time.Time) {
	rep := protocol.Reported{Device: a.cfg.DeviceID, Allocations: allocs}
	for i, al := range rep.Allocations {
		if why, ok := suspended[al.ID]; ok {
			for j := range al.Tasks {
				rep.Allocations[i].Tasks[j].Message = why
			}
		}
	}
	if desired != nil {
		rep.ObservedGeneration = desired.Generation
	}
	var missing []string
	if desired != nil {
		for _, al := range desired.Allocations {
			for _, t := range al.Tasks {
				if _, ok := a.drivers[t.Driver]; !ok {
					missing = append(missing, t.Driver)
				}
			}
		}
	}
	var problems []string
	if len(missing) > 0 {
		sort.Strings(missing)
		problems = append(problems, "drivers not available on this device: "+strings.Join(compact(missing), ", "))
	}
	if a.refusal != "" {
		problems = append(problems, a.refusal)
	}
	rep.Error = strings.Join(problems, "; ")
	content, _ := json.Marshal(rep)
	a.mu.Lock()
	changed := !bytes.Equal(content, a.lastRep)
	a.mu.Unlock()
	dev := a.cfg.DeviceID
	var items []outItem
	stamp := now.Add(a.cfg.ClockOffset).UTC()
	if changed {
		rep.Time = stamp
		rep.Epoch = a.epoch
		items = append(items, outItem{Kind: outReport, Topic: a.cfg.Topics.Reported(dev), Retain: true, Build: func(seq uint64) ([]byte, error) {
			r := rep
			r.Seq = seq
			return protocol.Encode(r)
		}})
	}
	for _, e := range events {
		a.log.Info().Str("event", string(e.Type)).Str("alloc", e.Alloc).Str("task", e.Task).Str("detail", e.Message).Msg("task event")
		items = append(items, outItem{Kind: outEvent, Topic: a.cfg.Topics.Events(dev), Build: func(seq uint64) ([]byte, error) {
			return protocol.Encode(protocol.Event{Device: dev, Epoch: a.epoch, Seq: seq, Time: stamp, Type: e.Type, Alloc: e.Alloc, Job: e.Job, Task: e.Task, ExitCode: e.ExitCode, Message: e.Message})
		}})
	}
	if len(items) == 0 {
		return
	}
	dropped, err := a.state.enqueue(items, maxQueuedEvents)
	if err != nil {
		a.log.Error().Err(err).Msg("queue reports and events")
		return
	}
	if dropped > 0 {
		total := a.state.droppedTotal()
		a.log.Warn().Int("dropped", dropped).Uint64("total", total).Msg("outbox full; dropped the oldest events")
		msg := fmt.Sprintf("outbox full: %d events dropped so far (the oldest first)", total)
		// One notice, replaced while unsent, so notices cannot crowd out
		// the events themselves.
		if _, err := a.state.enqueue([]outItem{{Kind: outDropped, Topic: a.cfg.Topics.Events(dev), Build: func(seq uint64) ([]byte, error) {
			return protocol.Encode(protocol.Event{Device: dev, Epoch: a.epoch, Seq: seq, Time: stamp, Type: protocol.EventDropped, Message: msg})
		}}}, maxQueuedEvents); err != nil {
			a.log.Error().Err(err).Msg("queue events_dropped")
		}
	}
	if changed {
		a.mu.Lock()
		a.lastRep = content
		a.mu.Unlock()
	}
	a.wakeOut()
}

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func policyFor(t protocol.Task, desired *protocol.Desired, alloc string) (protocol.JobType, protocol.RestartPolicy) {
	typ := protocol.JobService
	if desired != nil {
		for _, a := range desired.Allocations {
			if a.ID == alloc {
				typ = a.Type
			}
		}
	}
	return typ, policy(t, typ)
}
