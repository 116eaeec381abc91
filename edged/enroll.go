package edged

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
)

// Enrollment, for devices whose firmware carries a fleet enrollment token
// instead of credentials of their own. On its first start such a device
// chooses a random secret (kept in edged.db from then on, so every attempt
// and every restart sends the same one), connects with the token
// (username token/<id>, client id its device id, clean session), publishes
// an EnrollRequest to enroll/<token id>/<device> and waits for the
// planner's EnrollResult on .../result, asking again with backoff while no
// answer comes. An answer that accepts is stored in one transaction: the
// credentials (username the device id, password the secret), the token's
// labels and the planner's keys. A refusal ends edged with the planner's
// reason, and so does the broker refusing the token at CONNECT: a used-up
// or expired token does not get better by asking again.
// Once enrolled, edged never enrolls again.

// errNoPlannerKey: edged would refuse every desired document.
var errNoPlannerKey = errors.New("no planner key: edged would refuse every desired document. " +
	"Give the planner's public key with --planner-key or --planner-key-file (the server writes it to planner-key.pub in its data dir), " +
	"enroll with --enroll-token, or accept unsigned documents with --insecure-accept-unsigned (insecure)")

// maxEnrollWait bounds the wait for an answer before asking again.
const maxEnrollWait = 2 * time.Minute

// trustedKeys are the configured planner keys and those stored in
// edged.db, without duplicates.
func (a *Agent) trustedKeys() ([]ed25519.PublicKey, error) {
	stored, err := a.state.plannerKeys()
	if err != nil {
		return nil, err
	}
	var out []ed25519.PublicKey
	seen := map[string]bool{}
	for _, k := range append(slices.Clone(a.cfg.PlannerKeys), stored...) {
		if id := protocol.KeyID(k); !seen[id] {
			seen[id] = true
			out = append(out, k)
		}
	}
	return out, nil
}

// willEnroll reports whether Run will enroll: a token, no stored identity
// and no configured username.
func (a *Agent) willEnroll() (bool, error) {
	id, err := a.state.identity()
	if err != nil {
		return false, err
	}
	return a.token != nil && id == nil && a.cfg.Username == "", nil
}

// checkTrust refuses a configuration under which no desired document
// could ever be accepted.
func (a *Agent) checkTrust() error {
	keys, err := a.trustedKeys()
	if err != nil {
		return err
	}
	enroll, err := a.willEnroll()
	if err != nil {
		return err
	}
	if len(keys) == 0 && !enroll && !a.cfg.AcceptUnsigned {
		return errNoPlannerKey
	}
	return nil
}

// setupIdentity settles what edged connects and reports with, enrolling
// first if it is due. Credentials: the configured username and password
// win over the stored ones, which win over the token. Labels: the
// configured ones win over the enrollment token's.
func (a *Agent) setupIdentity(ctx context.Context) error {
	id, err := a.state.identity()
	if err != nil {
		return err
	}
	switch {
	case a.cfg.Username != "":
		if a.token != nil && id == nil {
			a.log.Warn().Str("enroll_token", a.token.ID).Msg("not enrolling: a username is configured and wins over the enroll token")
		}
	case id != nil:
		if a.token != nil {
			a.log.Debug().Str("enrolled_by", id.EnrolledBy).Msg("already enrolled; the enroll token is not used again")
		}
	case a.token != nil:
		if id, err = a.enroll(ctx, *a.token); err != nil {
			return err
		}
	}
	a.username, a.password = a.cfg.Username, a.cfg.Password
	a.labels = map[string]string{}
	if id != nil {
		if a.cfg.Username == "" {
			a.username, a.password = id.Username, id.Password
		}
		for k, v := range id.Labels {
			a.labels[k] = v
		}
	}
	for k, v := range a.cfg.Labels {
		a.labels[k] = v
	}
	if a.trusted, err = a.trustedKeys(); err != nil {
		return err
	}
	if len(a.trusted) == 0 && !a.cfg.AcceptUnsigned {
		return fmt.Errorf("enrolled, but the planner named no key: %w", errNoPlannerKey)
	}
	a.log.Info().Strs("planner_keys", keyIDs(a.trusted)).Bool("accept_unsigned", a.cfg.AcceptUnsigned).Msg("verifying desired documents")
	return nil
}

// enroll obtains this device's identity with the enrollment token and
// stores it; see the comment at the top of the file.
func (a *Agent) enroll(ctx context.Context, tok protocol.Token) (*identity, error) {
	secret, err := a.state.enrollSecret()
	if err != nil {
		return nil, fmt.Errorf("enrollment: choose a secret: %w", err)
	}
	dev, t := a.cfg.DeviceID, a.cfg.Topics
	log := a.log.With().Str("enroll_token", tok.ID).Logger()
	req, err := protocol.Encode(protocol.EnrollRequest{Device: dev, Secret: secret})
	if err != nil {
		return nil, err
	}
	// The handler runs on the client's dispatch goroutine: it only hands
	// the answer over, never blocks.
	answers := make(chan protocol.EnrollResult, 4)
	onAnswer := func(m bus.Message) {
		res, err := protocol.DecodeEnrollResult(m.Payload)
		if err != nil {
			log.Warn().Err(err).Msg("enrollment: ignoring an invalid answer")
			return
		}
		if res.Device != dev {
			log.Warn().Str("for", res.Device).Msg("enrollment: ignoring an answer for another device")
			return
		}
		select {
		case answers <- res:
		default:
		}
	}
	var c *bus.Client
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	log.Info().Strs("brokers", a.cfg.Brokers).Msg("enrolling with the fleet enrollment token")
	wait := a.enrollWait
	for attempt := 1; ; attempt++ {
		if c == nil {
			c, err = a.dialEnroll(ctx, tok, wait, t.EnrollResult(tok.ID, dev), onAnswer)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				if errors.Is(err, bus.ErrNotAuthorized) {
					// The broker does not say why; the server refuses a
					// token at CONNECT for all of these.
					return nil, fmt.Errorf("enrollment: the broker refused enroll token %s (unknown, expired, used up or revoked, or device id %s is already enrolled): %w", tok.ID, dev, err)
				}
				log.Warn().Err(err).Int("attempt", attempt).Dur("retry_in", wait).
					Msg("enrollment: no broker connection (unreachable, or it refused the token); retrying")
				if !sleep(ctx, wait) {
					return nil, ctx.Err()
				}
				wait = min(2*wait, maxEnrollWait)
				continue
			}
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.Publish(pctx, t.Enroll(tok.ID, dev), req, false, 1)
		cancel()
		if err != nil {
			log.Warn().Err(err).Int("attempt", attempt).Msg("enrollment: send request")
		} else {
			log.Info().Int("attempt", attempt).Dur("wait", wait).Msg("enrollment request sent; waiting for the planner")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case res := <-answers:
			return a.enrolled(tok, secret, res)
		case <-time.After(wait):
			log.Warn().Int("attempt", attempt).Msg("enrollment: no answer from the planner yet; asking again")
		}
		wait = min(2*wait, maxEnrollWait)
	}
}

// dialEnroll connects with the token and subscribes to the answer topic.
func (a *Agent) dialEnroll(ctx context.Context, tok protocol.Token, timeout time.Duration, answerTopic string, h bus.Handler) (*bus.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, max(timeout, 10*time.Second))
	defer cancel()
	c, err := bus.Dial(dctx, bus.Config{
		Brokers:        a.cfg.Brokers,
		ClientID:       a.cfg.DeviceID,
		Username:       protocol.TokenUsername(tok.ID),
		Password:       tok.Secret,
		CleanSession:   true,
		KeepAlive:      a.cfg.KeepAlive,
		ConnectTimeout: min(10*time.Second, a.cfg.KeepAlive),
		Log:            a.log,
	})
	if err != nil {
		return nil, err
	}
	if err := c.Subscribe(dctx, answerTopic, 1, h); err != nil {
		c.Close()
		return nil, fmt.Errorf("subscribe to %s: %w", answerTopic, err)
	}
	return c, nil
}

// enrolled stores an accepting answer, or turns a refusal into the error
// edged stops with.
func (a *Agent) enrolled(tok protocol.Token, secret string, res protocol.EnrollResult) (*identity, error) {
	if !res.OK {
		reason := res.Error
		if reason == "" {
			reason = "no reason given"
		}
		return nil, fmt.Errorf("enrollment with token %s refused by the planner: %s", tok.ID, reason)
	}
	keys := make([]ed25519.PublicKey, 0, len(res.PlannerKeys))
	for _, s := range res.PlannerKeys {
		k, err := protocol.ParseKey(s) // DecodeEnrollResult checked them
		if err != nil {
			return nil, fmt.Errorf("enrollment answer: %w", err)
		}
		keys = append(keys, k)
	}
	if len(a.cfg.PlannerKeys) > 0 {
		// Configured keys win; the answer's are only compared.
		if !sameKeys(keys, a.cfg.PlannerKeys) {
			a.log.Warn().Strs("planner", keyIDs(keys)).Strs("configured", keyIDs(a.cfg.PlannerKeys)).
				Msg("enrollment: the planner named other keys than the configured ones; trusting the configured keys only")
		}
		keys = nil
	}
	now := time.Now()
	id := identity{Username: a.cfg.DeviceID, Password: secret, Labels: res.Labels, EnrolledBy: tok.ID, EnrolledAt: now.UTC()}
	if err := a.state.putIdentity(id, keys, now); err != nil {
		return nil, fmt.Errorf("enrollment: store identity: %w", err)
	}
	a.log.Info().Str("enroll_token", tok.ID).Strs("planner_keys", keyIDs(keys)).Int("labels", len(res.Labels)).Msg("enrolled")
	return &id, nil
}

func keyIDs(keys []ed25519.PublicKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = protocol.KeyID(k)
	}
	slices.Sort(out)
	return out
}

func sameKeys(a, b []ed25519.PublicKey) bool {
	return slices.Equal(slices.Compact(keyIDs(a)), slices.Compact(keyIDs(b)))
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
