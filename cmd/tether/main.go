// Command tether is the operator's tool and the server: `tether dev`,
// `tether server`, `tether job ...` and `tether device ...`.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/internal/pki"
	"github.com/tether-edge/tether/internal/version"
	"github.com/tether-edge/tether/protocol"
)

// globals are the flags every subcommand shares.
type globals struct {
	broker    string
	topicRoot string
	logLevel  string
	logFormat string
	username  string
	password  string
	token     string
	tokenFile string
	caFile    string
	certFile  string
	keyFile   string
}

// tlsConfig is the client TLS the flags ask for; nil when none is given
// (a mqtts:// broker is then checked against the system's roots).
func (g *globals) tlsConfig() (*tls.Config, error) {
	if g.caFile == "" && g.certFile == "" && g.keyFile == "" {
		return nil, nil
	}
	return pki.ClientConfig(g.caFile, g.certFile, g.keyFile)
}

// credentials resolves --token/--token-file against --username/--password:
// the MQTT username, password and client id prefix to use, and the token id
// admin requests go out under ("dev" without a token: only a dev server
// lets such a client in).
func (g *globals) credentials() (user, pass, clientPrefix, principal string, err error) {
	raw := g.token
	if raw == "" && g.tokenFile != "" {
		b, err := os.ReadFile(g.tokenFile)
		if err != nil {
			return "", "", "", "", fmt.Errorf("--token-file: %w", err)
		}
		raw = string(b)
	}
	if raw == "" {
		return g.username, g.password, "tether-cli-", "dev", nil
	}
	if g.username != "" || g.password != "" {
		return "", "", "", "", errors.New("give either --token/--token-file or --username/--password, not both")
	}
	tok, err := protocol.ParseToken(raw)
	if err != nil {
		return "", "", "", "", fmt.Errorf("--token: %w", err)
	}
	user = protocol.TokenUsername(tok.ID)
	return user, tok.Secret, user + "/cli-", tok.ID, nil
}

func (g *globals) logger() (zerolog.Logger, error) {
	return cli.NewLogger(os.Stderr, g.logLevel, g.logFormat)
}

func (g *globals) topics() (protocol.Topics, error) {
	return protocol.NewTopics(g.topicRoot)
}

// setup returns the logger and topics the flags ask for.
func (g *globals) setup() (zerolog.Logger, protocol.Topics, error) {
	log, err := g.logger()
	if err != nil {
		return log, protocol.Topics{}, err
	}
	topics, err := g.topics()
	return log, topics, err
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "tether",
		Short:         "Tether: an MQTT-native orchestrator for fleets of edge devices",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.broker, "broker", envOr("TETHER_BROKER", "mqtt://127.0.0.1:1883"), "broker URL (env TETHER_BROKER)")
	pf.StringVar(&g.topicRoot, "topic-root", envOr("TETHER_TOPIC_ROOT", protocol.DefaultRoot), "first topic level (env TETHER_TOPIC_ROOT)")
	pf.StringVar(&g.username, "username", os.Getenv("TETHER_USERNAME"), "broker username (env TETHER_USERNAME)")
	pf.StringVar(&g.password, "password", os.Getenv("TETHER_PASSWORD"), "broker password (env TETHER_PASSWORD)")
	pf.StringVar(&g.token, "token", os.Getenv("TETHER_TOKEN"), "operator or viewer token, <id>.<secret> (env TETHER_TOKEN)")
	pf.StringVar(&g.tokenFile, "token-file", os.Getenv("TETHER_TOKEN_FILE"), "file holding the token, e.g. a server's operator.token (env TETHER_TOKEN_FILE)")
	pf.StringVar(&g.caFile, "ca-file", os.Getenv("TETHER_CA_FILE"), "CA (PEM) to check a mqtts:// or wss:// broker against (env TETHER_CA_FILE)")
	pf.StringVar(&g.certFile, "cert-file", os.Getenv("TETHER_CERT_FILE"), "client certificate (PEM), for brokers that take them (env TETHER_CERT_FILE)")
	pf.StringVar(&g.keyFile, "key-file", os.Getenv("TETHER_KEY_FILE"), "key of --cert-file (env TETHER_KEY_FILE)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.StringVar(&g.logFormat, "log-format", "console", "log format: console or json")
	root.AddCommand(newDevCmd(g), newServerCmd(g), newJobCmd(g), newDeviceCmd(g), newACLCmd(g), newEnrollCmd(g), newKeysCmd(g), newTLSCmd(), newSimCmd(g))
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee cli.ExitError
		if errors.As(err, &ee) {
			os.Exit(ee.Code)
		}
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
