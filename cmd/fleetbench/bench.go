package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/sim"
)

// bench is one run: the processes and what the driver observes.
type bench struct {
	o      options
	log    io.Writer
	tether string
	dir    string // logs, job files and the server's data: on disk, as a server's would be
	simDir string // the simulated devices' data: /dev/shm when present
	topics protocol.Topics

	brokerURL  string // what the devices and the CLI connect to
	serverArgs []string
	server     *proc
	serverRuns int
	mosq       *proc
	mosqConf   string
	mosqRuns   int
	sims       []*proc
	simURLs    []string
	meter      *meter
	http       *http.Client

	obs       *bus.Client
	mu        sync.Mutex
	summary   *protocol.FleetSummary
	summaryAt time.Time
	sys       map[string][]sysSample

	sysJob, svcJob bool // which jobs run now
	svcInstances   int

	res *Result
}

type sysSample struct {
	at time.Time
	v  float64
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "fleetbench %s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, o options, log io.Writer) (*Result, error) {
	b := &bench{o: o, log: log, sys: map[string][]sysSample{}, http: &http.Client{Timeout: 20 * time.Second}}
	b.topics, _ = protocol.NewTopics(protocol.DefaultRoot)
	nSims := (o.devices + o.perSim - 1) / o.perSim
	res := &Result{Started: time.Now().UTC(), Devices: o.devices, BrokerImpl: o.brokerImpl, Sims: nSims, Host: hostInfo(), Note: o.note}
	b.res = res
	var err error
	if b.tether, err = findBinary(o.tether); err != nil {
		return nil, fmt.Errorf("-tether %s: %w (build it with: go tool task build)", o.tether, err)
	}
	if o.brokerImpl == "mosquitto" {
		if why := b.mosquittoUnsupported(ctx); why != "" {
			res.Skipped = why
			b.logf("SKIPPED: %s", why)
			return res, nil
		}
	}
	if b.dir, err = os.MkdirTemp(o.workDir, "fleetbench-"); err != nil {
		return nil, err
	}
	if b.simDir, err = simDir(o.simDir); err != nil {
		os.RemoveAll(b.dir)
		return nil, err
	}
	b.logf("work dir %s (server data, logs), devices' data in %s", b.dir, b.simDir)
	defer b.cleanup()

	if err := b.startBackend(ctx); err != nil {
		return res, err
	}
	b.meter = newMeter(b.pids)
	mctx, stopMeter := context.WithCancel(ctx)
	defer stopMeter()
	go b.meter.run(mctx)
	if err := b.observe(ctx); err != nil {
		return res, err
	}
	// Let the server settle before the idle sample.
	sleep(ctx, 3*time.Second)
	res.Idle = map[string]ProcUsage{}
	for name, pid := range b.pids() {
		u := sample(pid)
		res.Idle[name] = ProcUsage{RSSStartMB: mb(u.rssKB), RSSEndMB: mb(u.rssKB), CPUSeconds: u.cpu}
	}

	for _, name := range o.scenarios {
		if ctx.Err() != nil {
			break
		}
		steps := map[string]func(context.Context, *Scenario) error{
			"connect": b.connect, "system": b.system, "service": b.service, "restart": b.restart, "steady": b.steadyState,
		}
		s := &Scenario{Name: name, Usage: map[string]ProcUsage{}}
		b.logf("scenario %s: begin", name)
		before := b.usages()
		b.meter.reset()
		logFrom := b.serverLogMark()
		err := steps[name](ctx, s)
		s.Notes = append(s.Notes, b.serverWarnings(logFrom)...)
		peaks := b.meter.reset()
		after := b.usages()
		for k, a := range before {
			z, ok := after[k]
			if !ok {
				continue
			}
			if a.pid != 0 && a.pid != z.pid {
				// Restarted: the old process's CPU until its last sample,
				// plus all of the new one's.
				if last, ok := b.meter.lastOf(a.pid); ok {
					a.cpu -= last.cpu
				}
			}
			s.Usage[k] = usageBetween(a, z, peaks[k])
		}
		s.OK = err == nil
		if err != nil {
			s.Error = err.Error()
			b.logf("scenario %s: FAILED: %v", name, err)
		} else {
			b.logf("scenario %s: done in %.1fs", name, s.Wall)
		}
		res.Scenarios = append(res.Scenarios, s)
		if err != nil && (name == "connect" || name == "system") {
			return res, fmt.Errorf("scenario %s: %w", name, err) // the others build on it
		}
	}
	return res, ctx.Err()
}

func simDir(dir string) (string, error) {
	if dir == "" {
		dir = os.TempDir()
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			dir = "/dev/shm"
		}
	}
	return os.MkdirTemp(dir, "fleetbench-sims-")
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// pids are the processes the meter samples: "server", "mosquitto" and
// "sims" (the simulators are summed by usages, metered by their first).
func (b *bench) pids() map[string]int {
	m := map[string]int{}
	if b.server != nil && !b.server.exited() {
		m["server"] = b.server.pid()
	}
	if b.mosq != nil && !b.mosq.exited() {
		m["mosquitto"] = b.mosq.pid()
	}
	for i, p := range b.sims {
		if !p.exited() {
			m[fmt.Sprintf("sim%d", i)] = p.pid()
		}
	}
	return m
}

// usages samples every process; the simulators also summed as "sims".
func (b *bench) usages() map[string]usage {
	out := map[string]usage{}
	var sims usage
	for name, pid := range b.pids() {
		u := sample(pid)
		if strings.HasPrefix(name, "sim") {
			sims.at, sims.exists = u.at, true
			sims.cpu += u.cpu
			sims.rssKB += u.rssKB
			continue
		}
		out[name] = u
	}
	if sims.exists {
		out["sims"] = sims
	}
	return out
}

func (b *bench) cleanup() {
	for _, p := range b.sims {
		if err := p.stop(30 * time.Second); err != nil {
			b.logf("%v", err)
		}
	}
	if b.obs != nil {
		b.obs.Close()
	}
	if err := b.server.stop(30 * time.Second); err != nil {
		b.logf("%v", err)
	}
	if err := b.mosq.stop(10 * time.Second); err != nil {
		b.logf("%v", err)
	}
	if b.o.keep {
		b.logf("kept %s and %s", b.dir, b.simDir)
		return
	}
	for _, d := range []string{b.dir, b.simDir} {
		if err := os.RemoveAll(d); err != nil {
			b.logf("remove %s: %v", d, err)
		}
	}
}

// mosquittoUnsupported says why the mosquitto mode cannot run here, or "".
func (b *bench) mosquittoUnsupported(ctx context.Context) string {
	if _, err := findBinary(b.o.mosquitto); err != nil {
		return fmt.Sprintf("-broker-impl mosquitto: %v (Debian: apt-get install mosquitto)", err)
	}
	out, _ := exec.CommandContext(ctx, b.tether, "server", "--help").CombinedOutput()
	help := string(out)
	local, _, _ := strings.Cut(help, "Global Flags:")
	if !strings.Contains(local, "--broker") && !strings.Contains(strings.ToLower(help), "external broker") {
		return "-broker-impl mosquitto: this tether server has no external broker mode (tether server --broker URL); the Mosquitto comparison runs once it has"
	}
	return ""
}

// startBackend starts the broker (mosquitto mode) and the server.
func (b *bench) startBackend(ctx context.Context) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	b.brokerURL = "mqtt://" + addr
	b.serverArgs = []string{"server", "--data-dir", filepath.Join(b.dir, "server"), "--http-addr", "", "--log-level", "warn"}
	switch b.o.brokerImpl {
	case "broker-only":
		return b.startBrokerOnly(ctx, addr)
	case "mosquitto":
		if err := b.startMosquitto(ctx, port); err != nil {
			return err
		}
		// Access is the external broker's business: it lets anyone in.
		b.serverArgs = append(b.serverArgs, "--broker", b.brokerURL)
	default:
		b.serverArgs = append(b.serverArgs, "--mqtt-addr", addr, "--ws-addr", "", "--insecure-allow-anonymous", "--insecure-plaintext")
	}
	return b.startServer(ctx)
}

func (b *bench) startServer(ctx context.Context) error {
	b.serverRuns++
	p, err := start("server", filepath.Join(b.dir, fmt.Sprintf("server-%d.log", b.serverRuns)), b.tether, b.serverArgs...)
	if err != nil {
		return err
	}
	b.server = p
	// Printed once server.Start returned: broker listening, planner up.
	if err := p.waitLog(ctx, "Planner key:", 2*time.Minute); err != nil {
		return err
	}
	return nil
}

func (b *bench) startMosquitto(ctx context.Context, port int) error {
	dir := filepath.Join(b.dir, "mosquitto")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	conf := fmt.Sprintf(`listener %d 127.0.0.1
allow_anonymous true
# Run as root, mosquitto would switch to user mosquitto, which cannot
# write the persistence dir made here.
user root
persistence true
persistence_location %s/
autosave_interval 30
autosave_on_changes false
max_inflight_messages 100
max_queued_messages 100000
max_packet_size 1048576
# Without it Mosquitto's small packets (PUBACKs to the planner) wait for
# Nagle's algorithm: the planner, which publishes one desired document at a
# time and waits for each PUBACK, took 21.9s instead of 1.4s to send 1,000.
set_tcp_nodelay true
sys_interval 10
log_dest stdout
log_type error
log_type warning
`, port, dir)
	// As deploy/mosquitto/mosquitto.conf, less access control and TLS.
	for _, l := range strings.Split(b.o.mosqExtra, ";") {
		if l = strings.TrimSpace(l); l != "" {
			conf += l + "\n"
		}
	}
	b.res.BrokerConfig = conf
	path := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return err
	}
	b.mosqConf = path
	return b.runMosquitto(ctx, port)
}

// runMosquitto starts mosquitto with the config startMosquitto wrote.
func (b *bench) runMosquitto(ctx context.Context, port int) error {
	bin, err := findBinary(b.o.mosquitto)
	if err != nil {
		return err
	}
	b.mosqRuns++
	p, err := start("mosquitto", filepath.Join(b.dir, fmt.Sprintf("mosquitto-%d.log", b.mosqRuns)), bin, "-c", b.mosqConf)
	if err != nil {
		return err
	}
	b.mosq = p
	return waitPort(ctx, fmt.Sprintf("127.0.0.1:%d", port), 30*time.Second)
}

// observe connects the driver's own client: the fleet summary (the
// server's view) and the broker's $SYS counters.
func (b *bench) observe(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := bus.Dial(dctx, bus.Config{Brokers: []string{b.brokerURL}, ClientID: bus.RandomID("fleetbench-"), CleanSession: true, Log: zerolog.Nop()})
	if err != nil {
		return fmt.Errorf("observer: %w", err)
	}
	b.obs = c
	err = c.Subscribe(dctx, b.topics.FleetSummary(), 1, func(m bus.Message) {
		s, err := protocol.DecodeFleetSummary(m.Payload)
		if err != nil {
			return
		}
		b.mu.Lock()
		b.summary = &s
		if !m.Retained {
			// Published now, not the broker's retained copy.
			b.summaryAt = time.Now()
		}
		b.mu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("observer: %w", err)
	}
	err = c.Subscribe(dctx, "$SYS/broker/#", 0, func(m bus.Message) {
		f := strings.Fields(string(m.Payload))
		if len(f) == 0 {
			return
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return
		}
		b.mu.Lock()
		b.sys[m.Topic] = append(b.sys[m.Topic], sysSample{time.Now(), v})
		b.mu.Unlock()
	})
	if err != nil {
		b.logf("no $SYS counters from the broker: %v", err)
	}
	return nil
}

// fleetSummary is the server's last fleet summary and when the server last
// published one (retained copies delivered on subscribing do not count).
func (b *bench) fleetSummary() (*protocol.FleetSummary, time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.summary, b.summaryAt
}

func jobBrief(s *protocol.FleetSummary, job string) (protocol.JobBrief, bool) {
	if s == nil {
		return protocol.JobBrief{}, false
	}
	for _, j := range s.Jobs {
		if j.Job == job {
			return j, true
		}
	}
	return protocol.JobBrief{}, false
}

// sysNames are the $SYS topics of a counter in mochi and in Mosquitto.
var sysNames = map[string][]string{
	"bytes_received": {"$SYS/broker/load/bytes/received", "$SYS/broker/bytes/received"},
	"bytes_sent":     {"$SYS/broker/load/bytes/sent", "$SYS/broker/bytes/sent"},
	"msgs_received":  {"$SYS/broker/messages/received"},
	"msgs_sent":      {"$SYS/broker/messages/sent"},
	"heap":           {"$SYS/broker/system/memory", "$SYS/broker/heap/current"},
}

// sysRate is a $SYS counter's rate per second between the first and last
// samples inside [from, to], if they are at least 30s apart.
func (b *bench) sysRate(counter string, from, to time.Time) (float64, time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, topic := range sysNames[counter] {
		var in []sysSample
		for _, s := range b.sys[topic] {
			if !s.at.Before(from) && !s.at.After(to) {
				in = append(in, s)
			}
		}
		if len(in) < 2 {
			continue
		}
		d := in[len(in)-1].at.Sub(in[0].at)
		if d < 30*time.Second {
			continue
		}
		return (in[len(in)-1].v - in[0].v) / d.Seconds(), d, true
	}
	return 0, 0, false
}

// sysLatest is a $SYS value's last sample and when it came.
func (b *bench) sysLatest(counter string) (float64, time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, topic := range sysNames[counter] {
		if s := b.sys[topic]; len(s) > 0 {
			return s[len(s)-1].v, s[len(s)-1].at, true
		}
	}
	return 0, time.Time{}, false
}

// startSims spreads the devices over the simulators.
func (b *bench) startSims(ctx context.Context) error {
	n := len(b.sims)
	if n > 0 {
		return nil
	}
	nSims := (b.o.devices + b.o.perSim - 1) / b.o.perSim
	keyFile := filepath.Join(b.dir, "server", "planner-key.pub")
	for i := range nSims {
		first := i * b.o.perSim
		count := min(b.o.perSim, b.o.devices-first)
		port, err := freePort()
		if err != nil {
			return err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		ramp := 0.0
		if b.o.ramp > 0 {
			ramp = b.o.ramp / float64(nSims)
		}
		args := []string{"--broker", b.brokerURL, "sim",
			"--devices", strconv.Itoa(count), "--first", strconv.Itoa(first), "--prefix", "sim-",
			"--planner-key-file", keyFile, "--data-dir", filepath.Join(b.simDir, fmt.Sprintf("sim%d", i)),
			"--ramp", strconv.FormatFloat(ramp, 'f', -1, 64), "--status-addr", addr,
			"--keepalive", b.o.keepalive.String(), "--start-latency", b.o.startLat.String(),
			"--crash-rate", strconv.FormatFloat(b.o.crashRate, 'f', -1, 64),
			// A bound of their own, should fleetbench die without them noticing.
			"--duration", (b.o.maxDuration + time.Minute).String()}
		p, err := start(fmt.Sprintf("sim%d", i), filepath.Join(b.dir, fmt.Sprintf("sim%d.log", i)), b.tether, args...)
		if err != nil {
			return err
		}
		b.sims = append(b.sims, p)
		b.simURLs = append(b.simURLs, "http://"+addr)
	}
	for i, u := range b.simURLs {
		if err := waitPort(ctx, strings.TrimPrefix(u, "http://"), 30*time.Second); err != nil {
			return fmt.Errorf("simulator %d: %w:\n%s", i, err, b.sims[i].tail(20))
		}
	}
	return nil
}

func (b *bench) getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := b.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// status adds up the simulators' status.
func (b *bench) status(ctx context.Context) (sim.Status, error) {
	var total sim.Status
	total.Jobs = map[string]sim.JobCounts{}
	for i, u := range b.simURLs {
		if b.sims[i].exited() {
			return total, fmt.Errorf("simulator %d exited: %v\n%s", i, b.sims[i].err, b.sims[i].tail(20))
		}
		var s sim.Status
		if err := b.getJSON(ctx, u+"/status", &s); err != nil {
			return total, err
		}
		total.Add(s)
	}
	return total, nil
}

// devices lists every simulated device (job and version: see sim.DeviceStatus).
func (b *bench) devices(ctx context.Context, job string, version uint64) ([]sim.DeviceStatus, error) {
	var all []sim.DeviceStatus
	for _, u := range b.simURLs {
		var ds []sim.DeviceStatus
		q := ""
		if job != "" {
			q = fmt.Sprintf("?job=%s&version=%d", job, version)
		}
		if err := b.getJSON(ctx, u+"/devices"+q, &ds); err != nil {
			return nil, err
		}
		all = append(all, ds...)
	}
	return all, nil
}

// waitFor polls cond every half second until it holds, printing its
// progress line every 2s; it returns how long it took.
func (b *bench) waitFor(ctx context.Context, what string, limit time.Duration, cond func(context.Context) (bool, string, error)) (time.Duration, error) {
	begin := time.Now()
	lastPrint := begin
	for {
		done, line, err := cond(ctx)
		if err != nil {
			return time.Since(begin), fmt.Errorf("%s: %w", what, err)
		}
		if done {
			b.logf("%s: done after %.1fs (%s)", what, time.Since(begin).Seconds(), line)
			return time.Since(begin), nil
		}
		if time.Since(lastPrint) >= 2*time.Second {
			lastPrint = time.Now()
			srv := ""
			if b.server != nil && !b.server.exited() {
				u := sample(b.server.pid())
				srv = fmt.Sprintf("  [server cpu %.1fs rss %.0fMB]", u.cpu, mb(u.rssKB))
			}
			b.logf("%s: %5.1fs  %s%s", what, time.Since(begin).Seconds(), line, srv)
		}
		if time.Since(begin) > limit {
			return time.Since(begin), fmt.Errorf("%s: not within %s (%s)", what, limit, line)
		}
		select {
		case <-ctx.Done():
			return time.Since(begin), ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

var acceptedRe = regexp.MustCompile(`Accepted as version (\d+)`)

// submit runs `tether job run FILE --detach` and returns the accepted
// version and how long the CLI took.
func (b *bench) submit(ctx context.Context, job protocol.Job) (uint64, time.Duration, error) {
	raw, err := json.MarshalIndent(job, "", "  ")
	if err != nil {
		return 0, 0, err
	}
	path := filepath.Join(b.dir, job.ID+".json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		return 0, 0, err
	}
	limit := min(5*time.Minute, b.o.timeout)
	cctx, cancel := context.WithTimeout(ctx, limit+10*time.Second)
	defer cancel()
	begin := time.Now()
	cmd := exec.CommandContext(cctx, b.tether, "--broker", b.brokerURL, "job", "run", path, "--detach", "--timeout", limit.String())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	took := time.Since(begin)
	if err != nil {
		return 0, took, fmt.Errorf("tether job run %s: %w\n%s", job.ID, err, out.String())
	}
	m := acceptedRe.FindStringSubmatch(out.String())
	if m == nil {
		return 0, took, fmt.Errorf("tether job run %s: no accepted version in its output:\n%s", job.ID, out.String())
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v, took, nil
}

// spread returns the percentiles of the durations.
func spread(ds []time.Duration) sim.Percentiles { return sim.Summarize(ds) }

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// logMark is a place in the server's logs: which run, how far.
type logMark struct {
	run    int
	offset int64
}

func (b *bench) serverLogMark() logMark {
	st, err := os.Stat(b.server.log)
	if err != nil {
		return logMark{run: b.serverRuns}
	}
	return logMark{run: b.serverRuns, offset: st.Size()}
}

// serverWarnings summarizes the warnings and errors the server logged
// since the mark: the most frequent messages, with their counts.
func (b *bench) serverWarnings(from logMark) []string {
	counts := map[string]int{}
	for run := from.run; run <= b.serverRuns; run++ {
		raw, err := os.ReadFile(filepath.Join(b.dir, fmt.Sprintf("server-%d.log", run)))
		if err != nil {
			continue
		}
		if run == from.run && from.offset <= int64(len(raw)) {
			raw = raw[from.offset:]
		}
		for _, line := range strings.Split(string(raw), "\n") {
			// Console format: "15:04:05 WRN message key=value ..."
			f := strings.SplitN(line, " ", 3)
			if len(f) < 3 || (f[1] != "WRN" && f[1] != "ERR" && f[1] != "FTL") {
				continue
			}
			msg := f[1] + " " + f[2]
			if strings.Contains(msg, "insecure") || strings.Contains(msg, "anonymous clients are allowed") {
				continue // the flags fleetbench starts the server with
			}
			// Drop the fields that differ per client or connection.
			msg = volatileField.ReplaceAllString(msg, "")
			counts[msg]++
		}
	}
	type kv struct {
		msg string
		n   int
	}
	var all []kv
	for m, n := range counts {
		all = append(all, kv{m, n})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].msg < all[j].msg })
	var out []string
	for i, e := range all {
		if i == 5 {
			out = append(out, fmt.Sprintf("server log: %d more kinds of warnings", len(all)-5))
			break
		}
		out = append(out, fmt.Sprintf("server log: %d× %s", e.n, e.msg))
	}
	return out
}

var volatileField = regexp.MustCompile(` (client|remote|device|pk|filter|alloc|instance)=("[^"]*"|\S+)`)

// plan runs `tether job plan` for job and returns its exit code (0: no
// change, 1: changes) and output. Other failures are errors.
func (b *bench) plan(ctx context.Context, job protocol.Job) (int, string, error) {
	raw, err := json.Marshal(job)
	if err != nil {
		return 0, "", err
	}
	path := filepath.Join(b.dir, job.ID+"-plan.json")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		return 0, "", err
	}
	cctx, cancel := context.WithTimeout(ctx, b.o.timeout+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, b.tether, "--broker", b.brokerURL, "job", "plan", path, "--timeout", b.o.timeout.String())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return 1, out.String(), nil
	default:
		return 0, out.String(), fmt.Errorf("tether job plan %s: %w\n%s", job.ID, err, out.String())
	}
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, " / ")
}
