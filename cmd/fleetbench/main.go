// Command fleetbench is the fleet benchmark driver. It starts a tether
// server on loopback (with its embedded broker, or a Mosquitto and
// `tether server --broker`), spreads N simulated devices over several
// `tether sim` processes, runs the scenarios and writes a JSON result and a
// markdown table row per scenario:
//
//	connect  N devices connect and publish birth, facts and an empty report
//	system   a system job to every device: submission → every device running
//	service  a service job of 10 × N instances, bin-packed; then a rolling update
//	restart  the server restarts under the whole fleet: reconnect storm,
//	         reconvergence, and proof that no workload was restarted
//	steady   the fleet idles for --steady: server CPU and memory, messages
//	         and bytes per device per minute
//
// Run it as `go tool task bench:fleet N=1000` (after `go tool task build`).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	devices     int
	scenarios   []string
	tether      string
	brokerImpl  string
	mosquitto   string
	perSim      int
	ramp        float64
	steady      time.Duration
	timeout     time.Duration
	maxDuration time.Duration
	keepalive   time.Duration
	startLat    time.Duration
	crashRate   float64
	out         string
	md          string
	workDir     string
	simDir      string
	keep        bool
	note        string
	restartMosq bool
	mosqExtra   string
	// serveBroker, set only by fleetbench for its own child process in
	// -broker-impl broker-only, runs the broker alone on that address.
	serveBroker    string
	serveBrokerDir string
}

// allScenarios in the order they run: the service job (the heaviest) runs
// last, so that restart and steady measure the fleet with its system job
// alone and do not depend on the service scenario succeeding.
var allScenarios = []string{"connect", "system", "restart", "steady", "service"}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("fleetbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scen := fs.String("scenario", "all", "scenarios to run, comma-separated: connect, system, restart, steady, service, or all")
	fs.IntVar(&o.devices, "devices", 1000, "how many simulated devices")
	fs.StringVar(&o.tether, "tether", "bin/tether", "the tether binary (go tool task build)")
	fs.StringVar(&o.brokerImpl, "broker-impl", "embedded", "embedded (the server's own broker), mosquitto (tether server --broker), or broker-only (the embedded broker without the planner: connect only, for the broker's cost per device)")
	fs.StringVar(&o.mosquitto, "mosquitto", "mosquitto", "the mosquitto binary, for --broker-impl mosquitto")
	fs.IntVar(&o.perSim, "per-sim", 6000, "devices per simulator process (each device holds 2 of a process's 20,000 files)")
	fs.Float64Var(&o.ramp, "ramp", 500, "devices connecting per second over all simulators (0: all at once)")
	fs.DurationVar(&o.steady, "steady", 2*time.Minute, "how long the steady-state scenario lasts (over 1m to get the broker's own $SYS counters)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "how long any one wait (connect, convergence, restart) may take")
	fs.DurationVar(&o.maxDuration, "max-duration", 90*time.Minute, "stop everything after this long")
	fs.DurationVar(&o.keepalive, "keepalive", 30*time.Second, "the devices' MQTT keepalive")
	fs.DurationVar(&o.startLat, "start-latency", 0, "how long each simulated workload start takes")
	fs.Float64Var(&o.crashRate, "crash-rate", 0, "share of simulated workloads that crash (keep 0 for the restart proof)")
	fs.StringVar(&o.out, "out", "", "write the JSON result here (default $TMPDIR/tether-fleetbench/fleet-N-IMPL-TIME.json)")
	fs.StringVar(&o.md, "md", "", "also append the markdown rows to this file")
	fs.StringVar(&o.workDir, "work-dir", "", "where a new dir for the server's data and the logs goes (default the temporary dir: on disk, as a server's data would be)")
	fs.StringVar(&o.simDir, "sim-dir", "", "where a new dir for the simulated devices' data goes (default /dev/shm, else the temporary dir)")
	fs.BoolVar(&o.keep, "keep", false, "keep the work dir (logs, data) at the end")
	fs.BoolVar(&o.restartMosq, "restart-broker", true, "with -broker-impl mosquitto, the restart scenario restarts Mosquitto too, as the embedded broker restarts with the server (the reconnect storm); false restarts the planner alone")
	fs.StringVar(&o.mosqExtra, "mosquitto-conf", "", "extra lines for the generated mosquitto.conf, ';'-separated (e.g. 'set_tcp_nodelay true')")
	fs.StringVar(&o.note, "note", "", "a note recorded with the result (e.g. what else ran on the machine)")
	fs.StringVar(&o.serveBroker, "serve-broker", "", "internal: run the embedded broker alone on this loopback address (broker-only's child process)")
	fs.StringVar(&o.serveBrokerDir, "serve-broker-dir", "", "internal: the broker-only child's data dir")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.serveBroker != "" {
		return o, nil
	}
	var errs []error
	if o.devices < 1 {
		errs = append(errs, errors.New("-devices: want at least 1"))
	}
	if o.perSim < 1 || o.perSim > 8000 {
		errs = append(errs, errors.New("-per-sim: want 1 to 8000 (a process may hold 20,000 open files, 2 per device)"))
	}
	if o.brokerImpl != "embedded" && o.brokerImpl != "mosquitto" && o.brokerImpl != "broker-only" {
		errs = append(errs, fmt.Errorf("-broker-impl %q: want embedded, mosquitto or broker-only", o.brokerImpl))
	}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		switch {
		case s == "all":
			o.scenarios = append(o.scenarios, allScenarios...)
		case slices.Contains(allScenarios, s):
			o.scenarios = append(o.scenarios, s)
		default:
			errs = append(errs, fmt.Errorf("-scenario %q: want %s or all", s, strings.Join(allScenarios, ", ")))
		}
	}
	// Every run connects the fleet first; restart and steady run with the
	// system job in place. Run in the canonical order, each once.
	o.scenarios = append(o.scenarios, "connect")
	if slices.Contains(o.scenarios, "restart") || slices.Contains(o.scenarios, "steady") {
		o.scenarios = append(o.scenarios, "system")
	}
	o.scenarios = slices.DeleteFunc(slices.Clone(allScenarios), func(s string) bool { return !slices.Contains(o.scenarios, s) })
	if o.brokerImpl == "broker-only" {
		o.scenarios = []string{"connect"} // the rest need a planner
	}
	return o, errors.Join(errs...)
}

func main() {
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "fleetbench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.serveBroker != "" {
		if err := loopback(o.serveBroker); err != nil {
			fmt.Fprintln(os.Stderr, "fleetbench:", err)
			os.Exit(2)
		}
		if err := serveBroker(ctx, o.serveBroker, o.serveBrokerDir); err != nil {
			fmt.Fprintln(os.Stderr, "fleetbench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, cancel := context.WithTimeout(ctx, o.maxDuration)
	defer cancel()
	res, err := run(ctx, o, os.Stderr)
	if res != nil {
		if werr := writeResult(o, res, os.Stdout); werr != nil {
			fmt.Fprintln(os.Stderr, "fleetbench:", werr)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetbench:", err)
		os.Exit(1)
	}
}

// Result is the whole run.
type Result struct {
	Started    time.Time `json:"started"`
	Devices    int       `json:"devices"`
	BrokerImpl string    `json:"broker_impl"`
	Sims       int       `json:"sims"`
	Host       Host      `json:"host"`
	Note       string    `json:"note,omitempty"`
	// Idle is the server (and broker) before any device connected.
	Idle map[string]ProcUsage `json:"idle"`
	// BrokerConfig is the mosquitto.conf used (mosquitto mode).
	BrokerConfig string      `json:"broker_config,omitempty"`
	Scenarios    []*Scenario `json:"scenarios"`
	// Skipped says why the run did not happen (mosquitto mode without
	// support for it); nothing else is set then.
	Skipped string `json:"skipped,omitempty"`
}

// Host describes the machine.
type Host struct {
	CPUs      int    `json:"cpus"`
	MemTotal  string `json:"mem_total"`
	GoVersion string `json:"go_version"`
	Load1     string `json:"load_at_start"`
}

func hostInfo() Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		h.Load1 = strings.Join(strings.Fields(string(raw))[:3], " ")
	}
	if raw, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(l, "MemTotal:") {
				h.MemTotal = strings.TrimSpace(strings.TrimPrefix(l, "MemTotal:"))
			}
		}
	}
	return h
}

func writeResult(o options, res *Result, stdout io.Writer) error {
	path := o.out
	if path == "" {
		path = filepath.Join(os.TempDir(), "tether-fleetbench", fmt.Sprintf("fleet-%d-%s-%s.json", o.devices, o.brokerImpl, res.Started.Format("20060102-150405")))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
		return err
	}
	md := markdown(res)
	fmt.Fprint(stdout, md)
	fmt.Fprintf(stdout, "\nJSON result: %s\n", path)
	if o.md != "" {
		f, err := os.OpenFile(o.md, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.WriteString(f, md)
		return err
	}
	return nil
}

// loopback refuses addresses off this machine: the benchmark's traffic
// stays on loopback.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s: want a loopback address", addr)
	}
	return nil
}
