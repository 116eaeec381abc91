package identity

import (
	"crypto/ed25519"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-edge/tether/protocol"
	"github.com/tether-edge/tether/store"
)

type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }
func newClock() *clock {
	c := &clock{}
	c.t.Store(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func openStore(t *testing.T) *store.Store {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "planner.db"))
}

func openAt(t *testing.T, path string) *store.Store {
	t.Helper()
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestTokens(t *testing.T) {
	c := newClock()
	r, err := Open(openStore(t), c.now)
	if err != nil {
		t.Fatal(err)
	}
	var revoked []protocol.Principal
	r.OnRevoke = func(p protocol.Principal) { revoked = append(revoked, p) }

	tok, info, err := r.CreateToken(protocol.RoleViewer, "wall", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if info.Role != protocol.RoleViewer || info.ExpiresAt == nil {
		t.Fatalf("info %+v", info)
	}
	user := protocol.TokenUsername(tok.ID)
	cid := user + "/dash-1"
	p, err := r.Authenticate(user, []byte(tok.Secret), "", cid)
	if err != nil || p != (protocol.Principal{Role: protocol.RoleViewer, Name: tok.ID}) {
		t.Fatalf("good token: %v %+v", err, p)
	}
	// Cached the second time, and still checked.
	if _, err := r.Authenticate(user, []byte(tok.Secret), "", cid); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authenticate(user, []byte(tok.Secret+"x"), "", cid); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("wrong secret: %v", err)
	}
	if _, err := r.Authenticate(user, []byte(tok.Secret), "", "pi-1"); err == nil {
		t.Error("a token connected with a device's client id")
	}
	if _, err := r.Authenticate("token/000000000000", []byte(tok.Secret), "", "token/000000000000/x"); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("unknown token: %v", err)
	}
	c.advance(time.Hour)
	if _, err := r.Authenticate(user, []byte(tok.Secret), "", cid); !errors.Is(err, ErrExpired) {
		t.Errorf("expired token: %v", err)
	}
	if _, ok := r.Principal(user, ""); ok {
		t.Error("an expired token still maps to a principal")
	}

	op, _, _ := r.CreateToken(protocol.RoleOperator, "ops", 0)
	if !r.HasOperator() {
		t.Error("HasOperator false with an operator token")
	}
	if err := r.RevokeToken(op.ID); err != nil {
		t.Fatal(err)
	}
	if r.HasOperator() {
		t.Error("HasOperator true after revoking the only operator token")
	}
	if _, err := r.Authenticate(protocol.TokenUsername(op.ID), []byte(op.Secret), "", protocol.TokenUsername(op.ID)+"/c"); !errors.Is(err, ErrRevoked) {
		t.Errorf("revoked token: %v", err)
	}
	if len(revoked) != 1 || revoked[0] != (protocol.Principal{Role: protocol.RoleOperator, Name: op.ID}) {
		t.Errorf("OnRevoke calls: %+v", revoked)
	}
	if _, _, err := r.CreateToken(protocol.RoleDevice, "", 0); err == nil {
		t.Error("created a token with role device")
	}
}

func TestDevicesAndEnrollment(t *testing.T) {
	c := newClock()
	path := filepath.Join(t.TempDir(), "planner.db")
	st := openAt(t, path)
	r, err := Open(st, c.now)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := r.AddDevice("pi-1", map[string]string{"site": "a"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Authenticate("pi-1", []byte(secret), "", "pi-1"); err != nil {
		t.Fatalf("device secret: %v", err)
	}
	if _, err := r.Authenticate("pi-1", []byte(secret), "", "pi-2"); err == nil {
		t.Error("device connected with another device's client id")
	}
	if _, err := r.AddDevice("pi-1", nil); !errors.Is(err, ErrAlreadyEnrolled) {
		t.Errorf("second add: %v", err)
	}

	tok, _, err := r.CreateEnrollToken("batch", 2, 24*time.Hour, map[string]string{"site": "berlin"})
	if err != nil {
		t.Fatal(err)
	}
	euser := protocol.TokenUsername(tok.ID)
	if _, err := r.Authenticate(euser, []byte(tok.Secret), "", "new-1"); err != nil {
		t.Fatalf("enrollment login: %v", err)
	}
	if _, err := r.Authenticate(euser, []byte(tok.Secret), "", "pi-1"); !errors.Is(err, ErrAlreadyEnrolled) {
		t.Errorf("enrollment login as an existing device: %v", err)
	}
	devSecret := "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
	labels, err := r.Enroll(tok.ID, "new-1", devSecret)
	if err != nil || labels["site"] != "berlin" {
		t.Fatalf("enroll: %v %v", labels, err)
	}
	if _, err := r.Enroll(tok.ID, "new-1", devSecret); !errors.Is(err, ErrAlreadyEnrolled) {
		t.Errorf("enrolled twice: %v", err)
	}
	if _, err := r.Authenticate("new-1", []byte(devSecret), "", "new-1"); err != nil {
		t.Errorf("enrolled device login: %v", err)
	}
	if err := r.RevokeDevice("pi-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Enroll(tok.ID, "pi-1", devSecret); !errors.Is(err, ErrAlreadyEnrolled) {
		t.Errorf("a revoked device enrolled again: %v", err)
	}
	if _, err := r.Authenticate("pi-1", []byte(secret), "", "pi-1"); !errors.Is(err, ErrRevoked) {
		t.Errorf("revoked device: %v", err)
	}
	if _, err := r.Enroll(tok.ID, "new-2", devSecret); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Enroll(tok.ID, "new-3", devSecret); !errors.Is(err, ErrUsedUp) {
		t.Errorf("third enrollment with two uses: %v", err)
	}
	// Certificates: any id the CA vouches for, unless revoked.
	if p, err := r.Authenticate("", nil, "cam-9", "cam-9"); err != nil || p.Name != "cam-9" {
		t.Errorf("certificate device: %v", err)
	}
	if _, err := r.Authenticate("", nil, "pi-1", "pi-1"); !errors.Is(err, ErrRevoked) {
		t.Errorf("certificate of a revoked device: %v", err)
	}

	// Everything survives a restart.
	st.Close()
	r2, err := Open(openAt(t, path), c.now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Authenticate("new-1", []byte(devSecret), "", "new-1"); err != nil {
		t.Errorf("after restart: %v", err)
	}
	if _, err := r2.Authenticate("pi-1", []byte(secret), "", "pi-1"); !errors.Is(err, ErrRevoked) {
		t.Errorf("revocation lost on restart: %v", err)
	}
	if got := len(r2.Devices()); got != 3 {
		t.Errorf("%d identities after restart, want 3", got)
	}
}

func TestSigningKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "planner.db")
	st := openAt(t, path)
	r, err := Open(st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.EnsureSigningKey(); err != nil {
		t.Fatal(err)
	}
	first := r.PublicKeys()
	doc := protocol.Desired{Device: "pi", Generation: 1, Allocations: []protocol.Allocation{}}
	d, err := r.Sign(doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := protocol.VerifyDesired(d, first); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := r.RotateKey(); err != nil {
			t.Fatal(err)
		}
	}
	d, _ = r.Sign(doc)
	learned, err := protocol.VerifyDesired(d, first)
	if err != nil {
		t.Fatalf("a device pinned to the first key refused after 3 rotations: %v", err)
	}
	if len(learned) != 3 {
		t.Errorf("learned %d keys, want 3", len(learned))
	}
	if _, err := protocol.VerifyDesired(d, []ed25519.PublicKey{learned[2]}); err != nil {
		t.Errorf("the current key alone: %v", err)
	}
	st.Close()
	r2, err := Open(openAt(t, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.EnsureSigningKey(); err != nil {
		t.Fatal(err)
	}
	if got := r2.PublicKeys(); len(got) != 4 || !got[3].Equal(learned[2]) {
		t.Errorf("keys after restart: %d", len(got))
	}
}

func BenchmarkVerifySecret(b *testing.B) {
	h, _ := hashSecret("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")
	for b.Loop() {
		if ok, _ := verifySecret(h, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"); !ok {
			b.Fatal("no match")
		}
	}
}
