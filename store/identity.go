package store

import (
	"time"

	"github.com/tether-edge/tether/protocol"
	bolt "go.etcd.io/bbolt"
)

var (
	bucketCredentials = []byte("credentials")
	bucketSigningKeys = []byte("signing_keys")
)

// Credential kinds.
const (
	KindDevice = "device" // a device identity, keyed by device id
	KindToken  = "token"  // an operator, viewer or enrollment token, keyed by token id
)

// Credential is a device identity or a token. Secrets are kept only as a
// slow hash (Hash, a PHC string).
type Credential struct {
	Kind       string            `json:"kind"`
	ID         string            `json:"id"`
	Role       protocol.Role     `json:"role"`
	Name       string            `json:"name,omitempty"`
	Hash       string            `json:"hash,omitempty"` // "" for a device known only by its certificate
	CreatedAt  time.Time         `json:"created_at"`
	ExpiresAt  *time.Time        `json:"expires_at,omitempty"`
	UsesLeft   int               `json:"uses_left,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	EnrolledBy string            `json:"enrolled_by,omitempty"`
	RevokedAt  *time.Time        `json:"revoked_at,omitempty"`
}

// Key is the credential's key in its bucket.
func (c Credential) Key() string { return c.Kind + "/" + c.ID }

// SigningKey is one of the planner's ed25519 keys, oldest first; the last
// is the one in use. Endorsement is the previous key's signature of it.
type SigningKey struct {
	ID          string                `json:"id"`
	Private     []byte                `json:"private"`
	CreatedAt   time.Time             `json:"created_at"`
	Endorsement *protocol.Endorsement `json:"endorsement,omitempty"`
}

func ensureIdentityBuckets(tx *bolt.Tx) error {
	for _, b := range [][]byte{bucketCredentials, bucketSigningKeys} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return nil
}

// Credentials returns every credential, revoked ones included.
func (s *Store) Credentials() ([]Credential, error) {
	var out []Credential
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCredentials).ForEach(func(k, _ []byte) error {
			var c Credential
			if _, err := getJSON(tx.Bucket(bucketCredentials), k, &c); err != nil {
				return err
			}
			out = append(out, c)
			return nil
		})
	})
	return out, err
}

// PutCredentials writes credentials in one transaction: all or none.
func (s *Store) PutCredentials(cs ...Credential) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketCredentials)
		for _, c := range cs {
			if err := putJSON(b, []byte(c.Key()), c); err != nil {
				return err
			}
		}
		return nil
	})
}

// SigningKeys returns the planner's keys, oldest first.
func (s *Store) SigningKeys() ([]SigningKey, error) {
	var out []SigningKey
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSigningKeys)
		return b.ForEach(func(k, _ []byte) error {
			var key SigningKey
			if _, err := getJSON(b, k, &key); err != nil {
				return err
			}
			out = append(out, key)
			return nil
		})
	})
	return out, err
}

// AddSigningKey appends a key; it becomes the one in use.
func (s *Store) AddSigningKey(k SigningKey) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSigningKeys)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		return putJSON(b, versionKey(seq), k)
	})
}
