package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/edged"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/internal/pki"
	"github.com/tether-edge/tether/internal/version"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/server"
)

type serveFlags struct {
	dataDir  string
	mqttAddr string
	wsAddr   string
	httpAddr string
}

func (f *serveFlags) register(cmd *cobra.Command, dataDirHelp string) {
	cmd.Flags().StringVar(&f.dataDir, "data-dir", "", dataDirHelp)
	cmd.Flags().StringVar(&f.mqttAddr, "mqtt-addr", "127.0.0.1:1883", "MQTT TCP listener (port 0 picks a free one)")
	cmd.Flags().StringVar(&f.wsAddr, "ws-addr", "127.0.0.1:1884", "MQTT over WebSocket listener for dashboards (empty disables)")
	cmd.Flags().StringVar(&f.httpAddr, "http-addr", "127.0.0.1:7070", "HTTP listener for /healthz (empty disables)")
}

// externalFlags are the server's settings for an external broker.
type externalFlags struct {
	username, password        string
	caFile, certFile, keyFile string
	dashboardWSPort           int
	dashboardWSTLS            bool
}

// embeddedOnly are the server flags that configure the embedded broker;
// externalOnly those that make sense only with --broker.
var (
	embeddedOnly = []string{"mqtt-addr", "ws-addr", "tls-cert", "tls-key", "tls-client-ca", "tls-host", "insecure-plaintext", "insecure-allow-anonymous"}
	externalOnly = []string{"broker-username", "broker-password", "broker-ca-file", "broker-cert-file", "broker-key-file", "dashboard-ws-port", "dashboard-ws-tls"}
)

// changedFlags are the flags among names given on the command line.
func changedFlags(cmd *cobra.Command, names []string) []string {
	var out []string
	for _, n := range names {
		if cmd.Flags().Changed(n) {
			out = append(out, "--"+n)
		}
	}
	return out
}

// config is the external broker --broker asks for; nil without --broker.
func (x externalFlags) config(cmd *cobra.Command, brokerURL string) (*server.ExternalBroker, error) {
	if !cmd.Flags().Changed("broker") {
		if set := changedFlags(cmd, externalOnly); len(set) > 0 {
			return nil, fmt.Errorf("%s: only with --broker (an external broker)", strings.Join(set, ", "))
		}
		return nil, nil
	}
	if set := changedFlags(cmd, embeddedOnly); len(set) > 0 {
		return nil, fmt.Errorf("%s: these configure the embedded broker, which --broker replaces; configure listeners and TLS on the external broker", strings.Join(set, ", "))
	}
	if !cmd.Flags().Changed("broker-password") {
		x.password = os.Getenv("TETHER_BROKER_PASSWORD")
	}
	ext := &server.ExternalBroker{URL: brokerURL, Username: x.username, Password: x.password,
		DashboardWSPort: x.dashboardWSPort, DashboardWSTLS: x.dashboardWSTLS}
	if x.caFile != "" || x.certFile != "" || x.keyFile != "" {
		var err error
		if ext.TLS, err = pki.ClientConfig(x.caFile, x.certFile, x.keyFile); err != nil {
			return nil, fmt.Errorf("--broker-ca-file/--broker-cert-file/--broker-key-file: %w", err)
		}
	}
	return ext, nil
}

func newServerCmd(g *globals) *cobra.Command {
	var f serveFlags
	var x externalFlags
	var insecure, plaintext bool
	var tlsCert, tlsKey, tlsClientCA string
	var tlsHosts []string
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the planner and the embedded broker (or use an external one: --broker)",
		Long: `Run the planner, its embedded MQTT broker, the dashboard and /healthz.

With --broker URL the planner uses that MQTT broker (Mosquitto, EMQX,
VerneMQ, HiveMQ, ...) instead of an embedded one. Credentials and topic ACLs
of devices, operators and viewers are then that broker's job, so identity
commands (tether acl, tether device add|revoke, tether enroll) are refused;
desired state is signed all the same. See docs/brokers.md.`,
		Example: `  # An external Mosquitto (deploy/mosquitto), the planner's password in TETHER_BROKER_PASSWORD:
  tether server --data-dir /var/lib/tether --broker mqtts://mqtt.example.net:8884 \
    --broker-username tether-planner --broker-ca-file /etc/tether/broker-ca.pem \
    --dashboard-ws-port 8083 --dashboard-ws-tls`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, topics, err := g.setup()
			if err != nil {
				return err
			}
			if f.dataDir == "" {
				return fmt.Errorf("--data-dir is required")
			}
			ext, err := x.config(cmd, g.broker)
			if err != nil {
				return err
			}
			if ext != nil {
				return runExternal(cmd, f, ext, topics, log)
			}
			if insecure {
				log.Warn().Msg("--insecure-allow-anonymous: any client that reaches the broker can run workloads on every device")
			}
			tlsCfg, caFile, err := serverTLS(f.dataDir, plaintext, tlsCert, tlsKey, tlsClientCA, tlsHosts)
			if err != nil {
				return err
			}
			if plaintext {
				log.Warn().Msg("--insecure-plaintext: credentials and desired state cross the network unencrypted")
			}
			srv, err := server.Start(cmd.Context(), server.Config{
				DataDir: f.dataDir, MQTTAddr: f.mqttAddr, WSAddr: f.wsAddr, HTTPAddr: f.httpAddr,
				InsecureAllowAnonymous: insecure, TLS: tlsCfg, Topics: topics, Log: log,
			})
			if err != nil {
				return err
			}
			printEndpoints(cmd, srv.Endpoints(), f.dataDir)
			out := cmd.OutOrStdout()
			if caFile != "" {
				fmt.Fprintf(out, "TLS CA:        %s (clients: --ca-file; device certificates: tether tls device ID --dir %s)\n", caFile, filepath.Dir(caFile))
			}
			fmt.Fprintf(out, "Planner key:   %s (pin it on devices: edged --planner-key-file)\n", filepath.Join(f.dataDir, server.PlannerKeyFile))
			if !insecure {
				if tf := filepath.Join(f.dataDir, server.OperatorTokenFile); fileExists(tf) {
					fmt.Fprintf(out, "Operator:      tether --token-file %s ... (the bootstrap operator token)\n", tf)
				}
				fmt.Fprintln(out, "Access:        every client needs an identity: tether acl token create, tether device add, tether enroll token create")
			}
			return serveUntilDone(cmd, srv)
		},
	}
	f.register(cmd, "where the planner and broker keep their data (required)")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "server certificate (PEM) for the MQTT and WebSocket listeners (default: one from a CA made in DATA-DIR/tls)")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "key of --tls-cert (PEM)")
	cmd.Flags().StringVar(&tlsClientCA, "tls-client-ca", "", "CA (PEM) whose client certificates authenticate devices by their common name (default with the made CA: that CA)")
	cmd.Flags().StringArrayVar(&tlsHosts, "tls-host", nil, "extra name or IP the made server certificate is valid for (repeatable)")
	cmd.Flags().BoolVar(&plaintext, "insecure-plaintext", false, "serve MQTT and WebSocket without TLS (trusted networks and tests only)")
	cmd.Flags().BoolVar(&insecure, "insecure-allow-anonymous", false, "let any client connect without credentials and use any topic (trusted networks and tests only)")
	cmd.Flags().StringVar(&x.username, "broker-username", "", "with --broker: the planner's username at the external broker")
	// The environment is read when the flag is not given, not as the flag's
	// default, which --help would print.
	cmd.Flags().StringVar(&x.password, "broker-password", "", "with --broker: the planner's password at the external broker (env TETHER_BROKER_PASSWORD)")
	cmd.Flags().StringVar(&x.caFile, "broker-ca-file", "", "with --broker: CA (PEM) to check a mqtts:// or wss:// broker against (default: the system's roots)")
	cmd.Flags().StringVar(&x.certFile, "broker-cert-file", "", "with --broker: the planner's client certificate (PEM), for brokers that take them")
	cmd.Flags().StringVar(&x.keyFile, "broker-key-file", "", "with --broker: key of --broker-cert-file (PEM)")
	cmd.Flags().IntVar(&x.dashboardWSPort, "dashboard-ws-port", 0, "with --broker: port of the broker's MQTT-over-WebSocket listener for the dashboard (0: the page says there is none)")
	cmd.Flags().BoolVar(&x.dashboardWSTLS, "dashboard-ws-tls", false, "with --broker: that WebSocket listener speaks TLS (wss://)")
	return cmd
}

// runExternal is tether server --broker: the planner against a broker it
// does not run.
func runExternal(cmd *cobra.Command, f serveFlags, ext *server.ExternalBroker, topics protocol.Topics, log zerolog.Logger) error {
	srv, err := server.Start(cmd.Context(), server.Config{
		DataDir: f.dataDir, HTTPAddr: f.httpAddr, External: ext, Topics: topics, Log: log,
	})
	if err != nil {
		return err
	}
	printEndpoints(cmd, srv.Endpoints(), f.dataDir)
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "Planner key:   %s (pin it on devices: edged --planner-key-file)\n", filepath.Join(f.dataDir, server.PlannerKeyFile))
	fmt.Fprintln(out, "Access:        external broker: devices, operators and viewers authenticate there, with its ACLs (docs/brokers.md)")
	return serveUntilDone(cmd, srv)
}

// serveUntilDone waits for the end of the command or of the planner, then
// closes the server.
func serveUntilDone(cmd *cobra.Command, srv *server.Server) error {
	select {
	case <-cmd.Context().Done():
	case <-srv.Done():
	}
	perr := srv.Err()
	return errors.Join(perr, srv.Close())
}

func printEndpoints(cmd *cobra.Command, ep server.Endpoints, dataDir string) {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "MQTT broker:   %s\n", ep.MQTTURL())
	if ep.External != "" {
		fmt.Fprintln(out, "Broker:        external (no embedded broker)")
	}
	if ep.WS != "" {
		scheme := "ws"
		if ep.WSTLS {
			scheme = "wss"
		}
		fmt.Fprintf(out, "WebSocket:     %s://%s\n", scheme, ep.WS)
	}
	if ep.HTTP != "" {
		fmt.Fprintf(out, "Dashboard:     http://%s/\n", ep.HTTP)
		fmt.Fprintf(out, "Health:        http://%s/healthz\n", ep.HTTP)
	}
	fmt.Fprintf(out, "Data dir:      %s\n", dataDir)
}

func newDevCmd(g *globals) *cobra.Command {
	var f serveFlags
	var deviceID, podmanSocket string
	var labels []string
	var noEdged bool
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a server, its embedded broker and a local edged, with no configuration",
		Long: `Run everything on this machine for trying Tether out: the planner, the
embedded broker (anonymous access from loopback only) and an edged for this
machine. Data goes to a new temporary directory unless --data-dir is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, topics, err := g.setup()
			if err != nil {
				return err
			}
			lbls, err := cli.ParseLabels(labels)
			if err != nil {
				return err
			}
			if err := protocol.ValidateID(deviceID); err != nil {
				return fmt.Errorf("--device-id: %w", err)
			}
			if f.dataDir == "" {
				if f.dataDir, err = os.MkdirTemp("", "tether-dev-"); err != nil {
					return err
				}
			}
			srv, err := server.Start(cmd.Context(), server.Config{
				DataDir: filepath.Join(f.dataDir, "server"), MQTTAddr: f.mqttAddr, WSAddr: f.wsAddr, HTTPAddr: f.httpAddr,
				Dev: true, Topics: topics, Log: log,
			})
			if err != nil {
				return err
			}
			ep := srv.Endpoints()
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, "Tether dev is running.")
			printEndpoints(cmd, ep, f.dataDir)
			done := make(chan error, 1)
			if noEdged {
				done <- nil
			} else {
				fmt.Fprintf(out, "Local device:  %s\n", deviceID)
				go func() {
					done <- edged.RunDaemon(cmd.Context(), edged.DaemonConfig{
						Config: edged.Config{
							DeviceID: deviceID, Brokers: []string{ep.MQTTURL()}, DataDir: filepath.Join(f.dataDir, "edged"),
							Labels: lbls, Topics: topics, Version: version.String(), Resync: 5 * time.Second, PlannerKeys: srv.PlannerKeys(),
							Log: log.With().Str("part", "edged").Logger(),
						},
						PodmanSocket: podmanSocket,
					})
				}()
			}
			try := "tether job run deploy/examples/hello.yaml"
			if ep.MQTTURL() != "mqtt://127.0.0.1:1883" {
				try = "tether --broker " + ep.MQTTURL() + " job run deploy/examples/hello.yaml"
			}
			fmt.Fprintf(out, "Try:           %s\n", try)
			fmt.Fprintln(out, "Stop with Ctrl-C.")
			var edErr error
			select {
			case <-cmd.Context().Done():
				edErr = <-done
			case edErr = <-done:
				if edErr == nil && !noEdged && cmd.Context().Err() == nil {
					edErr = errors.New("the local edged stopped")
				}
				if noEdged {
					select {
					case <-cmd.Context().Done():
					case <-srv.Done():
					}
				}
			case <-srv.Done():
			}
			return errors.Join(srv.Err(), edErr, srv.Close())
		},
	}
	f.register(cmd, "where to keep data (default: a new temporary directory)")
	cmd.Flags().StringVar(&deviceID, "device-id", "local", "device id of the local edged")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label of the local device, KEY=VALUE (repeatable)")
	cmd.Flags().StringVar(&podmanSocket, "podman-socket", "", "Podman API socket for the local edged (default: CONTAINER_HOST, else start one)")
	cmd.Flags().BoolVar(&noEdged, "no-edged", false, "do not run a local edged")
	return cmd
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// serverTLS returns the listeners' TLS config: from the given files, or from
// a CA and server certificate made (once) in dataDir/tls; caFile is that CA
// when one was made.
func serverTLS(dataDir string, plaintext bool, cert, key, clientCA string, hosts []string) (*tls.Config, string, error) {
	given := cert != "" || key != "" || clientCA != "" || len(hosts) > 0
	switch {
	case plaintext && given:
		return nil, "", errors.New("--insecure-plaintext: leave out --tls-cert, --tls-key, --tls-client-ca and --tls-host")
	case plaintext:
		return nil, "", nil
	case (cert == "") != (key == ""):
		return nil, "", errors.New("--tls-cert and --tls-key go together")
	case cert != "":
		cfg, err := pki.ServerConfig(cert, key, clientCA)
		return cfg, "", err
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	files, err := pki.Init(filepath.Join(dataDir, "tls"), hosts)
	if err != nil {
		return nil, "", err
	}
	if clientCA == "" {
		clientCA = files.CACert
	}
	cfg, err := pki.ServerConfig(files.ServerCert, files.ServerKey, clientCA)
	return cfg, files.CACert, err
}
