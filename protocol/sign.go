package protocol

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Signature is the planner's ed25519 signature of a desired document. It
// covers the document encoded without its signature (see SignedBytes), so
// the device id, the generation and every allocation are covered.
type Signature struct {
	// Key is the id (KeyID) of the key that signed.
	Key string `json:"key"`
	// Sig is the signature, standard base64.
	Sig string `json:"sig"`
	// Chain lets a device that trusts an older planner key learn the
	// current one: each endorsement is a newer key signed by an older one,
	// oldest first. It is how keys rotate without re-flashing devices.
	Chain []Endorsement `json:"chain,omitempty"`
}

// Endorsement is a planner key signed by its predecessor.
type Endorsement struct {
	Key string `json:"key"` // the endorsed public key, standard base64
	By  string `json:"by"`  // KeyID of the endorsing key
	Sig string `json:"sig"` // standard base64 signature over endorsementBytes(Key)
}

// Sentinel errors of VerifyDesired, for callers that report why.
var (
	ErrUnsigned     = errors.New("desired document is not signed")
	ErrUntrustedKey = errors.New("desired document is signed by a key this device does not trust")
	ErrBadSignature = errors.New("desired document signature does not verify")
)

// Domain separation: a signature made for one purpose never verifies for
// another.
const (
	desiredContext     = "tether/v1 desired\n"
	endorsementContext = "tether/v1 key endorsement\n"
)

// KeyID names a public key: the first 8 bytes of its SHA-256, in hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// EncodeKey and ParseKey write and read a public key as standard base64,
// the form used in config files, enrollment answers and endorsements.
func EncodeKey(pub ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(pub) }

// ParseKey reads a public key written by EncodeKey.
func ParseKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("public key: not base64: %w", err)
	}
	if len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key: %d bytes, want %d (ed25519)", len(b), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(b), nil
}

// SignedBytes is what a desired document's signature covers: the document
// encoded without its signature, after a context string.
func SignedBytes(d Desired) ([]byte, error) {
	d.Signature = nil
	b, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	return append([]byte(desiredContext), b...), nil
}

// SignDesired returns d signed with key; chain is the endorsement chain to
// carry (see Signature.Chain).
func SignDesired(d Desired, key ed25519.PrivateKey, chain []Endorsement) (Desired, error) {
	msg, err := SignedBytes(d)
	if err != nil {
		return Desired{}, err
	}
	d.Signature = &Signature{
		Key:   KeyID(key.Public().(ed25519.PublicKey)),
		Sig:   base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg)),
		Chain: chain,
	}
	return d, nil
}

// Endorse signs next with by: devices that trust by learn next from it.
func Endorse(by ed25519.PrivateKey, next ed25519.PublicKey) Endorsement {
	enc := EncodeKey(next)
	return Endorsement{
		Key: enc,
		By:  KeyID(by.Public().(ed25519.PublicKey)),
		Sig: base64.StdEncoding.EncodeToString(ed25519.Sign(by, []byte(endorsementContext+enc))),
	}
}

// VerifyDesired checks d's signature against the trusted keys, extended by
// the endorsements in its chain that a trusted key signed. It returns the
// keys the chain added, which the caller should trust from now on, but only
// once the document itself verified (it does so: learned is nil on error).
// It does not check the device id or the generation; the caller does.
func VerifyDesired(d Desired, trusted []ed25519.PublicKey) (learned []ed25519.PublicKey, err error) {
	if d.Signature == nil {
		return nil, ErrUnsigned
	}
	byID := make(map[string]ed25519.PublicKey, len(trusted)+len(d.Signature.Chain))
	for _, k := range trusted {
		byID[KeyID(k)] = k
	}
	for _, e := range d.Signature.Chain {
		signer, ok := byID[e.By]
		if !ok {
			continue
		}
		next, err := ParseKey(e.Key)
		if err != nil {
			continue
		}
		sig, err := base64.StdEncoding.DecodeString(e.Sig)
		if err != nil || !ed25519.Verify(signer, []byte(endorsementContext+e.Key), sig) {
			continue
		}
		if _, known := byID[KeyID(next)]; !known {
			byID[KeyID(next)] = next
			learned = append(learned, next)
		}
	}
	key, ok := byID[d.Signature.Key]
	if !ok {
		return nil, fmt.Errorf("%w (key %s)", ErrUntrustedKey, d.Signature.Key)
	}
	sig, err := base64.StdEncoding.DecodeString(d.Signature.Sig)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64", ErrBadSignature)
	}
	msg, err := SignedBytes(d)
	if err != nil {
		return nil, err
	}
	if !ed25519.Verify(key, msg, sig) {
		return nil, ErrBadSignature
	}
	// Only keys on the way to the signing key matter, but every learned
	// key was endorsed by a trusted one, so trusting all is sound.
	return learned, nil
}

// validateSignature checks the shape of a signature block, not whether it
// verifies.
func validateSignature(s Signature) []error {
	var errs []error
	if !isKeyID(s.Key) {
		errs = append(errs, fieldErr("signature.key", "want a key id of 16 hex digits, got %q", s.Key))
	}
	if b, err := base64.StdEncoding.DecodeString(s.Sig); err != nil || len(b) != ed25519.SignatureSize {
		errs = append(errs, fieldErr("signature.sig", "want %d bytes of standard base64", ed25519.SignatureSize))
	}
	for i, e := range s.Chain {
		p := fmt.Sprintf("signature.chain[%d]", i)
		if _, err := ParseKey(e.Key); err != nil {
			errs = append(errs, fieldErr(p+".key", "%v", err))
		}
		if !isKeyID(e.By) {
			errs = append(errs, fieldErr(p+".by", "want a key id of 16 hex digits, got %q", e.By))
		}
		if b, err := base64.StdEncoding.DecodeString(e.Sig); err != nil || len(b) != ed25519.SignatureSize {
			errs = append(errs, fieldErr(p+".sig", "want %d bytes of standard base64", ed25519.SignatureSize))
		}
	}
	return errs
}

func isKeyID(s string) bool {
	if len(s) != 16 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// ParseKeyList reads a planner key file as the server writes it
// (PlannerKeyFile): one standard-base64 public key per line, blank lines and
// lines starting with '#' skipped. name is used in errors; every bad line
// is reported, and a list without any key is an error: it was meant to
// hold one.
func ParseKeyList(name string, data []byte) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	var errs []error
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParseKey(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s line %d: %w", name, n+1, err))
			continue
		}
		keys = append(keys, k)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no key in it (one standard-base64 ed25519 public key per line)", name)
	}
	return keys, nil
}
