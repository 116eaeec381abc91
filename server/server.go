package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/dashboard"
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
	Topics                 protocol.Topics
	Log                    zerolog.Logger
}

// Endpoints are the addresses a started server listens on.
type Endpoints struct {
	MQTT string `json:"mqtt"` // host:port
	WS   string `json:"ws,omitempty"`
	HTTP string `json:"http,omitempty"`
}

// MQTTURL is the broker URL clients should use.
func (e Endpoints) MQTTURL() string { return "mqtt://" + e.MQTT }

// Server is a started server.
type Server struct {
	cfg       Config
	log       zerolog.Logger
	broker    *broker.Broker
	store     *store.Store
	client    *bus.Client
	http      *http.Server
	httpLn    net.Listener
	endpoints Endpoints
	cancel    context.CancelFunc
	done      chan struct{} // closed when the planner stops
	err       error         // why it stopped; read after done is closed
}

const plannerUser = "tether-planner"

// Start opens the store, starts the broker and the planner, and returns
// once all listen.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("data dir: required")
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
	secret := make([]byte, 24)
	if _, err := rand.Read(secret); err != nil {
		return nil, err
	}
	password := hex.EncodeToString(secret)
	b, err := broker.New(broker.Config{
		DataDir:                filepath.Join(cfg.DataDir, "broker"),
		MQTTAddr:               cfg.MQTTAddr,
		WSAddr:                 cfg.WSAddr,
		AllowAnonymousLoopback: cfg.Dev,
		AllowAnonymous:         cfg.InsecureAllowAnonymous,
		Users:                  map[string]string{plannerUser: password},
		Log:                    cfg.Log.With().Str("part", "broker").Logger(),
	})
	if err != nil {
		return nil, err
	}
	s.broker = b
	if err := b.Start(); err != nil {
		return nil, err
	}
	s.endpoints = Endpoints{MQTT: b.MQTTAddr(), WS: b.WSAddr()}

	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	client, err := bus.Dial(dctx, bus.Config{
		Brokers:      []string{"tcp://" + b.MQTTAddr()},
		ClientID:     bus.RandomID("tether-planner-"),
		Username:     plannerUser,
		Password:     password,
		CleanSession: true, // everything the planner needs is retained or in its store
		Log:          cfg.Log.With().Str("part", "planner-mqtt").Logger(),
	})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("planner connect to embedded broker: %w", err)
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
		mux.Handle("/", dashboard.Handler(dashboard.Config{WSPort: wsPort, TopicRoot: cfg.Topics.Root}))
		s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = s.http.Serve(ln) }()
	}

	p := planner.New(planner.Config{
		Bus:    client,
		Store:  st,
		Topics: cfg.Topics,
		Log:    cfg.Log.With().Str("part", "planner").Logger(),
	})
	pctx, pcancel := context.WithCancel(context.Background())
	s.cancel = pcancel
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
