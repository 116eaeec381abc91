package main

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/sim"
)

func newSimCmd(g *globals) *cobra.Command {
	var (
		cfg        sim.Config
		keyFile    string
		keys       []string
		exitCodes  string
		agentLevel string
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulate a fleet: run many edged agents over an in-memory runtime in this process",
		Long: `Run --devices simulated devices in this process. Each is the real edged agent
with its own MQTT connection (client id PREFIX00000, PREFIX00001, ...),
persistent session and bbolt database, over an in-memory runtime instead
of Podman. Facts vary by device: architecture (amd64, arm64, arm, riscv64),
512-8192 MB of memory, 1-8 cores, labels site=s0..s9 and model=m0..m3.

A progress line goes to stderr every second; a JSON summary goes to stdout
at the end (after --duration, or on Ctrl-C). --status-addr serves the live
counters as JSON (GET /status, GET /devices?job=J&version=V).

Each device holds two open files (its connection and its database) and a
process may hold 20,000: run at most about 8,000 devices per process and
spread larger fleets over several, each with its own --first.`,
		Example: `  # 1,000 devices against a server on this machine, 200 connects/s:
  tether server --data-dir /tmp/ts --insecure-allow-anonymous --insecure-plaintext &
  tether sim --devices 1000 --ramp 200 --planner-key-file /tmp/ts/planner-key.pub

  # The second 5,000 of a fleet, with slow, crashy workloads:
  tether sim --devices 5000 --first 5000 --start-latency 500ms --crash-rate 0.01 \
    --planner-key-file /tmp/ts/planner-key.pub --status-addr 127.0.0.1:7081`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			topics, err := g.topics()
			if err != nil {
				errs = append(errs, err)
			}
			cfg.Topics = topics
			cfg.Brokers = []string{g.broker}
			for i, k := range keys {
				pub, err := protocol.ParseKey(strings.TrimSpace(k))
				if err != nil {
					errs = append(errs, fmt.Errorf("--planner-key (key %d of %d): %w", i+1, len(keys), err))
					continue
				}
				cfg.PlannerKeys = append(cfg.PlannerKeys, pub)
			}
			if keyFile != "" {
				fk, err := readPlannerKeys(keyFile)
				if err != nil {
					errs = append(errs, fmt.Errorf("--planner-key-file: %w", err))
				}
				cfg.PlannerKeys = append(cfg.PlannerKeys, fk...)
			}
			if len(cfg.PlannerKeys) == 0 && keyFile == "" {
				errs = append(errs, errors.New("--planner-key-file or --planner-key is required: devices apply only desired state the planner signed (a server writes DATA-DIR/planner-key.pub)"))
			}
			for _, c := range strings.Split(exitCodes, ",") {
				if c = strings.TrimSpace(c); c == "" {
					continue
				}
				n, err := strconv.Atoi(c)
				if err != nil || n < 0 || n > 255 {
					errs = append(errs, fmt.Errorf("--exit-codes: %q is not an exit code (0-255)", c))
					continue
				}
				cfg.ExitCodes = append(cfg.ExitCodes, n)
			}
			log, err := cli.NewLogger(os.Stderr, agentLevel, g.logFormat)
			if err != nil {
				errs = append(errs, fmt.Errorf("--agent-log-level: %w", err))
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			cfg.Log = log
			cfg.Progress = cmd.ErrOrStderr()
			if cfg.StatusAddr != "" {
				cfg.OnListen = func(addr string) { fmt.Fprintf(cmd.ErrOrStderr(), "sim status: http://%s/status\n", addr) }
			}
			sum, err := sim.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(sum)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Devices, "devices", 100, "how many devices to simulate")
	f.StringVar(&cfg.Prefix, "prefix", "sim-", "device id prefix; ids are PREFIX followed by the index in five digits")
	f.IntVar(&cfg.First, "first", 0, "index of the first device (to spread a fleet over several processes)")
	f.StringVar(&keyFile, "planner-key-file", "", "file with the planner's public keys, one per line (a server writes DATA-DIR/planner-key.pub)")
	f.StringArrayVar(&keys, "planner-key", nil, "the planner's public key, standard base64 (repeatable)")
	f.StringVar(&cfg.DataDir, "data-dir", "", "where to make the devices' data dirs (default /dev/shm when present, else the temporary directory); removed at the end unless --keep-data")
	f.BoolVar(&cfg.KeepData, "keep-data", false, "keep the devices' data dirs at the end")
	f.Float64Var(&cfg.Ramp, "ramp", 200, "devices started per second (0: all at once)")
	f.DurationVar(&cfg.StartLatency, "start-latency", 0, "how long each workload start takes")
	f.Float64Var(&cfg.CrashRate, "crash-rate", 0, "share (0-1) of started workloads that crash")
	f.DurationVar(&cfg.CrashWithin, "crash-within", 10*time.Second, "a crashing workload exits at a random time up to this after its start")
	f.StringVar(&exitCodes, "exit-codes", "1", "exit codes crashing workloads exit with, comma-separated (one drawn at random)")
	f.StringVar(&cfg.StatusAddr, "status-addr", "", "serve the status as JSON on this loopback address (127.0.0.1:0 picks a port)")
	f.DurationVar(&cfg.KeepAlive, "keepalive", 30*time.Second, "the devices' MQTT keepalive")
	f.DurationVar(&cfg.Resync, "resync", 30*time.Second, "how often each device looks at its runtime unprompted")
	f.DurationVar(&cfg.Duration, "duration", 0, "stop after this long (default: until Ctrl-C or SIGTERM)")
	f.Uint64Var(&cfg.Seed, "seed", 1, "varies the devices' facts; the same seed describes the same fleet")
	f.StringVar(&agentLevel, "agent-log-level", "error", "log level of the simulated agents: debug, info, warn, error")
	return cmd
}

// readPlannerKeys reads a planner key file (protocol.ParseKeyList).
func readPlannerKeys(path string) ([]ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return protocol.ParseKeyList(path, data)
}
