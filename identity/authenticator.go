package identity

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/protocol"
)

// Authenticator is the broker's gatekeeper on a secure server: identities
// from the Registry, topic rules from protocol.Topics.Allowed, default deny.
// The planner's own connection uses a fixed internal user.
type Authenticator struct {
	reg    *Registry
	topics protocol.Topics
	log    zerolog.Logger

	plannerUser string
	plannerPass [sha256.Size]byte

	limits *connectLimiter
}

// NewAuthenticator returns the broker policy for a secure server.
func NewAuthenticator(reg *Registry, topics protocol.Topics, plannerUser, plannerPassword string, log zerolog.Logger) *Authenticator {
	return &Authenticator{
		reg: reg, topics: topics, log: log,
		plannerUser: plannerUser, plannerPass: sha256.Sum256([]byte(plannerPassword)),
		limits: newConnectLimiter(connectBurst, connectEvery),
	}
}

// Connection limits per identity: a burst of connects, then one per
// interval. A device that flaps a hundred times a minute still gets in
// about once a second; a stolen token cannot open thousands of sessions.
const (
	connectBurst = 20
	connectEvery = time.Second
)

var errTooManyConnects = errors.New("too many connection attempts for this identity; slow down")

// Authenticate implements broker.Authenticator.
func (a *Authenticator) Authenticate(p broker.Peer, password []byte) error {
	if p.Username == a.plannerUser && a.plannerUser != "" {
		got := sha256.Sum256(password)
		if subtle.ConstantTimeCompare(got[:], a.plannerPass[:]) == 1 {
			return nil
		}
		return ErrBadCredentials
	}
	who := p.Username
	if who == "" {
		who = "cert:" + p.CertCommonName
	}
	if !a.limits.allow(who) {
		return errTooManyConnects
	}
	if _, err := a.reg.Authenticate(p.Username, password, p.CertCommonName, p.ClientID); err != nil {
		return err
	}
	return nil
}

// Authorize implements broker.Authenticator.
func (a *Authenticator) Authorize(p broker.Peer, topic string, write bool) bool {
	if p.Username == a.plannerUser && a.plannerUser != "" {
		return true
	}
	pr, ok := a.reg.Principal(p.Username, p.CertCommonName)
	if !ok {
		return false
	}
	allowed := a.topics.Allowed(pr, p.ClientID, topic, write)
	if !allowed {
		a.log.Debug().Str("client", p.ClientID).Str("role", string(pr.Role)).Str("principal", pr.Name).
			Str("topic", topic).Bool("write", write).Msg("denied by ACL")
	}
	return allowed
}

// Principal reports who an authenticated peer is.
func (a *Authenticator) Principal(p broker.Peer) (protocol.Principal, bool) {
	if p.Username == a.plannerUser && a.plannerUser != "" {
		return protocol.Principal{Role: protocol.RolePlanner, Name: p.Username}, true
	}
	return a.reg.Principal(p.Username, p.CertCommonName)
}

// connectLimiter is a token bucket per key, forgotten once full again.
type connectLimiter struct {
	burst float64
	every time.Duration

	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newConnectLimiter(burst int, every time.Duration) *connectLimiter {
	return &connectLimiter{burst: float64(burst), every: every, buckets: map[string]*bucket{}}
}

func (l *connectLimiter) allow(key string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.sweep) > time.Minute {
		l.sweep = now
		for k, b := range l.buckets {
			if l.fill(b, now) >= l.burst {
				delete(l.buckets, k)
			}
		}
	}
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[key] = b
	}
	if l.fill(b, now) < 1 {
		return false
	}
	b.tokens--
	return true
}

func (l *connectLimiter) fill(b *bucket, now time.Time) float64 {
	b.tokens = min(l.burst, b.tokens+float64(now.Sub(b.at))/float64(l.every))
	b.at = now
	return b.tokens
}
