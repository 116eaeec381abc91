package identity

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

// Errors callers branch on or show.
var (
	ErrNotFound        = errors.New("not found")
	ErrExists          = errors.New("already exists")
	ErrBadCredentials  = errors.New("unknown identity or wrong secret")
	ErrRevoked         = errors.New("revoked")
	ErrExpired         = errors.New("expired")
	ErrUsedUp          = errors.New("no uses left")
	ErrAlreadyEnrolled = errors.New("device already has an identity")
)

// Registry holds the identities of a secure server: it reads them from the
// store once and keeps them in memory, so that authentication and ACL
// checks never touch the disk; every change is written to the store before
// it takes effect. Safe for concurrent use.
type Registry struct {
	st  *store.Store
	now func() time.Time

	mu       sync.RWMutex
	creds    map[string]store.Credential // by Credential.Key()
	verified map[string][sha256.Size]byte
	keys     []store.SigningKey

	// mac keys the cache of verified secrets: a memory dump of it is no
	// better than the hashes.
	mac     []byte
	hashSem chan struct{}

	// OnRevoke runs after a credential is revoked, to cut off its live
	// connections. Set it before the registry is shared.
	OnRevoke func(p protocol.Principal)
}

// Open loads the registry from st. now defaults to time.Now.
func Open(st *store.Store, now func() time.Time) (*Registry, error) {
	if now == nil {
		now = time.Now
	}
	r := &Registry{
		st: st, now: now,
		creds:    map[string]store.Credential{},
		verified: map[string][sha256.Size]byte{},
		mac:      make([]byte, 32),
		// Each argon2 verification holds 8 MiB: no more at once than
		// there are cores to run them.
		hashSem: make(chan struct{}, max(1, runtime.GOMAXPROCS(0))),
	}
	if _, err := rand.Read(r.mac); err != nil {
		return nil, err
	}
	cs, err := st.Credentials()
	if err != nil {
		return nil, fmt.Errorf("load identities: %w", err)
	}
	for _, c := range cs {
		r.creds[c.Key()] = c
	}
	if r.keys, err = st.SigningKeys(); err != nil {
		return nil, fmt.Errorf("load signing keys: %w", err)
	}
	return r, nil
}

func (r *Registry) put(cs ...store.Credential) error {
	if err := r.st.PutCredentials(cs...); err != nil {
		return err
	}
	for _, c := range cs {
		r.creds[c.Key()] = c
		delete(r.verified, c.Key())
	}
	return nil
}

func newTokenID() (string, error) {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func (r *Registry) newToken(role protocol.Role, name string, ttl time.Duration, uses int, labels map[string]string) (protocol.Token, protocol.TokenInfo, error) {
	id, err := newTokenID()
	if err != nil {
		return protocol.Token{}, protocol.TokenInfo{}, err
	}
	secret, err := newSecret(32)
	if err != nil {
		return protocol.Token{}, protocol.TokenInfo{}, err
	}
	hash, err := hashSecret(secret)
	if err != nil {
		return protocol.Token{}, protocol.TokenInfo{}, err
	}
	now := r.now().UTC()
	c := store.Credential{Kind: store.KindToken, ID: id, Role: role, Name: name, Hash: hash, CreatedAt: now, UsesLeft: uses, Labels: labels}
	if ttl > 0 {
		exp := now.Add(ttl)
		c.ExpiresAt = &exp
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.creds[c.Key()]; dup {
		return protocol.Token{}, protocol.TokenInfo{}, fmt.Errorf("token id %s: %w", id, ErrExists)
	}
	if err := r.put(c); err != nil {
		return protocol.Token{}, protocol.TokenInfo{}, err
	}
	return protocol.Token{ID: id, Secret: secret}, tokenInfo(c), nil
}

// CreateToken makes an operator or viewer token; ttl 0 never expires. The
// secret is in the returned token only.
func (r *Registry) CreateToken(role protocol.Role, name string, ttl time.Duration) (protocol.Token, protocol.TokenInfo, error) {
	if _, err := protocol.ParseRole(string(role)); err != nil {
		return protocol.Token{}, protocol.TokenInfo{}, err
	}
	return r.newToken(role, name, ttl, 0, nil)
}

// CreateEnrollToken makes a fleet enrollment token good for uses devices
// within ttl; each enrolled device gets labels.
func (r *Registry) CreateEnrollToken(name string, uses int, ttl time.Duration, labels map[string]string) (protocol.Token, protocol.TokenInfo, error) {
	if uses < 1 || ttl <= 0 {
		return protocol.Token{}, protocol.TokenInfo{}, errors.New("an enrollment token needs uses >= 1 and a ttl")
	}
	return r.newToken(protocol.RoleEnroll, name, ttl, uses, maps.Clone(labels))
}

// RevokeToken revokes a token at once, live connections included.
func (r *Registry) RevokeToken(id string) error {
	return r.revoke(store.KindToken+"/"+id, func() (store.Credential, error) {
		return store.Credential{}, fmt.Errorf("token %s: %w", id, ErrNotFound)
	})
}

// revoke marks the credential at key revoked (made by missing when there is
// none), then cuts off its connections through OnRevoke.
func (r *Registry) revoke(key string, missing func() (store.Credential, error)) error {
	r.mu.Lock()
	c, ok := r.creds[key]
	if !ok {
		var err error
		if c, err = missing(); err != nil {
			r.mu.Unlock()
			return err
		}
	}
	if c.RevokedAt == nil {
		now := r.now().UTC()
		c.RevokedAt = &now
		if err := r.put(c); err != nil {
			r.mu.Unlock()
			return err
		}
	}
	r.mu.Unlock()
	if r.OnRevoke != nil {
		r.OnRevoke(protocol.Principal{Role: c.Role, Name: c.ID})
	}
	return nil
}

// AddDevice gives a device an identity and returns its secret. A device
// that has one must be revoked first; a revoked one may be added again.
func (r *Registry) AddDevice(id string, labels map[string]string) (string, error) {
	if err := protocol.ValidateID(id); err != nil {
		return "", fmt.Errorf("device id: %w", err)
	}
	secret, err := newSecret(32)
	if err != nil {
		return "", err
	}
	hash, err := hashSecret(secret)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if c, ok := r.creds[store.KindDevice+"/"+id]; ok && c.RevokedAt == nil {
		return "", fmt.Errorf("device %s: %w; revoke it first", id, ErrAlreadyEnrolled)
	}
	c := store.Credential{Kind: store.KindDevice, ID: id, Role: protocol.RoleDevice, Hash: hash, CreatedAt: r.now().UTC(), Labels: maps.Clone(labels)}
	if err := r.put(c); err != nil {
		return "", err
	}
	return secret, nil
}

// RevokeDevice cuts a device off at once: its live connection is closed and
// neither its secret nor a certificate for its id is accepted again, nor can
// it enroll again. An unknown id is recorded as revoked, which blocks a
// certificate issued for it.
func (r *Registry) RevokeDevice(id string) error {
	if err := protocol.ValidateID(id); err != nil {
		return fmt.Errorf("device id: %w", err)
	}
	return r.revoke(store.KindDevice+"/"+id, func() (store.Credential, error) {
		return store.Credential{Kind: store.KindDevice, ID: id, Role: protocol.RoleDevice, CreatedAt: r.now().UTC()}, nil
	})
}

// Enroll gives device the secret's identity on behalf of enrollment token
// tokenID, once: a device id that has (or had) an identity is refused. It
// returns the token's labels for the device.
func (r *Registry) Enroll(tokenID, device, secret string) (map[string]string, error) {
	// Check before hashing, and again after: the hash takes milliseconds,
	// and a refused request must not cost them.
	check := func() (store.Credential, bool, error) {
		t, ok := r.creds[store.KindToken+"/"+tokenID]
		if !ok || t.Role != protocol.RoleEnroll {
			return t, false, fmt.Errorf("enrollment token %s: %w", tokenID, ErrNotFound)
		}
		if d, ok := r.creds[store.KindDevice+"/"+device]; ok {
			// The same device asking again, because it lost the answer,
			// gets the same answer; anybody else is refused.
			if err := r.usable(t); d.EnrolledBy == tokenID && d.RevokedAt == nil && (err == nil || errors.Is(err, ErrUsedUp)) {
				return t, true, nil // if the secret matches: see below
			}
			return t, false, fmt.Errorf("device %s: %w", device, ErrAlreadyEnrolled)
		}
		if err := r.usable(t); err != nil {
			return t, false, fmt.Errorf("enrollment token %s: %w", tokenID, err)
		}
		return t, false, nil
	}
	// A repeated request is checked like a login, through the cache of
	// verified secrets: asking again and again costs no hashing.
	asked := func(t store.Credential) (map[string]string, error) {
		if _, err := r.verify(store.KindDevice+"/"+device, []byte(secret), false); err != nil {
			return nil, fmt.Errorf("device %s: %w", device, ErrAlreadyEnrolled)
		}
		return maps.Clone(t.Labels), nil
	}
	r.mu.Lock()
	t, again, err := check()
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if again {
		return asked(t)
	}
	hash, err := hashSecret(secret)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if t, again, err = check(); err != nil || again {
		r.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return asked(t)
	}
	defer r.mu.Unlock()
	t.UsesLeft--
	d := store.Credential{Kind: store.KindDevice, ID: device, Role: protocol.RoleDevice, Hash: hash,
		CreatedAt: r.now().UTC(), Labels: maps.Clone(t.Labels), EnrolledBy: tokenID}
	if err := r.put(t, d); err != nil {
		return nil, err
	}
	return maps.Clone(t.Labels), nil
}

// usable says why a credential cannot be used now, or nil.
func (r *Registry) usable(c store.Credential) error {
	switch {
	case c.RevokedAt != nil:
		return ErrRevoked
	case c.ExpiresAt != nil && !r.now().Before(*c.ExpiresAt):
		return ErrExpired
	case c.Role == protocol.RoleEnroll && c.UsesLeft < 1:
		return ErrUsedUp
	}
	return nil
}

// Tokens lists the tokens, oldest first, without secrets.
func (r *Registry) Tokens() []protocol.TokenInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []protocol.TokenInfo
	for _, c := range r.creds {
		if c.Kind == store.KindToken {
			out = append(out, tokenInfo(c))
		}
	}
	slices.SortFunc(out, func(a, b protocol.TokenInfo) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out
}

// Devices lists device identities by id, without secrets.
func (r *Registry) Devices() []protocol.IdentityInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []protocol.IdentityInfo
	for _, c := range r.creds {
		if c.Kind == store.KindDevice {
			out = append(out, protocol.IdentityInfo{Device: c.ID, CreatedAt: c.CreatedAt, EnrolledBy: c.EnrolledBy,
				Labels: c.Labels, Revoked: c.RevokedAt != nil})
		}
	}
	slices.SortFunc(out, func(a, b protocol.IdentityInfo) int { return strings.Compare(a.Device, b.Device) })
	return out
}

func tokenInfo(c store.Credential) protocol.TokenInfo {
	return protocol.TokenInfo{ID: c.ID, Role: c.Role, Name: c.Name, CreatedAt: c.CreatedAt, ExpiresAt: c.ExpiresAt,
		UsesLeft: c.UsesLeft, Labels: c.Labels, Revoked: c.RevokedAt != nil}
}

// HasOperator reports whether some operator token is usable.
func (r *Registry) HasOperator() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, c := range r.creds {
		if c.Role == protocol.RoleOperator && r.usable(c) == nil {
			return true
		}
	}
	return false
}

// Authenticate checks a connecting client's credentials: a token
// (username "token/<id>" and its secret), a device secret (username = device
// id), or a verified client certificate whose common name is a device id
// (certCN; the username must then be empty or that id). It then checks that
// the principal may use clientID (protocol.CheckClientID) and, for an
// enrollment token, that the device id it connects as is still free.
func (r *Registry) Authenticate(username string, password []byte, certCN, clientID string) (protocol.Principal, error) {
	var p protocol.Principal
	switch {
	case certCN != "" && (username == "" || username == certCN):
		if err := protocol.ValidateID(certCN); err != nil {
			return p, fmt.Errorf("certificate common name: %w", err)
		}
		r.mu.RLock()
		c, ok := r.creds[store.KindDevice+"/"+certCN]
		r.mu.RUnlock()
		if ok && c.RevokedAt != nil {
			return p, fmt.Errorf("device %s: %w", certCN, ErrRevoked)
		}
		if !ok && clientID == certCN {
			// Record the id on its first login, so that it is taken: no
			// enrollment token can claim it afterwards.
			r.mu.Lock()
			if _, ok := r.creds[store.KindDevice+"/"+certCN]; !ok {
				err := r.put(store.Credential{Kind: store.KindDevice, ID: certCN, Role: protocol.RoleDevice, Name: "certificate", CreatedAt: r.now().UTC()})
				if err != nil {
					r.mu.Unlock()
					return p, err
				}
			}
			r.mu.Unlock()
		}
		p = protocol.Principal{Role: protocol.RoleDevice, Name: certCN}
	case strings.HasPrefix(username, protocol.TokenUserPrefix):
		c, err := r.verify(store.KindToken+"/"+strings.TrimPrefix(username, protocol.TokenUserPrefix), password, true)
		if err != nil {
			return p, err
		}
		p = protocol.Principal{Role: c.Role, Name: c.ID}
	case username != "":
		c, err := r.verify(store.KindDevice+"/"+username, password, false)
		if err != nil {
			return p, err
		}
		p = protocol.Principal{Role: protocol.RoleDevice, Name: c.ID}
	default:
		return p, errors.New("no credentials")
	}
	if err := protocol.CheckClientID(p, clientID); err != nil {
		return p, err
	}
	if p.Role == protocol.RoleEnroll {
		r.mu.RLock()
		d, taken := r.creds[store.KindDevice+"/"+clientID]
		t := r.creds[store.KindToken+"/"+p.Name]
		r.mu.RUnlock()
		switch {
		case taken && (d.EnrolledBy != p.Name || d.RevokedAt != nil):
			return p, fmt.Errorf("device %s: %w", clientID, ErrAlreadyEnrolled)
		case taken:
			// Enrolled by this very token: the device lost the answer and
			// asks again with the same secret (Enroll checks it).
		case t.UsesLeft < 1:
			return p, fmt.Errorf("enrollment token %s: %w", p.Name, ErrUsedUp)
		}
	}
	return p, nil
}

// verify checks a secret against a credential's hash, once per credential
// and secret while the server runs: later connections with the same secret
// compare a keyed digest instead of paying for argon2 again.
// An enrollment token that is used up still verifies when usedUpOK: the
// caller decides whether what it asks for needs a use.
func (r *Registry) verify(key string, password []byte, usedUpOK bool) (store.Credential, error) {
	r.mu.RLock()
	c, ok := r.creds[key]
	cached, hit := r.verified[key]
	r.mu.RUnlock()
	if !ok || c.Hash == "" {
		return c, ErrBadCredentials
	}
	if err := r.usable(c); err != nil && !(usedUpOK && errors.Is(err, ErrUsedUp)) {
		return c, fmt.Errorf("%s: %w", key, err)
	}
	m := hmac.New(sha256.New, r.mac)
	m.Write([]byte(key))
	m.Write([]byte{0})
	m.Write(password)
	var digest [sha256.Size]byte
	copy(digest[:], m.Sum(nil))
	if hit && hmac.Equal(cached[:], digest[:]) {
		return c, nil
	}
	r.hashSem <- struct{}{}
	good, err := verifySecret(c.Hash, string(password))
	<-r.hashSem
	if err != nil {
		return c, fmt.Errorf("%s: %w", key, err)
	}
	if !good {
		return c, ErrBadCredentials
	}
	r.mu.Lock()
	if cur, ok := r.creds[key]; ok && cur.Hash == c.Hash {
		r.verified[key] = digest
	}
	r.mu.Unlock()
	return c, nil
}

// Principal maps an authenticated connection back to its principal without
// checking secrets: the ACL's question on every publish and delivery. ok is
// false once the credential is revoked or expired.
func (r *Registry) Principal(username, certCN string) (protocol.Principal, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	switch {
	case certCN != "" && (username == "" || username == certCN):
		c, ok := r.creds[store.KindDevice+"/"+certCN]
		if ok && c.RevokedAt != nil {
			return protocol.Principal{}, false
		}
		return protocol.Principal{Role: protocol.RoleDevice, Name: certCN}, true
	case strings.HasPrefix(username, protocol.TokenUserPrefix):
		c, ok := r.creds[store.KindToken+"/"+strings.TrimPrefix(username, protocol.TokenUserPrefix)]
		// A used-up enrollment token keeps its principal: the device it
		// enrolled may ask again (the ACL checks each request, MayEnroll).
		if err := r.usable(c); !ok || err != nil && !errors.Is(err, ErrUsedUp) {
			return protocol.Principal{}, false
		}
		return protocol.Principal{Role: c.Role, Name: c.ID}, true
	case username != "":
		c, ok := r.creds[store.KindDevice+"/"+username]
		if !ok || c.RevokedAt != nil {
			return protocol.Principal{}, false
		}
		return protocol.Principal{Role: protocol.RoleDevice, Name: c.ID}, true
	}
	return protocol.Principal{}, false
}

// EnsureSigningKey creates the planner's first signing key if it has none.
func (r *Registry) EnsureSigningKey() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.keys) > 0 {
		return nil
	}
	return r.addKey(nil)
}

// RotateKey makes a new signing key, endorsed by the current one, and
// signs with it from now on. Devices that trust any earlier key follow the
// endorsements (protocol.VerifyDesired).
func (r *Registry) RotateKey() ([]protocol.KeyInfo, error) {
	r.mu.Lock()
	if len(r.keys) == 0 {
		r.mu.Unlock()
		return nil, errors.New("no signing key yet")
	}
	prev := ed25519.PrivateKey(r.keys[len(r.keys)-1].Private)
	err := r.addKey(prev)
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return r.Keys(), nil
}

func (r *Registry) addKey(prev ed25519.PrivateKey) error {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	k := store.SigningKey{ID: protocol.KeyID(pub), Private: priv, CreatedAt: r.now().UTC()}
	if prev != nil {
		e := protocol.Endorse(prev, pub)
		k.Endorsement = &e
	}
	if err := r.st.AddSigningKey(k); err != nil {
		return err
	}
	r.keys = append(r.keys, k)
	return nil
}

// maxChain bounds the endorsements carried in every desired document: a
// device that missed more rotations than this needs its key re-pinned.
const maxChain = 16

// Sign signs a desired document with the current key.
func (r *Registry) Sign(d protocol.Desired) (protocol.Desired, error) {
	r.mu.RLock()
	if len(r.keys) == 0 {
		r.mu.RUnlock()
		return protocol.Desired{}, errors.New("no signing key")
	}
	cur := ed25519.PrivateKey(r.keys[len(r.keys)-1].Private)
	var chain []protocol.Endorsement
	for _, k := range r.keys[max(1, len(r.keys)-maxChain):] {
		if k.Endorsement != nil {
			chain = append(chain, *k.Endorsement)
		}
	}
	r.mu.RUnlock()
	return protocol.SignDesired(d, cur, chain)
}

// PublicKeys returns the planner's public keys, the current one last.
func (r *Registry) PublicKeys() []ed25519.PublicKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]ed25519.PublicKey, 0, len(r.keys))
	for _, k := range r.keys {
		out = append(out, ed25519.PrivateKey(k.Private).Public().(ed25519.PublicKey))
	}
	return out
}

// Keys describes the signing keys, the current one last.
func (r *Registry) Keys() []protocol.KeyInfo {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]protocol.KeyInfo, 0, len(r.keys))
	for i, k := range r.keys {
		pub := ed25519.PrivateKey(k.Private).Public().(ed25519.PublicKey)
		out = append(out, protocol.KeyInfo{ID: k.ID, Key: protocol.EncodeKey(pub), CreatedAt: k.CreatedAt, Current: i == len(r.keys)-1})
	}
	return out
}

// MayEnroll reports whether enrollment token tokenID may still ask for an
// identity for device: the token has a use left and the id is free, or the
// device enrolled with this token and asks again. It is the ACL's check on
// every enrollment request, before any secret is hashed.
func (r *Registry) MayEnroll(tokenID, device string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	t, ok := r.creds[store.KindToken+"/"+tokenID]
	if !ok || t.Role != protocol.RoleEnroll {
		return false
	}
	err := r.usable(t)
	if d, taken := r.creds[store.KindDevice+"/"+device]; taken {
		return d.EnrolledBy == tokenID && d.RevokedAt == nil && (err == nil || errors.Is(err, ErrUsedUp))
	}
	return err == nil
}
