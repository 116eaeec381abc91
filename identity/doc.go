// Package identity owns who may connect to a secure Tether server and as
// what: device identities, operator and viewer tokens, fleet enrollment
// tokens, and the planner's signing keys. It keeps them in the planner's
// store (secrets only as argon2id hashes), answers the broker's
// authentication and ACL questions from memory (see Authenticator; the
// topic rules themselves are protocol.Topics.Allowed), and performs the
// operations of the admin API (see Registry).
package identity
