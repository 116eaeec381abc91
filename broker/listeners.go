package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// connectTimeout bounds how long a new connection may take to send CONNECT.
// mochi reads the first packet with no deadline at all, so without this an
// idle or trickling connection holds its goroutines and buffers forever.
// mochi replaces the deadline with the client's keepalive once CONNECT is
// read.
const connectTimeout = 10 * time.Second

// connectDeadline wraps a mochi listener and sets a read deadline on every
// accepted connection before mochi reads CONNECT.
type connectDeadline struct {
	listeners.Listener
	timeout time.Duration
}

func (l connectDeadline) Serve(establish listeners.EstablishFn) {
	l.Listener.Serve(func(id string, c net.Conn) error {
		if err := c.SetReadDeadline(time.Now().Add(l.timeout)); err != nil {
			_ = c.Close()
			return fmt.Errorf("set connect deadline: %w", err)
		}
		return establish(id, c)
	})
}

// wsListener serves MQTT over WebSocket. mochi has its own, but it binds
// only in Serve, so Address() after "127.0.0.1:0" is still ":0" and callers
// could not learn the port; and it hands mochi a connection type from which
// the Origin header cannot be read back for authentication. This one binds
// in Init and keeps the Origin on the connection (see isLocal), and, over
// TLS (wss://), the verified client certificate, which mochi's cannot report.
//
// Like mochi's: any path, subprotocol "mqtt", binary frames only, and every
// Origin is accepted at the HTTP level (credentials travel in CONNECT, not
// in cookies, so only the anonymous-loopback rule needs the Origin).
type wsListener struct {
	id       string
	address  string
	ln       net.Listener
	srv      *http.Server
	log      *slog.Logger
	upgrader websocket.Upgrader
	tls      *tls.Config // nil = plaintext ws://

	mu        sync.Mutex
	establish listeners.EstablishFn
	closed    bool
}

func newWSListener(id, address string, tlsConfig *tls.Config) *wsListener {
	l := &wsListener{
		id:      id,
		address: address,
		tls:     tlsConfig,
		upgrader: websocket.Upgrader{
			Subprotocols: []string{"mqtt"},
			CheckOrigin:  func(*http.Request) bool { return true },
		},
	}
	l.srv = &http.Server{
		Handler:           http.HandlerFunc(l.handle),
		ReadHeaderTimeout: connectTimeout,
	}
	return l
}

func (l *wsListener) ID() string { return l.id }

func (l *wsListener) Protocol() string {
	if l.tls != nil {
		return "wss"
	}
	return "ws"
}

func (l *wsListener) Address() string {
	if l.ln != nil {
		return l.ln.Addr().String()
	}
	return l.address
}

func (l *wsListener) Init(log *slog.Logger) error {
	l.log = log
	l.srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn) // not stderr
	ln, err := net.Listen("tcp", l.address)
	if err != nil {
		return err
	}
	if l.tls != nil {
		// Only HTTP/1.1: WebSocket over HTTP/2 is not something
		// gorilla/websocket serves. The server handshakes each connection
		// under ReadHeaderTimeout.
		cfg := l.tls.Clone()
		cfg.NextProtos = []string{"http/1.1"}
		ln = tls.NewListener(ln, cfg)
	}
	l.ln = ln
	return nil
}

func (l *wsListener) Serve(establish listeners.EstablishFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.establish = establish
	l.mu.Unlock()

	err := l.srv.Serve(l.ln)
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.log.Error("websocket listener failed", "error", err, "listener", l.id)
	}
}

func (l *wsListener) handle(w http.ResponseWriter, r *http.Request) {
	l.mu.Lock()
	establish := l.establish
	l.mu.Unlock()
	if establish == nil {
		http.Error(w, "not serving", http.StatusServiceUnavailable)
		return
	}

	c, err := l.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // Upgrade has already answered with an HTTP error
	}
	defer c.Close()

	conn := &wsConn{Conn: c.UnderlyingConn(), ws: c, origin: r.Header.Get("Origin")}
	if r.TLS != nil {
		conn.tls = true
		conn.certCN = verifiedCommonName(r.TLS)
	}
	if err := establish(l.id, conn); err != nil {
		l.log.Warn("", "error", err, "listener", l.id, "remote", conn.RemoteAddr().String())
	}
}

// Close stops accepting, then disconnects this listener's clients. Upgraded
// connections are hijacked, so Shutdown does not wait for them; closeClients
// does.
func (l *wsListener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	first := !l.closed
	l.closed = true
	l.mu.Unlock()

	if first {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = l.srv.Shutdown(ctx)
		cancel()
		if l.ln != nil {
			_ = l.ln.Close() // Shutdown does not know it if Serve never ran
		}
	}
	closeClients(l.id)
}

// wsConn presents a WebSocket connection as the byte stream mochi reads and
// writes. mochi reads from one goroutine and serialises writes under the
// client's lock, which is the concurrency gorilla/websocket allows.
type wsConn struct {
	net.Conn // the underlying TCP connection: addresses and deadlines
	ws       *websocket.Conn
	origin   string
	tls      bool      // wss://
	certCN   string    // see verifiedCommonName
	r        io.Reader // the frame being read, nil between frames
}

var errTextFrame = errors.New("websocket: MQTT needs binary frames")

func (c *wsConn) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			op, r, err := c.ws.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errTextFrame
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil // end of frame, not of the stream
			err = nil
			if n == 0 {
				continue
			}
		}
		return n, err
	}
}

// Write sends p as one binary frame. mochi writes whole packets (or a batch
// of them), which MQTT over WebSocket allows to span or share frames.
func (c *wsConn) Write(p []byte) (int, error) {
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error { return c.ws.Close() }

// verifiedCommonName is the CommonName of the client certificate that
// verified against Config.TLS's ClientCAs, or "" when the client sent none
// or the server did not verify it (a ClientAuth that only requests one).
func verifiedCommonName(cs *tls.ConnectionState) string {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	return cs.VerifiedChains[0][0].Subject.CommonName
}
