// Command edged is Tether's edge daemon: `edged run` on each device.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/edged"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/internal/version"
	"github.com/tether-edge/tether/protocol"
	"sigs.k8s.io/yaml"
)

// fileConfig is the optional config file (YAML or JSON). Flags given on the
// command line win over it.
type fileConfig struct {
	DeviceID     string            `json:"device_id"`
	Brokers      []string          `json:"brokers"`
	Username     string            `json:"username"`
	Password     string            `json:"password"`
	DataDir      string            `json:"data_dir"`
	Labels       map[string]string `json:"labels"`
	PodmanSocket string            `json:"podman_socket"`
	TopicRoot    string            `json:"topic_root"`
	LogLevel     string            `json:"log_level"`
	CPUMHz       int               `json:"cpu_mhz"`
	MemoryMB     int               `json:"memory_mb"`
	// KeepAlive is a Go duration ("30s"); a dead link is noticed within
	// about 1.5 to 2 times it.
	KeepAlive string `json:"keepalive"`
	// PlannerKeys are the planner's public keys (standard base64);
	// PlannerKeyFile a file with one per line.
	PlannerKeys    []string `json:"planner_keys"`
	PlannerKeyFile string   `json:"planner_key_file"`
	// EnrollToken ("<id>.<secret>") or EnrollTokenFile enrolls the device
	// on its first start.
	EnrollToken     string `json:"enroll_token"`
	EnrollTokenFile string `json:"enroll_token_file"`
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "edged",
		Short:         "Tether's edge daemon",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd())
	return root
}

func newRunCmd() *cobra.Command {
	var (
		fc         fileConfig
		configFile string
		labels     []string
		logFormat  string
		noPodman   bool
		fakeRT     bool
		keepAlive  time.Duration
		clockSkew  time.Duration
		unsigned   bool
	)
	fc.LogLevel = "info"
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the edge daemon",
		Long: `Connect to the broker as this device, apply the desired state published for
it, and report what runs. Works offline: the last desired state is kept in
the data dir and applied at start, with or without a broker.`,
		Example: `  # A device with credentials of its own (password in TETHER_PASSWORD), and
  # the planner's public key (the server writes it to planner-key.pub in its
  # data dir): only desired state the planner signed is applied.
  edged run --device-id pi-07 --broker mqtt://10.0.0.2:1883 --data-dir /var/lib/edged \
    --username pi-07 --planner-key-file /etc/edged/planner-key.pub --label site=berlin

  # Firmware with a fleet enrollment token: on its first start the device
  # obtains its own credentials, labels and the planner's keys, once.
  edged run --device-id "$(hostname)" --broker mqtt://10.0.0.2:1883 --data-dir /var/lib/edged \
    --enroll-token-file /etc/edged/enroll-token

  # A second device for 'tether dev --data-dir /tmp/td' on the same machine:
  edged run --device-id dev-2 --data-dir /tmp/edged-2 --planner-key-file /tmp/td/server/planner-key.pub`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var fileKeys, fileToken bool
			if configFile != "" {
				raw, err := os.ReadFile(configFile)
				if err != nil {
					return err
				}
				var file fileConfig
				if err := yaml.UnmarshalStrict(raw, &file); err != nil {
					return fmt.Errorf("config %s: %w", configFile, err)
				}
				merge(&fc, file, cmd)
				fileKeys = !cmd.Flags().Changed("planner-key") && len(file.PlannerKeys) > 0
				fileToken = !cmd.Flags().Changed("enroll-token") && !cmd.Flags().Changed("enroll-token-file") && file.EnrollToken != ""
			}
			if env := os.Getenv("TETHER_BROKER"); env != "" && !cmd.Flags().Changed("broker") && len(fc.Brokers) == 0 {
				fc.Brokers = []string{env}
			}
			if len(fc.Brokers) == 0 {
				fc.Brokers = []string{"mqtt://127.0.0.1:1883"}
			}
			flagLabels, err := cli.ParseLabels(labels)
			if err != nil {
				return err
			}
			if fc.Labels == nil {
				fc.Labels = map[string]string{}
			}
			for k, v := range flagLabels {
				fc.Labels[k] = v
			}
			if fc.KeepAlive != "" && !cmd.Flags().Changed("keepalive") {
				d, err := time.ParseDuration(fc.KeepAlive)
				if err != nil {
					return fmt.Errorf("config %s: keepalive: %w", configFile, err)
				}
				keepAlive = d
			}
			var errs []error
			if fc.DeviceID == "" {
				errs = append(errs, errors.New("--device-id (or device_id in the config file) is required"))
			} else if err := protocol.ValidateID(fc.DeviceID); err != nil {
				errs = append(errs, fmt.Errorf("--device-id: %w", err))
			}
			if fc.DataDir == "" {
				errs = append(errs, errors.New("--data-dir (or data_dir in the config file) is required"))
			}
			topics, err := protocol.NewTopics(fc.TopicRoot)
			if err != nil {
				errs = append(errs, err)
			}
			ts := trustSettings{Keys: fc.PlannerKeys, KeysFrom: "--planner-key", KeyFile: fc.PlannerKeyFile,
				Token: fc.EnrollToken, TokenFrom: "--enroll-token", TokenFile: fc.EnrollTokenFile}
			switch {
			case cmd.Flags().Changed("planner-key"):
			case fileKeys:
				ts.KeysFrom = "planner_keys in " + configFile
			case len(ts.Keys) > 0:
				ts.KeysFrom = "TETHER_PLANNER_KEY"
			}
			if !cmd.Flags().Changed("enroll-token") {
				switch {
				case fileToken:
					ts.TokenFrom = "enroll_token in " + configFile
				case ts.Token != "":
					ts.TokenFrom = "TETHER_ENROLL_TOKEN"
				}
			}
			tr, err := ts.load()
			if err != nil {
				errs = append(errs, err)
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			log, err := cli.NewLogger(os.Stderr, fc.LogLevel, logFormat)
			if err != nil {
				return err
			}
			return edged.RunDaemon(cmd.Context(), edged.DaemonConfig{
				Config: edged.Config{
					DeviceID: fc.DeviceID, Brokers: fc.Brokers, Username: fc.Username, Password: fc.Password,
					DataDir: fc.DataDir, Labels: fc.Labels, Topics: topics, Version: version.String(),
					CPUMHz: fc.CPUMHz, MemoryMB: fc.MemoryMB, Resync: 10 * time.Second, Log: log,
					KeepAlive: keepAlive, ClockOffset: clockSkew,
					PlannerKeys: tr.keys, EnrollToken: tr.token, AcceptUnsigned: unsigned,
				},
				PodmanSocket:  fc.PodmanSocket,
				DisablePodman: noPodman,
				FakeRuntime:   fakeRT,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "config file (YAML or JSON) with the same settings; flags win")
	f.StringVar(&fc.DeviceID, "device-id", "", "this device's id, also its MQTT client id")
	f.StringArrayVar(&fc.Brokers, "broker", nil, "broker URL; repeat for failover (env TETHER_BROKER; default mqtt://127.0.0.1:1883)")
	f.StringVar(&fc.Username, "username", os.Getenv("TETHER_USERNAME"), "broker username (env TETHER_USERNAME)")
	f.StringVar(&fc.Password, "password", os.Getenv("TETHER_PASSWORD"), "broker password (env TETHER_PASSWORD)")
	f.StringVar(&fc.DataDir, "data-dir", "", "where edged keeps its state")
	f.StringArrayVar(&labels, "label", nil, "device label KEY=VALUE (repeatable)")
	f.StringVar(&fc.PodmanSocket, "podman-socket", "", "Podman API socket, unix:///path (default: CONTAINER_HOST, else start one)")
	f.BoolVar(&noPodman, "no-podman", false, "run exec tasks only")
	f.StringVar(&fc.TopicRoot, "topic-root", protocol.DefaultRoot, "first topic level")
	f.StringVar(&fc.LogLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&logFormat, "log-format", "console", "log format: console or json")
	f.DurationVar(&keepAlive, "keepalive", 30*time.Second, "MQTT keepalive; a dead or half-open link is noticed within about 1.5-2 times it")
	f.BoolVar(&fakeRT, "fake-runtime", false, "simulate tasks in memory instead of running them (tests, simulators)")
	f.DurationVar(&clockSkew, "clock-offset", 0, "add this to every published timestamp (tests of a device whose clock is off)")
	_ = f.MarkHidden("fake-runtime")
	_ = f.MarkHidden("clock-offset")
	f.IntVar(&fc.CPUMHz, "cpu-mhz", 0, "CPU capacity to offer in MHz (default: what the system reports)")
	f.IntVar(&fc.MemoryMB, "memory-mb", 0, "memory to offer in MB (default: what the system reports)")
	f.StringArrayVar(&fc.PlannerKeys, "planner-key", envKeys(os.Getenv("TETHER_PLANNER_KEY")),
		"the planner's public key, standard base64; only desired state it signed is applied (repeatable; env TETHER_PLANNER_KEY)")
	f.StringVar(&fc.PlannerKeyFile, "planner-key-file", "", "file with the planner's public keys, one standard-base64 key per line, '#' comments (the server writes planner-key.pub in its data dir)")
	f.StringVar(&fc.EnrollToken, "enroll-token", os.Getenv("TETHER_ENROLL_TOKEN"), "fleet enrollment token <id>.<secret>: used once, on the first start, to obtain this device's credentials (env TETHER_ENROLL_TOKEN)")
	f.StringVar(&fc.EnrollTokenFile, "enroll-token-file", "", "file holding the fleet enrollment token (instead of --enroll-token)")
	f.BoolVar(&unsigned, "insecure-accept-unsigned", false, "INSECURE: also apply desired state that carries no signature (signed state must still verify)")
	return cmd
}

// merge fills fields of dst that were not given as flags from the file.
func merge(dst *fileConfig, file fileConfig, cmd *cobra.Command) {
	set := func(flag string) bool { return cmd.Flags().Changed(flag) }
	if !set("device-id") && file.DeviceID != "" {
		dst.DeviceID = file.DeviceID
	}
	if !set("broker") && len(file.Brokers) > 0 {
		dst.Brokers = file.Brokers
	}
	if !set("username") && file.Username != "" {
		dst.Username = file.Username
	}
	if !set("password") && file.Password != "" {
		dst.Password = file.Password
	}
	if !set("data-dir") && file.DataDir != "" {
		dst.DataDir = file.DataDir
	}
	if !set("podman-socket") && file.PodmanSocket != "" {
		dst.PodmanSocket = file.PodmanSocket
	}
	if !set("topic-root") && file.TopicRoot != "" {
		dst.TopicRoot = file.TopicRoot
	}
	if !set("log-level") && file.LogLevel != "" {
		dst.LogLevel = file.LogLevel
	}
	if !set("cpu-mhz") && file.CPUMHz > 0 {
		dst.CPUMHz = file.CPUMHz
	}
	if !set("memory-mb") && file.MemoryMB > 0 {
		dst.MemoryMB = file.MemoryMB
	}
	if len(file.Labels) > 0 {
		dst.Labels = file.Labels
	}
	if !set("planner-key") && len(file.PlannerKeys) > 0 {
		dst.PlannerKeys = file.PlannerKeys
	}
	if !set("planner-key-file") && file.PlannerKeyFile != "" {
		dst.PlannerKeyFile = file.PlannerKeyFile
	}
	// A token on the command line, in either form, wins over both forms
	// in the file.
	if !set("enroll-token") && !set("enroll-token-file") {
		if file.EnrollToken != "" {
			dst.EnrollToken = file.EnrollToken
		}
		if file.EnrollTokenFile != "" {
			dst.EnrollTokenFile = file.EnrollTokenFile
		}
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
