package protocol

import (
	"crypto/ed25519"
	"errors"
	"testing"
	"time"
)

func testKey(b byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	seed[0] = b
	return ed25519.NewKeyFromSeed(seed)
}

func pub(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

func TestSignAndVerify(t *testing.T) {
	k1, k2, k3, evil := testKey(1), testKey(2), testKey(3), testKey(9)
	doc := Desired{Device: "pi", Generation: 3, IssuedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Allocations: []Allocation{{ID: "j.g.0-a", Job: "j", Group: "g", Type: JobService, Tasks: []Task{{Name: "t", Driver: DriverExec, Config: TaskConfig{Command: []string{"/bin/true"}}}}}}}
	signed, err := SignDesired(doc, k1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyDesired(signed, []ed25519.PublicKey{pub(k1)}); err != nil {
		t.Fatalf("good signature refused: %v", err)
	}
	// Survives the wire.
	raw, _ := Encode(signed)
	back, err := DecodeDesired(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyDesired(back, []ed25519.PublicKey{pub(k1)}); err != nil {
		t.Fatalf("decoded signed document refused: %v", err)
	}

	if _, err := VerifyDesired(doc, []ed25519.PublicKey{pub(k1)}); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned: %v", err)
	}
	if _, err := VerifyDesired(signed, []ed25519.PublicKey{pub(k2)}); !errors.Is(err, ErrUntrustedKey) {
		t.Errorf("other key: %v", err)
	}
	for name, tamper := range map[string]func(*Desired){
		"device":     func(d *Desired) { d.Device = "other" },
		"generation": func(d *Desired) { d.Generation++ },
		"allocation": func(d *Desired) { d.Allocations[0].Job = "evil" },
		"removed":    func(d *Desired) { d.Allocations = nil },
	} {
		d := back
		d.Allocations = append([]Allocation(nil), back.Allocations...)
		tamper(&d)
		if _, err := VerifyDesired(d, []ed25519.PublicKey{pub(k1)}); !errors.Is(err, ErrBadSignature) {
			t.Errorf("tampered %s: %v", name, err)
		}
	}
	// A forger who copies the key id still fails.
	forged, _ := SignDesired(doc, evil, nil)
	forged.Signature.Key = KeyID(pub(k1))
	if _, err := VerifyDesired(forged, []ed25519.PublicKey{pub(k1)}); !errors.Is(err, ErrBadSignature) {
		t.Errorf("forged with a copied key id: %v", err)
	}

	// Rotation: k1 → k2 → k3; a device that trusts only k1 learns both.
	chain := []Endorsement{Endorse(k1, pub(k2)), Endorse(k2, pub(k3))}
	rotated, _ := SignDesired(doc, k3, chain)
	learned, err := VerifyDesired(rotated, []ed25519.PublicKey{pub(k1)})
	if err != nil {
		t.Fatalf("rotated key refused: %v", err)
	}
	if len(learned) != 2 || !learned[0].Equal(pub(k2)) || !learned[1].Equal(pub(k3)) {
		t.Errorf("learned %d keys, want k2 and k3", len(learned))
	}
	// An endorsement by an untrusted key teaches nothing.
	bad, _ := SignDesired(doc, evil, []Endorsement{Endorse(k2, pub(evil))})
	if _, err := VerifyDesired(bad, []ed25519.PublicKey{pub(k1)}); !errors.Is(err, ErrUntrustedKey) {
		t.Errorf("evil key endorsed by an untrusted key: %v", err)
	}
	// A tampered endorsement teaches nothing either.
	e := Endorse(k1, pub(evil))
	e.Key = EncodeKey(pub(testKey(8)))
	tampered, _ := SignDesired(doc, testKey(8), []Endorsement{e})
	if _, err := VerifyDesired(tampered, []ed25519.PublicKey{pub(k1)}); !errors.Is(err, ErrUntrustedKey) {
		t.Errorf("tampered endorsement: %v", err)
	}
}

func TestDecodeDesiredChecksSignatureShape(t *testing.T) {
	checkPaths(t, func(b []byte) error { _, err := DecodeDesired(b); return err },
		`{"device":"pi","generation":1,"issued_at":"2026-01-01T00:00:00Z","allocations":[],"signature":{"key":"xyz","sig":"AAAA","chain":[{"key":"no","by":"","sig":""}]}}`,
		"signature.key", "signature.sig", "signature.chain[0].key", "signature.chain[0].by", "signature.chain[0].sig")
}

func TestAdminAndEnrollDecoding(t *testing.T) {
	checkPaths(t, func(b []byte) error { _, err := DecodeAdminRequest(b); return err },
		`{"op":"token.create","role":"admin","labels":{"bad key":"x"}}`, "role", "labels.bad key")
	checkPaths(t, func(b []byte) error { _, err := DecodeAdminRequest(b); return err },
		`{"op":"enroll.create","uses":0}`, "uses", "ttl")
	checkPaths(t, func(b []byte) error { _, err := DecodeAdminRequest(b); return err },
		`{"op":"format.disk"}`, "op")
	checkPaths(t, func(b []byte) error { _, err := DecodeEnrollRequest(b); return err },
		`{"device":"a/b","secret":"c2hvcnQ"}`, "device", "secret")
	if _, err := ParseToken("0a1b2c3d4e5f.c2VjcmV0"); err != nil {
		t.Errorf("good token: %v", err)
	}
	for _, bad := range []string{"", "0a1b2c3d4e5f", "0A1B2C3D4E5F.c2VjcmV0", "short.c2VjcmV0", "0a1b2c3d4e5f.", "0a1b2c3d4e5f.***"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

// checkPaths decodes doc and checks that exactly the given field paths are
// reported, each once.
func checkPaths(t *testing.T, dec func([]byte) error, doc string, paths ...string) {
	t.Helper()
	got := map[string]int{}
	for _, fe := range FieldErrors(dec([]byte(doc))) {
		got[fe.Path]++
	}
	for _, p := range paths {
		if got[p] != 1 {
			t.Errorf("%s: path %q reported %d times; all: %v", doc, p, got[p], got)
		}
		delete(got, p)
	}
	if len(got) > 0 {
		t.Errorf("%s: unexpected errors at %v", doc, got)
	}
}
