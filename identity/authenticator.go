package identity

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/protocol"
)

// Authenticator is the broker's gatekeeper on a secure server: identities
// from the Registry, topic rules from protocol.Topics.Allowed, default deny.
// The planner is the broker's inline client and never asks.
type Authenticator struct {
	reg    *Registry
	topics protocol.Topics
	log    zerolog.Logger

	limits   *connectLimiter // successful logins per identity
	failures *connectLimiter // failed logins per remote address and identity
}

// NewAuthenticator returns the broker policy for a secure server.
func NewAuthenticator(reg *Registry, topics protocol.Topics, log zerolog.Logger) *Authenticator {
	return &Authenticator{
		reg: reg, topics: topics, log: log,
		limits:   newConnectLimiter(connectBurst, connectEvery),
		failures: newConnectLimiter(failureBurst, failureEvery),
	}
}

// Connection limits per identity: a burst of connects, then one per
// interval. A device that flaps a hundred times a minute still gets in
// about once a second; a stolen token cannot open thousands of sessions.
const (
	connectBurst = 20
	connectEvery = time.Second
)

// Failed logins from one address in one identity's name: a burst, then one
// every interval.
const (
	failureBurst = 10
	failureEvery = 2 * time.Second
)

var (
	errTooManyConnects = errors.New("too many connection attempts for this identity; slow down")
	errTooManyFailures = errors.New("too many failed logins for this identity from this address; slow down")
)

// Authenticate implements broker.Authenticator.
func (a *Authenticator) Authenticate(p broker.Peer, password []byte) error {
	who := p.Username
	if who == "" {
		who = "cert:" + p.CertCommonName
	}
	// Failures count per address and identity, so that guessing from one
	// place is slow and nobody elsewhere can lock an identity out by
	// failing in its name; successes count per identity, so that a valid
	// credential cannot open sessions without end.
	host, _, err := net.SplitHostPort(p.Remote)
	if err != nil {
		host = p.Remote
	}
	failKey := host + " " + who
	if !a.failures.has(failKey) {
		return errTooManyFailures
	}
	if _, err := a.reg.Authenticate(p.Username, password, p.CertCommonName, p.ClientID); err != nil {
		a.failures.allow(failKey)
		return err
	}
	if !a.limits.allow(who) {
		return errTooManyConnects
	}
	return nil
}

// Authorize implements broker.Authenticator.
func (a *Authenticator) Authorize(p broker.Peer, topic string, write bool) bool {
	pr, ok := a.reg.Principal(p.Username, p.CertCommonName)
	if !ok {
		return false
	}
	allowed := a.topics.Allowed(pr, p.ClientID, topic, write)
	if allowed && write && pr.Role == protocol.RoleEnroll && !a.reg.MayEnroll(pr.Name, p.ClientID) {
		allowed = false // used up, expired, or the id was taken meanwhile
	}
	if !allowed {
		a.log.Debug().Str("client", p.ClientID).Str("role", string(pr.Role)).Str("principal", pr.Name).
			Str("topic", topic).Bool("write", write).Msg("denied by ACL")
	}
	return allowed
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

// has reports whether key has a token left, without taking it.
func (l *connectLimiter) has(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	return !ok || l.fill(b, time.Now()) >= 1
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
