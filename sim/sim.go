package sim

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged"
	"github.com/tether-edge/tether/edged/fake"
	"github.com/tether-edge/tether/protocol"
)

// Config of a simulated fleet.
type Config struct {
	// Devices is how many devices to run; their ids are Prefix followed by
	// the index, from First, in five digits or more: sim-00000.
	Devices int
	Prefix  string // default "sim-"
	First   int
	Brokers []string
	Topics  protocol.Topics
	// PlannerKeys are the planner's public keys every device trusts
	// (required: edged refuses to start without a key).
	PlannerKeys []ed25519.PublicKey
	// DataDir is where the devices' data dirs are made, one per device, in
	// a new directory that Run removes at the end unless KeepData. Empty:
	// /dev/shm when it exists (bbolt's fsyncs cost nothing there), else the
	// system's temporary directory.
	DataDir  string
	KeepData bool
	// Ramp is how many devices start per second; 0 starts them all at once.
	Ramp float64
	// StartLatency is how long each workload start takes (fake runtime).
	StartLatency time.Duration
	// CrashRate (0 to 1) of the started workloads that would run forever
	// crash within CrashWithin (default 1s) with one of ExitCodes
	// (default 1).
	CrashRate   float64
	CrashWithin time.Duration
	ExitCodes   []int
	// KeepAlive is the devices' MQTT keepalive (default 30s); Resync how
	// often each agent looks at its runtime unprompted (default 30s).
	KeepAlive time.Duration
	Resync    time.Duration
	// StatusAddr, when set, serves the status as JSON over HTTP on it
	// (127.0.0.1:0 picks a port; see Status and DeviceStatus). Only
	// loopback addresses are accepted.
	StatusAddr string
	// OnListen, when set, is called with the status endpoint's address
	// once it listens.
	OnListen func(addr string)
	// Progress receives a progress line every ProgressEvery (default 1s);
	// nil prints none.
	Progress      io.Writer
	ProgressEvery time.Duration
	// Duration ends the run after this long; 0 runs until ctx ends.
	Duration time.Duration
	// Reference is the start that "time to running" counts from; zero
	// means when Run started.
	Reference time.Time
	// Seed varies the facts; the same seed describes the same fleet.
	Seed uint64
	// Log is the agents' logger; the simulator itself logs nothing.
	Log zerolog.Logger
}

// Percentiles of a set of durations, in seconds.
type Percentiles struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// Traffic counts the MQTT messages the devices published (Sent) and
// received on their subscriptions (Received), their payload bytes and an
// estimate of their bytes on the wire (PUBLISH framing and PUBACKs; no
// pings, CONNECTs or SUBSCRIBEs).
type Traffic struct {
	MsgsSent          int64 `json:"msgs_sent"`
	BytesSent         int64 `json:"bytes_sent"`
	WireBytesSent     int64 `json:"wire_bytes_sent"`
	MsgsReceived      int64 `json:"msgs_received"`
	BytesReceived     int64 `json:"bytes_received"`
	WireBytesReceived int64 `json:"wire_bytes_received"`
}

func (t *Traffic) add(o Traffic) {
	t.MsgsSent += o.MsgsSent
	t.BytesSent += o.BytesSent
	t.WireBytesSent += o.WireBytesSent
	t.MsgsReceived += o.MsgsReceived
	t.BytesReceived += o.BytesReceived
	t.WireBytesReceived += o.WireBytesReceived
}

// JobCounts are a job's allocations over the simulated devices, from their
// last confirmed reports.
type JobCounts struct {
	Devices int `json:"devices"`
	Allocs  int `json:"allocs"`
	Running int `json:"running"`
	// RunningByVersion counts running allocations by job version.
	RunningByVersion map[uint64]int `json:"running_by_version"`
}

// Status is the simulator's live state (the status endpoint's /status).
type Status struct {
	Devices int `json:"devices"`
	Started int `json:"started"`
	Failed  int `json:"failed"`
	// Connected now; Connects ever (reconnects included); Reconnected
	// devices connected more than once.
	Connected   int `json:"connected"`
	Connects    int `json:"connects"`
	Reconnected int `json:"reconnected"`
	// DesiredReceived: devices that accepted at least one desired
	// document; Reported: devices with at least one confirmed report;
	// Running: devices that run what they were last told (see device.running).
	DesiredReceived int                  `json:"desired_received"`
	Reported        int                  `json:"reported"`
	Running         int                  `json:"running"`
	WorkloadStarts  int                  `json:"workload_starts"`
	Traffic         Traffic              `json:"traffic"`
	Jobs            map[string]JobCounts `json:"jobs,omitempty"`
	Elapsed         float64              `json:"elapsed_s"`
}

// addJob adds a job's counts from one device or one simulator.
func (s *Status) addJob(name string, devices, allocs, running int, byVersion map[uint64]int) {
	if s.Jobs == nil {
		s.Jobs = map[string]JobCounts{}
	}
	c := s.Jobs[name]
	c.Devices += devices
	c.Allocs += allocs
	c.Running += running
	if c.RunningByVersion == nil {
		c.RunningByVersion = map[uint64]int{}
	}
	for v, n := range byVersion {
		c.RunningByVersion[v] += n
	}
	s.Jobs[name] = c
}

// Add adds another simulator's status to s: the fleet of several
// simulator processes. Elapsed is left as it is.
func (s *Status) Add(o Status) {
	s.Devices += o.Devices
	s.Started += o.Started
	s.Failed += o.Failed
	s.Connected += o.Connected
	s.Connects += o.Connects
	s.Reconnected += o.Reconnected
	s.DesiredReceived += o.DesiredReceived
	s.Reported += o.Reported
	s.Running += o.Running
	s.WorkloadStarts += o.WorkloadStarts
	s.Traffic.add(o.Traffic)
	for name, j := range o.Jobs {
		s.addJob(name, j.Devices, j.Allocs, j.Running, j.RunningByVersion)
	}
}

// Summary is what Run returns: the status when the run ended, plus
// per-device timings from Reference and latencies.
type Summary struct {
	Status
	// FirstConnect: Reference → each device's first connect.
	FirstConnect Percentiles `json:"first_connect_s"`
	// DesiredToRunning: a desired document accepted → the first confirmed
	// report of its generation with every allocation running, per device
	// and generation.
	DesiredToRunning Percentiles `json:"desired_to_running_s"`
	// ReferenceToRunning: Reference → each running device's first
	// confirmed report of its current generation running.
	ReferenceToRunning Percentiles `json:"reference_to_running_s"`
}

// DeviceStatus is one device in the status endpoint's /devices. Times are
// Unix nanoseconds, 0 for never. DesiredAt and RunningAt are of the job and
// version asked for (?job=J&version=V; V 0 or absent: the highest version
// of J the device was given).
type DeviceStatus struct {
	ID           string `json:"id"`
	Connected    bool   `json:"connected"`
	Connects     int    `json:"connects"`
	FirstConnect int64  `json:"first_connect,omitempty"`
	LastConnect  int64  `json:"last_connect,omitempty"`
	Reports      int    `json:"reports"`
	LastReport   int64  `json:"last_report,omitempty"`
	Starts       int    `json:"starts"`
	Running      bool   `json:"running"`
	Version      uint64 `json:"version,omitempty"`
	// Allocs and AllocsRunning are the job's allocations on the device
	// (any version) in its last confirmed report.
	Allocs        int   `json:"allocs,omitempty"`
	AllocsRunning int   `json:"allocs_running,omitempty"`
	DesiredAt     int64 `json:"desired_at,omitempty"`
	RunningAt     int64 `json:"running_at,omitempty"`
}

// filesPerDevice: a device holds its TCP connection and its bbolt file.
const filesPerDevice = 2

// Run starts the devices, ramped, and runs them until ctx ends or Duration
// passes; then it stops them (each says goodbye: offline presence) and
// returns the summary taken just before.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	if err := cfg.defaults(); err != nil {
		return Summary{}, err
	}
	begin := time.Now()
	if cfg.Reference.IsZero() {
		cfg.Reference = begin
	}
	base, err := makeBase(cfg.DataDir)
	if err != nil {
		return Summary{}, err
	}
	if !cfg.KeepData {
		defer os.RemoveAll(base)
	}
	f := &fleet{cfg: cfg, begin: begin, devices: make([]*device, cfg.Devices)}
	for i := range f.devices {
		f.devices[i] = newDevice(deviceID(cfg.Prefix, cfg.First+i))
	}

	if cfg.StatusAddr != "" {
		srv, addr, err := f.serve(cfg.StatusAddr)
		if err != nil {
			return Summary{}, err
		}
		defer srv.Close()
		if cfg.OnListen != nil {
			cfg.OnListen(addr)
		}
	}

	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	var progress sync.WaitGroup
	progCtx, stopProgress := context.WithCancel(ctx)
	defer stopProgress()
	if cfg.Progress != nil {
		progress.Add(1)
		go func() { defer progress.Done(); f.progress(progCtx) }()
	}

	end := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		end, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	var agents sync.WaitGroup
	behavior := fake.Crashing(nil, cfg.CrashRate, cfg.CrashWithin, cfg.ExitCodes)
ramp:
	for i, d := range f.devices {
		if cfg.Ramp > 0 {
			at := begin.Add(time.Duration(float64(i) / cfg.Ramp * float64(time.Second)))
			if wait := time.Until(at); wait > 0 {
				select {
				case <-end.Done():
					break ramp
				case <-time.After(wait):
				}
			}
		} else if end.Err() != nil {
			break
		}
		dc := f.daemonConfig(d, cfg.First+i, filepath.Join(base, d.id), behavior)
		d.mu.Lock()
		d.started = true
		d.mu.Unlock()
		agents.Add(1)
		go func() {
			defer agents.Done()
			if err := edged.RunDaemon(runCtx, dc); err != nil {
				d.mu.Lock()
				d.started, d.failed = false, true
				d.mu.Unlock()
				cfg.Log.Error().Err(err).Str("device", d.id).Msg("simulated device stopped")
			}
		}()
	}
	<-end.Done()
	sum := f.summary()
	stopProgress()
	progress.Wait()
	stop()
	agents.Wait()
	return sum, nil
}

func (cfg *Config) defaults() error {
	var errs []error
	if cfg.Devices <= 0 {
		errs = append(errs, errors.New("devices: want at least 1"))
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "sim-"
	}
	if cfg.First < 0 {
		errs = append(errs, errors.New("first: want 0 or more"))
	}
	if err := protocol.ValidateID(deviceID(cfg.Prefix, cfg.First)); err != nil {
		errs = append(errs, fmt.Errorf("prefix: %w", err))
	}
	if len(cfg.Brokers) == 0 {
		errs = append(errs, errors.New("brokers: at least one is required"))
	}
	if len(cfg.PlannerKeys) == 0 {
		errs = append(errs, errors.New("planner keys: at least one is required (edged applies only signed desired state)"))
	}
	if cfg.CrashRate < 0 || cfg.CrashRate > 1 {
		errs = append(errs, fmt.Errorf("crash rate: %g is not between 0 and 1", cfg.CrashRate))
	}
	if cfg.Ramp < 0 {
		errs = append(errs, errors.New("ramp: want 0 (all at once) or more"))
	}
	if cfg.StatusAddr != "" {
		if err := loopbackOnly(cfg.StatusAddr); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.Topics.Root == "" {
		cfg.Topics, _ = protocol.NewTopics(protocol.DefaultRoot)
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.ProgressEvery == 0 {
		cfg.ProgressEvery = time.Second
	}
	var lim syscall.Rlimit
	if cfg.Devices > 0 && syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		// Go raises the soft limit to the hard one at start.
		spare := uint64(64)
		if need := uint64(cfg.Devices)*filesPerDevice + spare; need > lim.Cur {
			errs = append(errs, fmt.Errorf("devices: %d devices need about %d open files, this process may hold %d: "+
				"run at most %d devices per process and spread the fleet over several (First)",
				cfg.Devices, need, lim.Cur, (lim.Cur-spare)/filesPerDevice))
		}
	}
	return errors.Join(errs...)
}

func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("status address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("status address %q: want a loopback address such as 127.0.0.1:0", addr)
	}
	return nil
}

// deviceID is the id of the device with this index.
func deviceID(prefix string, index int) string { return fmt.Sprintf("%s%05d", prefix, index) }

func makeBase(dir string) (string, error) {
	if dir == "" {
		dir = os.TempDir()
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			dir = "/dev/shm"
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("data dir: %w", err)
	}
	base, err := os.MkdirTemp(dir, "tether-sim-")
	if err != nil {
		return "", fmt.Errorf("data dir: %w", err)
	}
	return base, nil
}

// fleet is the running simulator.
type fleet struct {
	cfg     Config
	begin   time.Time
	devices []*device
}

func (f *fleet) daemonConfig(d *device, index int, dir string, behavior fake.Behavior) edged.DaemonConfig {
	facts := factsFor(d.id, index, f.cfg.Seed)
	return edged.DaemonConfig{
		Config: edged.Config{
			DeviceID:    d.id,
			Brokers:     f.cfg.Brokers,
			DataDir:     dir,
			Labels:      facts.Labels,
			Topics:      f.cfg.Topics,
			Version:     "sim",
			Resync:      f.cfg.Resync,
			KeepAlive:   f.cfg.KeepAlive,
			CPUMHz:      facts.CPUMHz,
			MemoryMB:    facts.MemoryMB,
			Arch:        facts.Arch,
			CPUCores:    facts.CPUCores,
			PlannerKeys: f.cfg.PlannerKeys,
			Observe:     d.observe,
			Log:         f.cfg.Log,
		},
		FakeRuntime: true,
		Fake:        fake.Options{StartLatency: f.cfg.StartLatency, Behavior: behavior},
	}
}

// status adds up the devices' records.
func (f *fleet) status() Status {
	s := Status{Devices: len(f.devices), Jobs: map[string]JobCounts{}, Elapsed: time.Since(f.begin).Seconds()}
	for _, d := range f.devices {
		d.mu.Lock()
		if d.started {
			s.Started++
		}
		if d.failed {
			s.Failed++
		}
		if d.connected {
			s.Connected++
		}
		s.Connects += d.connects
		if d.connects > 1 {
			s.Reconnected++
		}
		if d.desiredGen > 0 {
			s.DesiredReceived++
		}
		if d.reports > 0 {
			s.Reported++
		}
		if d.running() {
			s.Running++
		}
		s.WorkloadStarts += d.starts
		s.Traffic.add(d.traffic)
		for name, j := range d.jobs {
			s.addJob(name, 1, j.allocs, j.running, j.byVersion)
		}
		d.mu.Unlock()
	}
	return s
}

func (f *fleet) summary() Summary {
	sum := Summary{Status: f.status()}
	var first, latency, toRunning []time.Duration
	ref := f.cfg.Reference
	for _, d := range f.devices {
		d.mu.Lock()
		if !d.firstConnect.IsZero() {
			first = append(first, d.firstConnect.Sub(ref))
		}
		latency = append(latency, d.latencies...)
		if d.running() && d.ranGen == d.desiredGen {
			toRunning = append(toRunning, d.ranAt.Sub(ref))
		}
		d.mu.Unlock()
	}
	sum.FirstConnect = percentiles(first)
	sum.DesiredToRunning = percentiles(latency)
	sum.ReferenceToRunning = percentiles(toRunning)
	return sum
}

// deviceStatus is /devices for job (and version, 0 for the highest).
func (f *fleet) deviceStatus(job string, version uint64) []DeviceStatus {
	out := make([]DeviceStatus, len(f.devices))
	for i, d := range f.devices {
		d.mu.Lock()
		ds := DeviceStatus{
			ID: d.id, Connected: d.connected, Connects: d.connects,
			FirstConnect: unixNano(d.firstConnect), LastConnect: unixNano(d.lastConnect),
			Reports: d.reports, LastReport: unixNano(d.lastReport), Starts: d.starts, Running: d.running(),
		}
		if job != "" {
			v := version
			if v == 0 {
				for k := range d.jobDesiredAt {
					if k.job == job {
						v = max(v, k.version)
					}
				}
			}
			k := jobVersion{job, v}
			ds.Version = v
			ds.Allocs, ds.AllocsRunning = d.jobs[job].allocs, d.jobs[job].running
			ds.DesiredAt = unixNano(d.jobDesiredAt[k])
			ds.RunningAt = unixNano(d.jobRunningAt[k])
		}
		d.mu.Unlock()
		out[i] = ds
	}
	return out
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (f *fleet) progress(ctx context.Context) {
	t := time.NewTicker(f.cfg.ProgressEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := f.status()
		fmt.Fprintf(f.cfg.Progress, "sim %6.0fs  started %d/%d  connected %d  reconnected %d  desired %d  reported %d  running %d  starts %d  failed %d\n",
			s.Elapsed, s.Started, s.Devices, s.Connected, s.Reconnected, s.DesiredReceived, s.Reported, s.Running, s.WorkloadStarts, s.Failed)
	}
}
