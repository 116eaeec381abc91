package protocol

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Admin requests: an operator publishes a request to
// {root}/v1/admin/{token id}/{nonce} and the planner answers on
// .../{nonce}/result. The broker lets only that token publish there and only
// it read the answer, so the planner knows who asked and answers carrying a
// new secret reach nobody else. Neither is retained.

// Admin is the topic an operator with token id principal sends request
// nonce to; AdminResult the one the answer comes back on.
func (t Topics) Admin(principal, nonce string) string {
	return t.base() + "/admin/" + principal + "/" + nonce
}

// AdminResult is the topic of the answer to Admin(principal, nonce).
func (t Topics) AdminResult(principal, nonce string) string {
	return t.Admin(principal, nonce) + "/result"
}

// AdminFilter matches every admin request.
func (t Topics) AdminFilter() string { return t.base() + "/admin/+/+" }

// ParseAdmin splits an admin request topic into the token id and the nonce.
func (t Topics) ParseAdmin(topic string) (principal, nonce string, err error) {
	return t.parsePair(topic, "admin")
}

// Enrollment: a device that holds a fleet enrollment token connects as
// token/{token id} with its device id as client id, publishes an
// EnrollRequest to {root}/v1/enroll/{token id}/{device} and reads the answer
// on .../result.

// Enroll is the topic device sends its enrollment request to.
func (t Topics) Enroll(token, device string) string {
	return t.base() + "/enroll/" + token + "/" + device
}

// EnrollResult is the topic of the answer to Enroll(token, device).
func (t Topics) EnrollResult(token, device string) string {
	return t.Enroll(token, device) + "/result"
}

// EnrollFilter matches every enrollment request.
func (t Topics) EnrollFilter() string { return t.base() + "/enroll/+/+" }

// ParseEnroll splits an enrollment request topic into token id and device.
func (t Topics) ParseEnroll(topic string) (token, device string, err error) {
	return t.parsePair(topic, "enroll")
}

func (t Topics) parsePair(topic, first string) (string, string, error) {
	prefix := t.base() + "/" + first + "/"
	if !strings.HasPrefix(topic, prefix) {
		return "", "", fmt.Errorf("topic %q: not under %q", topic, prefix)
	}
	parts := strings.Split(strings.TrimPrefix(topic, prefix), "/")
	if len(parts) != 2 {
		return "", "", fmt.Errorf("topic %q: want %s{id}/{id}", topic, prefix)
	}
	for _, p := range parts {
		if err := ValidateID(p); err != nil {
			return "", "", fmt.Errorf("topic %q: %w", topic, err)
		}
	}
	return parts[0], parts[1], nil
}

// AdminOp names an admin request.
type AdminOp string

// Admin operations.
const (
	OpTokenCreate  AdminOp = "token.create"  // Role, Name → Token (shown once)
	OpTokenList    AdminOp = "token.list"    // → Tokens
	OpTokenRevoke  AdminOp = "token.revoke"  // ID
	OpDeviceAdd    AdminOp = "device.add"    // ID, Labels → Secret (shown once)
	OpDeviceList   AdminOp = "device.list"   // → Identities
	OpDeviceRevoke AdminOp = "device.revoke" // ID: also disconnects it
	OpEnrollCreate AdminOp = "enroll.create" // Uses, TTL, Labels, Name → Token (shown once)
	OpEnrollList   AdminOp = "enroll.list"   // → Tokens
	OpKeyRotate    AdminOp = "key.rotate"    // → Keys
	OpKeyList      AdminOp = "key.list"      // → Keys
)

var adminOps = map[AdminOp]bool{
	OpTokenCreate: true, OpTokenList: true, OpTokenRevoke: true,
	OpDeviceAdd: true, OpDeviceList: true, OpDeviceRevoke: true,
	OpEnrollCreate: true, OpEnrollList: true, OpKeyRotate: true, OpKeyList: true,
}

// AdminRequest is an operator's request; which fields matter depends on Op.
type AdminRequest struct {
	Op     AdminOp           `json:"op"`
	Role   Role              `json:"role,omitempty"`
	Name   string            `json:"name,omitempty"` // a note on a token: who or what it is for
	ID     string            `json:"id,omitempty"`   // device id or token id
	Uses   int               `json:"uses,omitempty"`
	TTL    Duration          `json:"ttl,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// DecodeAdminRequest reads and validates an admin request.
func DecodeAdminRequest(data []byte) (AdminRequest, error) {
	var r AdminRequest
	if err := decodeStrict(data, &r); err != nil {
		return AdminRequest{}, err
	}
	var errs []error
	if !adminOps[r.Op] {
		errs = append(errs, fieldErr("op", "unknown operation %q", r.Op))
	}
	if len(r.Name) > 200 {
		errs = append(errs, fieldErr("name", "longer than 200 bytes"))
	}
	switch r.Op {
	case OpTokenCreate:
		if _, err := ParseRole(string(r.Role)); err != nil {
			errs = append(errs, fieldErr("role", "%v", err))
		}
		if r.TTL < 0 {
			errs = append(errs, fieldErr("ttl", "must not be negative"))
		}
	case OpTokenRevoke, OpDeviceAdd, OpDeviceRevoke:
		if err := ValidateID(r.ID); err != nil {
			errs = append(errs, fieldErr("id", "%v", err))
		}
	case OpEnrollCreate:
		if r.Uses < 1 {
			errs = append(errs, fieldErr("uses", "want at least 1, got %d", r.Uses))
		}
		if r.TTL <= 0 {
			errs = append(errs, fieldErr("ttl", "required: how long the token stays valid"))
		}
	}
	for _, k := range sortedKeys(r.Labels) {
		if err := ValidateID(k); err != nil {
			errs = append(errs, fieldErr("labels."+k, "invalid label key: %v", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return AdminRequest{}, err
	}
	return r, nil
}

// AdminResult is the planner's answer. Secrets appear once, in the answer to
// the request that created them, and are never stored in the clear.
type AdminResult struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Token is a new token, "<id>.<secret>".
	Token string `json:"token,omitempty"`
	// Secret is a new device's password.
	Secret     string         `json:"secret,omitempty"`
	Tokens     []TokenInfo    `json:"tokens,omitempty"`
	Identities []IdentityInfo `json:"identities,omitempty"`
	Keys       []KeyInfo      `json:"keys,omitempty"`
}

// DecodeAdminResult reads an admin answer.
func DecodeAdminResult(data []byte) (AdminResult, error) {
	var r AdminResult
	if err := decodeStrict(data, &r); err != nil {
		return AdminResult{}, err
	}
	return r, nil
}

// TokenInfo describes a token without its secret.
type TokenInfo struct {
	ID        string            `json:"id"`
	Role      Role              `json:"role"`
	Name      string            `json:"name,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	ExpiresAt *time.Time        `json:"expires_at,omitempty"`
	UsesLeft  int               `json:"uses_left,omitempty"` // enrollment tokens
	Labels    map[string]string `json:"labels,omitempty"`    // enrollment tokens
	Revoked   bool              `json:"revoked,omitempty"`
}

// IdentityInfo describes a device identity without its secret.
type IdentityInfo struct {
	Device     string            `json:"device"`
	CreatedAt  time.Time         `json:"created_at"`
	EnrolledBy string            `json:"enrolled_by,omitempty"` // enrollment token id
	Labels     map[string]string `json:"labels,omitempty"`
	Revoked    bool              `json:"revoked,omitempty"`
}

// KeyInfo describes a planner signing key.
type KeyInfo struct {
	ID        string    `json:"id"`
	Key       string    `json:"key"` // public key, standard base64
	CreatedAt time.Time `json:"created_at"`
	Current   bool      `json:"current,omitempty"`
}

// EnrollRequest is a new device's request for its identity. The device
// chooses its own secret, so the answer carries nothing worth stealing.
type EnrollRequest struct {
	Device string `json:"device"`
	// Secret is the password the device will connect with: at least 32
	// random bytes, base64url without padding.
	Secret string `json:"secret"`
}

// MinSecretBytes is the least entropy a device secret may carry.
const MinSecretBytes = 32

// DecodeEnrollRequest reads and validates an enrollment request.
func DecodeEnrollRequest(data []byte) (EnrollRequest, error) {
	var r EnrollRequest
	if err := decodeStrict(data, &r); err != nil {
		return EnrollRequest{}, err
	}
	var errs []error
	if err := ValidateID(r.Device); err != nil {
		errs = append(errs, fieldErr("device", "%v", err))
	}
	if b, err := base64.RawURLEncoding.DecodeString(r.Secret); err != nil || len(b) < MinSecretBytes || len(b) > 256 {
		errs = append(errs, fieldErr("secret", "want %d to 256 random bytes, base64url without padding", MinSecretBytes))
	}
	if err := errors.Join(errs...); err != nil {
		return EnrollRequest{}, err
	}
	return r, nil
}

// EnrollResult answers an EnrollRequest.
type EnrollResult struct {
	Device string `json:"device"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	// Labels are the enrollment token's labels for the device to report.
	Labels map[string]string `json:"labels,omitempty"`
	// PlannerKeys are the planner's public keys (standard base64), current
	// last, for a device that has none pinned.
	PlannerKeys []string `json:"planner_keys,omitempty"`
}

// DecodeEnrollResult reads and validates an enrollment answer.
func DecodeEnrollResult(data []byte) (EnrollResult, error) {
	var r EnrollResult
	if err := decodeStrict(data, &r); err != nil {
		return EnrollResult{}, err
	}
	var errs []error
	if err := ValidateID(r.Device); err != nil {
		errs = append(errs, fieldErr("device", "%v", err))
	}
	for i, k := range r.PlannerKeys {
		if _, err := ParseKey(k); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("planner_keys[%d]", i), "%v", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return EnrollResult{}, err
	}
	return r, nil
}

// Token is an operator's, viewer's or enrollment token as handed out:
// "<id>.<secret>". Over MQTT the username is TokenUsername(id) and the
// password the secret.
type Token struct {
	ID     string
	Secret string
}

// String is the token as handed out.
func (t Token) String() string { return t.ID + "." + t.Secret }

// ParseToken reads a token as handed out.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	id, secret, ok := strings.Cut(s, ".")
	if !ok || secret == "" {
		return Token{}, errors.New("token: want <id>.<secret> as printed when it was created")
	}
	if !isTokenID(id) {
		return Token{}, fmt.Errorf("token: id %q is not 12 lowercase hex digits", id)
	}
	if _, err := base64.RawURLEncoding.DecodeString(secret); err != nil {
		return Token{}, errors.New("token: the part after the '.' is not base64url")
	}
	return Token{ID: id, Secret: secret}, nil
}

func isTokenID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
