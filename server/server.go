package server

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/dashboard"
	"github.com/tether-edge/tether/identity"
	"github.com/tether-edge/tether/planner"
	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// Config of a server.
type Config struct {
	DataDir  string
	MQTTAddr string
	WSAddr   string // "" disables the WebSocket listener
	HTTPAddr string // "" disables the HTTP listener
	// Dev lets clients without credentials in from loopback addresses.
	Dev bool
	// InsecureAllowAnonymous lets anyone in without credentials.
	InsecureAllowAnonymous bool
	// TLS, when set, secures the MQTT and WebSocket listeners.
	TLS *tls.Config
	// External, when set, runs the planner against that broker instead of
	// an embedded one; MQTTAddr, WSAddr, Dev, InsecureAllowAnonymous and
	// TLS must then be left empty, as they configure the embedded broker.
	External *ExternalBroker
	Topics   protocol.Topics
	Log      zerolog.Logger
}

// ExternalBroker is a broker the server does not run (Mosquitto, EMQX,
// VerneMQ, HiveMQ, ...). Credentials and topic ACLs of every client are
// that broker's job, so the server keeps no identities: its admin topics
// answer identity operations with errExternalBroker. Desired state is
// signed all the same.
type ExternalBroker struct {
	// URL of the broker: mqtt://, mqtts://, ws:// or wss:// (see
	// bus.NormalizeURL).
	URL string
	// Username and Password of the planner's own connection, which needs
	// read and write access to everything under the topic root.
	Username, Password string
	// TLS for a mqtts:// or wss:// URL (see internal/pki.ClientConfig);
	// nil checks the broker against the system's roots.
	TLS *tls.Config
	// DashboardWSPort is the port of the broker's MQTT-over-WebSocket
	// listener that the dashboard page connects to (on the host the page
	// was loaded from); 0 makes the page say there is none.
	// DashboardWSTLS says that listener speaks TLS (wss://).
	DashboardWSPort int
	DashboardWSTLS  bool
}

// errExternalBroker answers the admin operations that manage identities
// on a server whose broker is external.
var errExternalBroker = errors.New("this server uses an external broker: manage credentials and ACLs there, see docs/brokers.md")

// Files a server writes into its data dir for the people and devices that
// use it.
const (
	// PlannerKeyFile holds the planner's public keys, one base64 line each,
	// the current one last: what edged pins (--planner-key-file).
	PlannerKeyFile = "planner-key.pub"
	// OperatorTokenFile holds the bootstrap operator token a secure server
	// creates on its first start, readable by its owner only.
	OperatorTokenFile = "operator.token"
)

// secure reports whether the server authenticates every client by
// identity (the default of tether server).
func (c Config) secure() bool { return !c.Dev && !c.InsecureAllowAnonymous }

// check rejects settings of the embedded broker given together with an
// external one: they would silently do nothing.
func (c Config) check() error {
	if c.External == nil {
		return nil
	}
	var set []string
	for _, f := range []struct {
		name string
		on   bool
	}{
		{"MQTTAddr", c.MQTTAddr != ""}, {"WSAddr", c.WSAddr != ""}, {"Dev", c.Dev},
		{"InsecureAllowAnonymous", c.InsecureAllowAnonymous}, {"TLS", c.TLS != nil},
	} {
		if f.on {
			set = append(set, f.name)
		}
	}
	if len(set) > 0 {
		return fmt.Errorf("external broker: %s configure the embedded broker; leave them out", strings.Join(set, ", "))
	}
	if c.External.URL == "" {
		return errors.New("external broker: URL required")
	}
	if _, err := bus.NormalizeURL(c.External.URL); err != nil {
		return fmt.Errorf("external broker: %w", err)
	}
	if p := c.External.DashboardWSPort; p < 0 || p > 65535 {
		return fmt.Errorf("external broker: dashboard WebSocket port %d: want 0-65535", p)
	}
	return nil
}

// Endpoints are the addresses a started server listens on, or with an
// external broker the addresses of that broker.
type Endpoints struct {
	MQTT string `json:"mqtt"` // host:port
	WS   string `json:"ws,omitempty"`
	HTTP string `json:"http,omitempty"`
	TLS  bool   `json:"tls,omitempty"`
	// WSTLS says the WebSocket listener speaks TLS (wss://).
	WSTLS bool `json:"ws_tls,omitempty"`
	// External is the external broker's URL, without credentials; "" with
	// the embedded broker.
	External string `json:"external,omitempty"`
}

// MQTTURL is the broker URL clients should use.
func (e Endpoints) MQTTURL() string {
	switch {
	case e.External != "":
		return e.External
	case e.TLS:
		return "mqtts://" + e.MQTT
	}
	return "mqtt://" + e.MQTT
}

// Server is a started server.
type Server struct {
	cfg       Config
	log       zerolog.Logger
	broker    *broker.Broker
	store     *store.Store
	client    plannerConn
	http      *http.Server
	httpLn    net.Listener
	endpoints Endpoints
	registry  *identity.Registry
	cancel    context.CancelFunc
	done      chan struct{} // closed when the planner stops
	err       error         // why it stopped; read after done is closed
}

// Start opens the store, starts the broker (unless cfg.External names
// one) and the planner, and returns once all listen and the planner is
// connected.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("data dir: required")
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Log, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			s.shutdown()
		}
	}()
	st, err := store.Open(filepath.Join(cfg.DataDir, "planner.db"))
	if err != nil {
		return nil, err
	}
	s.store = st
	if s.registry, err = identity.Open(st, nil); err != nil {
		return nil, err
	}
	if err := s.registry.EnsureSigningKey(); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if err := s.writePlannerKeys(); err != nil {
		return nil, err
	}
	client, err := s.startBroker(ctx)
	if err != nil {
		return nil, err
	}
	s.client = client

	if cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("http listener %s: %w", cfg.HTTPAddr, err)
		}
		s.httpLn = ln
		s.endpoints.HTTP = ln.Addr().String()
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz", s.healthz)
		wsPort := 0 // the page says there is no WebSocket listener
		if ws := s.endpoints.WS; ws != "" {
			_, port, _ := net.SplitHostPort(ws)
			wsPort, _ = strconv.Atoi(port)
		}
		mux.Handle("/", dashboard.Handler(dashboard.Config{WSPort: wsPort, WSTLS: s.endpoints.WSTLS, TopicRoot: cfg.Topics.Root}))
		s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = s.http.Serve(ln) }()
	}

	p := planner.New(planner.Config{
		Bus:    client,
		Store:  st,
		Topics: cfg.Topics,
		Log:    cfg.Log.With().Str("part", "planner").Logger(),
		Sign:   s.registry.Sign,
	})
	pctx, pcancel := context.WithCancel(context.Background())
	s.cancel = pcancel
	adm := &admin{reg: s.registry, bus: client, topics: cfg.Topics, keysChanged: s.writePlannerKeys, external: cfg.External != nil,
		log: cfg.Log.With().Str("part", "admin").Logger()}
	if err := adm.start(pctx); err != nil {
		return nil, fmt.Errorf("admin topics: %w", err)
	}
	go func() {
		s.err = p.Run(pctx)
		if s.err != nil {
			s.log.Error().Err(s.err).Msg("planner stopped")
		}
		close(s.done)
	}()
	ok = true
	s.log.Info().Str("mqtt", s.endpoints.MQTT).Str("ws", s.endpoints.WS).Str("http", s.endpoints.HTTP).Msg("server listening")
	return s, nil
}

// startBroker starts the embedded broker and returns the planner's inline
// client of it, or connects the planner to the external broker.
func (s *Server) startBroker(ctx context.Context) (plannerConn, error) {
	cfg := s.cfg
	if ext := cfg.External; ext != nil {
		s.endpoints = externalEndpoints(*ext)
		s.log.Info().Str("broker", s.endpoints.External).Msg("using an external broker: no embedded broker, no identities")
		dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		c, err := bus.Dial(dctx, bus.Config{
			Brokers: []string{ext.URL}, TLS: ext.TLS, Username: ext.Username, Password: ext.Password,
			ClientID:     bus.RandomID("tether-planner-"),
			CleanSession: true, // everything the planner needs is retained or in its store
			Log:          cfg.Log.With().Str("part", "planner-mqtt").Logger(),
		})
		if err != nil {
			return nil, fmt.Errorf("planner connect to the external broker: %w", err)
		}
		return c, nil
	}
	bcfg := broker.Config{
		DataDir:  filepath.Join(cfg.DataDir, "broker"),
		MQTTAddr: cfg.MQTTAddr,
		WSAddr:   cfg.WSAddr,
		TLS:      cfg.TLS,
		Log:      cfg.Log.With().Str("part", "broker").Logger(),
		// The planner publishes inline: these apply to network clients.
		Retainable: func(_ broker.Peer, topic string) bool { return cfg.Topics.Retainable(topic) },
	}
	if cfg.secure() {
		bcfg.Authenticator = identity.NewAuthenticator(s.registry, cfg.Topics, cfg.Log.With().Str("part", "acl").Logger())
		// Floods are bounded per identity; dev and anonymous servers have
		// none to bound (and load tests publish fast through them).
		limit := broker.DefaultPublishLimit
		bcfg.PublishLimit = &limit
		if err := s.bootstrapOperator(); err != nil {
			return nil, err
		}
	} else {
		bcfg.AllowAnonymousLoopback = cfg.Dev
		bcfg.AllowAnonymous = cfg.InsecureAllowAnonymous
	}
	b, err := broker.New(bcfg)
	if err != nil {
		return nil, err
	}
	s.broker = b
	s.registry.OnRevoke = func(p protocol.Principal) {
		n := b.Disconnect(func(peer broker.Peer) bool {
			switch p.Role {
			case protocol.RoleDevice:
				return peer.Username == p.Name || peer.CertCommonName == p.Name || peer.ClientID == p.Name
			default:
				return peer.Username == protocol.TokenUsername(p.Name)
			}
		})
		s.log.Info().Str("role", string(p.Role)).Str("principal", p.Name).Int("disconnected", n).Msg("revoked")
	}
	if err := b.Start(); err != nil {
		return nil, err
	}
	s.endpoints = Endpoints{MQTT: b.MQTTAddr(), WS: b.WSAddr(), TLS: cfg.TLS != nil, WSTLS: cfg.TLS != nil}
	return bus.NewInline(b), nil
}

// plannerConn is how the planner and the admin topics reach the broker: the
// embedded broker's inline client, or a network client of an external one.
type plannerConn interface {
	planner.Bus
	IsConnected() bool
	Close()
}

// externalEndpoints describes an external broker (its URL already
// checked by Config.check) as Endpoints, without any credentials the URL
// may carry.
func externalEndpoints(ext ExternalBroker) Endpoints {
	raw := ext.URL
	if !strings.Contains(raw, "://") {
		raw = "mqtt://" + raw
	}
	u, _ := url.Parse(raw)
	u.User = nil
	norm, _ := bus.NormalizeURL(raw)
	ep := Endpoints{MQTT: u.Host, External: u.String(), WSTLS: ext.DashboardWSTLS,
		TLS: strings.HasPrefix(norm, "ssl://") || strings.HasPrefix(norm, "wss://")}
	if ext.DashboardWSPort > 0 {
		ep.WS = net.JoinHostPort(u.Hostname(), strconv.Itoa(ext.DashboardWSPort))
	}
	return ep
}

// PlannerKeys returns the planner's public keys, the current one last.
func (s *Server) PlannerKeys() []ed25519.PublicKey { return s.registry.PublicKeys() }

// writePlannerKeys writes PlannerKeyFile.
func (s *Server) writePlannerKeys() error {
	var b strings.Builder
	b.WriteString("# Tether planner public keys (ed25519, base64), the current one last.\n")
	for _, k := range s.registry.PublicKeys() {
		b.WriteString(protocol.EncodeKey(k) + "\n")
	}
	return writeFileAtomic(filepath.Join(s.cfg.DataDir, PlannerKeyFile), []byte(b.String()), 0o644)
}

// bootstrapOperator makes the first operator token of a secure server, so
// that somebody can manage it, and writes it to OperatorTokenFile. Once an
// operator token exists nothing is created; revoking every operator token
// makes the next start create a new one.
func (s *Server) bootstrapOperator() error {
	if s.registry.HasOperator() {
		return nil
	}
	tok, _, err := s.registry.CreateToken(protocol.RoleOperator, "bootstrap", 0)
	if err != nil {
		return fmt.Errorf("bootstrap operator token: %w", err)
	}
	path := filepath.Join(s.cfg.DataDir, OperatorTokenFile)
	if err := writeFileAtomic(path, []byte(tok.String()+"\n"), 0o600); err != nil {
		return fmt.Errorf("bootstrap operator token: %w", err)
	}
	s.log.Info().Str("file", path).Str("token_id", tok.ID).Msg("created the bootstrap operator token")
	return nil
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Endpoints returns where the server listens.
func (s *Server) Endpoints() Endpoints { return s.endpoints }

// Done is closed when the planner stops: after Close, or because it
// failed (see Err).
func (s *Server) Done() <-chan struct{} { return s.done }

// Err says why the planner stopped; nil while it runs and after Close.
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

func (s *Server) plannerRunning() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	ok := s.client != nil && s.client.IsConnected() && s.plannerRunning()
	w.Header().Set("Content-Type", "application/json")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"ok": ok, "mqtt": s.endpoints.MQTT, "ws": s.endpoints.WS})
}

// Close stops the planner, the broker and the store.
func (s *Server) Close() error {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	return s.shutdown()
}

func (s *Server) shutdown() error {
	var errs []error
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.http.Shutdown(ctx)
		cancel()
	}
	if s.client != nil {
		s.client.Close()
	}
	if s.broker != nil {
		errs = append(errs, s.broker.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	return errors.Join(errs...)
}
