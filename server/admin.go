package server

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/identity"
	"github.com/tether-edge/tether/protocol"
)

// admin answers operators' admin requests and devices' enrollment requests
// over MQTT. The broker's ACL decides who may ask (the token id in an admin
// topic is the asker's own; an enrollment topic carries the enrollment
// token the device authenticated with), so admin trusts the topic.
type admin struct {
	reg         *identity.Registry
	bus         plannerConn
	topics      protocol.Topics
	log         zerolog.Logger
	keysChanged func() error
	// external: the broker is not ours, so identities are not ours to
	// manage (errExternalBroker); the signing keys still are.
	external bool

	// Operators' requests and devices' enrollments queue apart, so that a
	// flood of enrollment requests cannot starve the operators.
	work, enrollWork chan bus.Message
}

// start subscribes and serves requests until ctx ends. Hashing a secret
// takes milliseconds, so requests are handled off the client's dispatch
// goroutine, one at a time.
func (a *admin) start(ctx context.Context) error {
	a.work, a.enrollWork = make(chan bus.Message, 256), make(chan bus.Message, 256)
	enrollPrefix := a.topics.Base() + "/enroll/"
	enqueue := func(m bus.Message) {
		q, name := a.work, "admin"
		if strings.HasPrefix(m.Topic, enrollPrefix) {
			q, name = a.enrollWork, "enrollment"
		}
		select {
		case q <- m:
		default:
			a.log.Warn().Str("topic", m.Topic).Msg(name + " queue full: request dropped")
		}
	}
	for _, f := range []string{a.topics.AdminFilter(), a.topics.EnrollFilter()} {
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := a.bus.Subscribe(sctx, f, 1, enqueue)
		cancel()
		if err != nil {
			return err
		}
	}
	for _, q := range []chan bus.Message{a.work, a.enrollWork} {
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case m := <-q:
					a.handle(ctx, m)
				}
			}
		}()
	}
	return nil
}

func (a *admin) handle(ctx context.Context, m bus.Message) {
	if m.Retained || len(m.Payload) == 0 {
		return // requests are never retained; a retained one is stale
	}
	if principal, nonce, err := a.topics.ParseAdmin(m.Topic); err == nil {
		res := a.serveAdmin(principal, m.Payload)
		a.reply(ctx, a.topics.AdminResult(principal, nonce), res)
		return
	}
	if token, device, err := a.topics.ParseEnroll(m.Topic); err == nil {
		res := a.serveEnroll(token, device, m.Payload)
		a.reply(ctx, a.topics.EnrollResult(token, device), res)
		return
	}
	a.log.Debug().Str("topic", m.Topic).Msg("ignoring a message on an admin topic of unknown shape")
}

func (a *admin) reply(ctx context.Context, topic string, v any) {
	payload, err := protocol.Encode(v)
	if err != nil {
		a.log.Error().Err(err).Msg("encode admin answer")
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.bus.Publish(pctx, topic, payload, false, 1); err != nil {
		a.log.Warn().Err(err).Str("topic", topic).Msg("publish admin answer")
	}
}

func (a *admin) serveAdmin(principal string, payload []byte) protocol.AdminResult {
	req, err := protocol.DecodeAdminRequest(payload)
	if err != nil {
		return protocol.AdminResult{Error: err.Error()}
	}
	log := a.log.Info().Str("by", principal).Str("op", string(req.Op)).Str("id", req.ID).Str("role", string(req.Role))
	res, err := a.do(req)
	if err != nil {
		a.log.Warn().Str("by", principal).Str("op", string(req.Op)).Str("id", req.ID).Err(err).Msg("admin request refused")
		return protocol.AdminResult{Error: err.Error()}
	}
	res.OK = true
	log.Msg("admin request done")
	return res
}

func (a *admin) do(req protocol.AdminRequest) (protocol.AdminResult, error) {
	var res protocol.AdminResult
	if a.external && managesIdentities(req.Op) {
		return res, errExternalBroker
	}
	switch req.Op {
	case protocol.OpTokenCreate:
		tok, info, err := a.reg.CreateToken(req.Role, req.Name, time.Duration(req.TTL))
		if err != nil {
			return res, err
		}
		res.Token, res.Tokens = tok.String(), []protocol.TokenInfo{info}
	case protocol.OpEnrollCreate:
		tok, info, err := a.reg.CreateEnrollToken(req.Name, req.Uses, time.Duration(req.TTL), req.Labels)
		if err != nil {
			return res, err
		}
		res.Token, res.Tokens = tok.String(), []protocol.TokenInfo{info}
	case protocol.OpTokenList, protocol.OpEnrollList:
		for _, t := range a.reg.Tokens() {
			if (t.Role == protocol.RoleEnroll) == (req.Op == protocol.OpEnrollList) {
				res.Tokens = append(res.Tokens, t)
			}
		}
	case protocol.OpTokenRevoke:
		return res, a.reg.RevokeToken(req.ID)
	case protocol.OpDeviceAdd:
		secret, err := a.reg.AddDevice(req.ID, req.Labels)
		if err != nil {
			return res, err
		}
		res.Secret = secret
	case protocol.OpDeviceList:
		res.Identities = a.reg.Devices()
	case protocol.OpDeviceRevoke:
		return res, a.reg.RevokeDevice(req.ID)
	case protocol.OpKeyList:
		res.Keys = a.reg.Keys()
	case protocol.OpKeyRotate:
		keys, err := a.reg.RotateKey()
		if err != nil {
			return res, err
		}
		res.Keys = keys
		if err := a.keysChanged(); err != nil {
			return res, err
		}
	default:
		return res, errors.New("unsupported operation")
	}
	return res, nil
}

func (a *admin) serveEnroll(token, device string, payload []byte) protocol.EnrollResult {
	res := protocol.EnrollResult{Device: device}
	req, err := protocol.DecodeEnrollRequest(payload)
	if err == nil && req.Device != device {
		err = errors.New("device: does not match the topic's device id")
	}
	if err == nil && a.external {
		err = errExternalBroker
	}
	if err == nil {
		res.Labels, err = a.reg.Enroll(token, device, req.Secret)
	}
	if err != nil {
		a.log.Warn().Str("device", device).Str("enroll_token", token).Err(err).Msg("enrollment refused")
		res.Error = err.Error()
		return res
	}
	for _, k := range a.reg.PublicKeys() {
		res.PlannerKeys = append(res.PlannerKeys, protocol.EncodeKey(k))
	}
	res.OK = true
	a.log.Info().Str("device", device).Str("enroll_token", token).Msg("device enrolled")
	return res
}

// managesIdentities reports whether op creates, lists or revokes
// credentials: the broker's job when the broker is external.
func managesIdentities(op protocol.AdminOp) bool {
	switch op {
	case protocol.OpTokenCreate, protocol.OpTokenList, protocol.OpTokenRevoke,
		protocol.OpDeviceAdd, protocol.OpDeviceList, protocol.OpDeviceRevoke,
		protocol.OpEnrollCreate, protocol.OpEnrollList:
		return true
	}
	return false
}
