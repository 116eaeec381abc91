package broker

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/rs/zerolog"
)

// Peer is what the broker knows about a client when it decides whether the
// client may connect or use a topic.
type Peer struct {
	ClientID string
	Username string
	// Remote is the network peer's address, "host:port". For WebSocket it is
	// the TCP peer, not X-Forwarded-For: behind a reverse proxy on the same
	// host every client looks local.
	Remote string
	// Listener is "tcp" or "ws".
	Listener string
	// Origin is the HTTP Origin header of a WebSocket connection; "" for TCP
	// and for WebSocket clients that are not browsers.
	Origin string
	// TLS reports an encrypted connection (Config.TLS).
	TLS bool
	// CertCommonName is the CommonName of the client certificate that
	// verified against the broker's client CAs, "" without one (or without
	// TLS). Only a verified chain counts, never a merely presented one.
	CertCommonName string
}

// Authenticator decides who may connect and what they may do. It is the
// place where device identities (client certificates, tokens) and per-device
// topic ACLs will plug in.
//
// Both methods are called on mochi's per-connection goroutines, concurrently
// for different clients, and must be safe for concurrent use and must not
// block: a slow Authorize slows every publish.
type Authenticator interface {
	// Authenticate is called once per CONNECT with the password the client
	// sent (nil if none). A nil error admits the client; the error of a
	// refusal is logged, never sent to the client.
	Authenticate(p Peer, password []byte) error
	// Authorize reports whether client p may publish to (write) or
	// subscribe to and receive from (!write) topic, a topic name or a
	// subscription filter. It is also called while a persistent session's
	// client is offline, when a message is queued for it; p then describes
	// the last connection.
	Authorize(p Peer, topic string, write bool) bool
}

// staticPolicy is the Authenticator built from Config: fixed users plus the
// anonymous switches. Unknown users, wrong passwords and anonymous clients
// that no switch admits are refused.
type staticPolicy struct {
	users                  map[string][sha256.Size]byte // username -> sha256(password)
	allowAnonymous         bool
	allowAnonymousLoopback bool
}

var (
	errBadCredentials = errors.New("unknown user or wrong password")
	errNoCredentials  = errors.New("no credentials")
	errPasswordOnly   = errors.New("password without username")
)

func newStaticPolicy(cfg Config) *staticPolicy {
	p := &staticPolicy{
		users:                  make(map[string][sha256.Size]byte, len(cfg.Users)),
		allowAnonymous:         cfg.AllowAnonymous,
		allowAnonymousLoopback: cfg.AllowAnonymousLoopback,
	}
	for u, pw := range cfg.Users {
		p.users[u] = sha256.Sum256([]byte(pw))
	}
	return p
}

// Authenticate admits, in this order: a configured user with its password;
// nobody else who presents a username; an anonymous client when
// AllowAnonymous is set, or when AllowAnonymousLoopback is set and the client
// is local (see isLocal). A client that presents credentials is never
// admitted as anonymous: a planner with a wrong password must fail loudly
// rather than run unauthenticated.
func (p *staticPolicy) Authenticate(peer Peer, password []byte) error {
	if peer.Username != "" {
		want, known := p.users[peer.Username]
		// Compare digests so that neither the password's length nor
		// whether the user exists shows in the timing.
		got := sha256.Sum256(password)
		if subtle.ConstantTimeCompare(got[:], want[:]) == 1 && known {
			return nil
		}
		return errBadCredentials
	}
	if len(password) > 0 {
		return errPasswordOnly
	}
	if p.allowAnonymous {
		return nil
	}
	if p.allowAnonymousLoopback {
		if err := isLocal(peer); err != nil {
			return fmt.Errorf("%w: %w", errNoCredentials, err)
		}
		return nil
	}
	return errNoCredentials
}

// Authorize allows everything: every client that reaches an ACL check passed
// Authenticate, or is a persistent session restored from storage whose client
// did. Per-device topic rules arrive with device identities.
func (p *staticPolicy) Authorize(Peer, string, bool) bool { return true }

// isLocal returns nil if the peer is on this host: its TCP peer address is a
// loopback address and, for WebSocket, any Origin is a loopback origin too.
// The Origin check matters because a browser connects from 127.0.0.1 on
// behalf of whatever page it shows: without it any web site open on a
// developer's machine could publish desired state through ws://127.0.0.1.
func isLocal(p Peer) error {
	host, _, err := net.SplitHostPort(p.Remote)
	if err != nil {
		return fmt.Errorf("remote address %q: %w", p.Remote, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() {
		return fmt.Errorf("remote %s is not loopback", p.Remote)
	}
	if p.Origin == "" {
		return nil
	}
	u, err := url.Parse(p.Origin)
	if err != nil {
		return fmt.Errorf("origin %q: %w", p.Origin, err)
	}
	if h := u.Hostname(); h != "localhost" {
		if ip, err := netip.ParseAddr(h); err != nil || !ip.Unmap().IsLoopback() {
			return fmt.Errorf("browser origin %s is not local", p.Origin)
		}
	}
	return nil
}

// authHook adapts an Authenticator to mochi. mochi ORs the answers of all
// auth hooks and denies when none is installed; this is the only one.
type authHook struct {
	mqtt.HookBase
	auth Authenticator
	log  zerolog.Logger
	gate *gate // closed by Broker.Close: nobody gets in afterwards
}

func (h *authHook) ID() string { return "tether-auth" }

func (h *authHook) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) (ok bool) {
	h.gate.do(func() {
		p := peerOf(cl)
		if err := h.auth.Authenticate(p, pk.Connect.Password); err != nil {
			h.log.Warn().Err(err).
				Str("client", p.ClientID).Str("username", p.Username).
				Str("remote", p.Remote).Str("listener", p.Listener).Str("origin", p.Origin).
				Msg("connection refused")
			return
		}
		// mochi publishes a last will without asking the ACL: a will is a
		// publish the client makes now, so it is checked now.
		if pk.Connect.WillFlag && !h.auth.Authorize(p, pk.Connect.WillTopic, true) {
			h.log.Warn().Str("client", p.ClientID).Str("username", p.Username).Str("remote", p.Remote).
				Str("will_topic", pk.Connect.WillTopic).Msg("connection refused: last will on a topic the client may not publish to")
			return
		}
		h.log.Debug().
			Str("client", p.ClientID).Str("username", p.Username).
			Str("remote", p.Remote).Str("listener", p.Listener).
			Msg("client authenticated")
		ok = true
	})
	return ok
}

func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return h.auth.Authorize(peerOf(cl), topic, write)
}

func peerOf(cl *mqtt.Client) Peer {
	p := Peer{
		ClientID: cl.ID,
		Username: string(cl.Properties.Username),
		Remote:   cl.Net.Remote,
		Listener: cl.Net.Listener,
	}
	switch c := cl.Net.Conn.(type) {
	case *wsConn:
		p.Origin, p.TLS, p.CertCommonName = c.origin, c.tls, c.certCN
	case *tls.Conn:
		// mochi read CONNECT through it, so the handshake is complete.
		cs := c.ConnectionState()
		p.TLS, p.CertCommonName = true, verifiedCommonName(&cs)
	}
	return p
}
