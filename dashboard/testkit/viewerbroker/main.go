package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/tether-edge/tether/dashboard"
	"github.com/tether-edge/tether/protocol"
)

type role int

const (
	refused role = iota
	viewer
	operator
)

// policy decides who connects and what they read. It is called on mochi's
// per-connection goroutines and only reads its maps after construction.
type policy struct {
	topics    protocol.Topics
	tokens    map[string]token // by id
	anonymous bool             // admit clients without credentials, as operators
	out       *syncWriter      // the lines the tests read
	roles     sync.Map         // *mqtt.Client → role, for ACL checks
}

type token struct {
	role   role
	secret [sha256.Size]byte
}

// authenticate admits a client, or says why not.
func (p *policy) authenticate(clientID, username string, password []byte) (role, error) {
	if username == "" {
		if len(password) > 0 {
			return refused, errors.New("password without username")
		}
		if !p.anonymous {
			return refused, errors.New("anonymous")
		}
		return operator, nil
	}
	id, ok := strings.CutPrefix(username, "token/")
	if !ok {
		return refused, errors.New("username is not token/<id>")
	}
	t, known := p.tokens[id]
	got := sha256.Sum256(password)
	if subtle.ConstantTimeCompare(got[:], t.secret[:]) != 1 || !known {
		return refused, errors.New("unknown token or wrong secret")
	}
	if !strings.HasPrefix(clientID, username+"/") {
		return refused, fmt.Errorf("client id does not start with %s/", username)
	}
	return t.role, nil
}

// allowed applies the server's own topic rules (protocol.Topics.Allowed)
// to a viewer; the anonymous operator of this test broker may do anything.
func (p *policy) allowed(r role, clientID, topic string, write bool) bool {
	switch r {
	case operator:
		return true
	case viewer:
		return p.topics.Allowed(protocol.Principal{Role: protocol.RoleViewer}, clientID, topic, write)
	}
	return false
}

// hook plugs the policy into mochi.
type hook struct {
	mqtt.HookBase
	p *policy
}

func (h *hook) ID() string { return "viewer-policy" }

func (h *hook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnSubscribed || b == mqtt.OnDisconnect
}

func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	r, err := h.p.authenticate(cl.ID, user, pk.Connect.Password)
	if err != nil {
		h.p.out.printf("connect refused client=%s username=%s reason=%q", cl.ID, user, err)
		return false
	}
	h.p.roles.Store(cl, r)
	h.p.out.printf("connect ok client=%s username=%s role=%s", cl.ID, user, map[role]string{viewer: "viewer", operator: "operator"}[r])
	return true
}

func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	r, _ := h.p.roles.Load(cl)
	rr, _ := r.(role)
	return h.p.allowed(rr, cl.ID, topic, write)
}

func (h *hook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	for i, f := range pk.Filters {
		h.p.out.printf("subscribe client=%s filter=%s granted=%t", cl.ID, f.Filter, codes[i] < 0x80)
	}
}

func (h *hook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.p.roles.Delete(cl)
}

// syncWriter serialises lines from mochi's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) printf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.w, format+"\n", args...)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "viewerbroker:", err)
		os.Exit(1)
	}
}

func run() error {
	var viewers, operators multiFlag
	wsAddr := flag.String("ws-addr", "127.0.0.1:1884", "MQTT over WebSocket listener")
	httpAddr := flag.String("http-addr", "127.0.0.1:7070", "HTTP listener serving the dashboard")
	root := flag.String("root", "tether", "topic root")
	anonymous := flag.Bool("anonymous", false, "admit clients without credentials, with every right (as tether dev does from loopback)")
	useTLS := flag.Bool("tls", false, "serve the WebSocket listener over TLS with a new self-signed certificate for 127.0.0.1 and localhost")
	certOut := flag.String("tls-cert-out", "", "with -tls (implied): write that certificate (PEM) to this file, for the browser under test to trust")
	flag.Var(&viewers, "viewer", "viewer token <id>.<secret> (repeatable)")
	flag.Var(&operators, "operator", "operator token <id>.<secret> (repeatable)")
	flag.Parse()

	out := &syncWriter{w: os.Stdout}
	topics, err := protocol.NewTopics(*root)
	if err != nil {
		return err
	}
	p := &policy{topics: topics, tokens: map[string]token{}, anonymous: *anonymous, out: out}
	for r, list := range map[role][]string{viewer: viewers, operator: operators} {
		for _, s := range list {
			t, err := protocol.ParseToken(s)
			if err != nil {
				return err
			}
			p.tokens[t.ID] = token{role: r, secret: sha256.Sum256([]byte(t.Secret))}
		}
	}

	srv := mqtt.New(&mqtt.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err := srv.AddHook(&hook{p: p}, nil); err != nil {
		return err
	}
	cfg := listeners.Config{Type: listeners.TypeWS, ID: "ws", Address: *wsAddr}
	if *certOut != "" {
		*useTLS = true
	}
	if *useTLS {
		c, err := selfSigned()
		if err != nil {
			return err
		}
		if *certOut != "" {
			pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
			if err := os.WriteFile(*certOut, pemBytes, 0o644); err != nil {
				return err
			}
		}
		cfg.TLSConfig = &tls.Config{Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS12}
	}
	if err := srv.AddListener(listeners.NewWebsocket(cfg)); err != nil {
		return err
	}
	if err := srv.Serve(); err != nil {
		return err
	}
	defer srv.Close()

	_, portText, err := net.SplitHostPort(*wsAddr)
	if err != nil {
		return err
	}
	port, _ := strconv.Atoi(portText)
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return err
	}
	web := &http.Server{Handler: dashboard.Handler(dashboard.Config{WSPort: port, WSTLS: *useTLS, TopicRoot: *root}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = web.Serve(ln) }()
	defer web.Close()

	// mochi binds the WebSocket listener in a goroutine: wait for it.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", *wsAddr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("websocket listener %s: %w", *wsAddr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	scheme := "ws"
	if *useTLS {
		scheme = "wss"
	}
	out.printf("ready ws=%s://%s http=http://%s/", scheme, *wsAddr, ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}

// selfSigned makes a certificate for 127.0.0.1, ::1 and localhost, valid
// for a day: the browser under test is told to accept its key although
// nobody signed it (-tls-cert-out).
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "viewerbroker"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
