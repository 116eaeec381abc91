package main

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/tether-edge/tether/protocol"
)

// trustSettings are the planner-key and enrollment settings as given, from
// flags, environment and config file.
type trustSettings struct {
	Keys      []string // standard base64, from --planner-key / planner_keys
	KeysFrom  string   // "--planner-key", "TETHER_PLANNER_KEY" or "planner_keys in <file>"
	KeyFile   string
	Token     string
	TokenFrom string
	TokenFile string
}

// trust is what edged.Config gets.
type trust struct {
	keys  []ed25519.PublicKey
	token string
}

// load parses the keys and reads the files; every error names where the
// bad value came from.
func (s trustSettings) load() (trust, error) {
	var out trust
	var errs []error
	for i, k := range s.Keys {
		pub, err := protocol.ParseKey(strings.TrimSpace(k))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s (key %d of %d): %w", s.KeysFrom, i+1, len(s.Keys), err))
			continue
		}
		out.keys = append(out.keys, pub)
	}
	if s.KeyFile != "" {
		keys, err := readKeyFile(s.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("--planner-key-file: %w", err))
		}
		out.keys = append(out.keys, keys...)
	}
	switch {
	case s.Token != "" && s.TokenFile != "":
		errs = append(errs, fmt.Errorf("%s and --enroll-token-file both given: give one", s.TokenFrom))
	case s.Token != "":
		if _, err := protocol.ParseToken(s.Token); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.TokenFrom, err))
		}
		out.token = strings.TrimSpace(s.Token)
	case s.TokenFile != "":
		raw, err := os.ReadFile(s.TokenFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("--enroll-token-file: %w", err))
			break
		}
		tok := strings.TrimSpace(string(raw))
		if _, err := protocol.ParseToken(tok); err != nil {
			errs = append(errs, fmt.Errorf("--enroll-token-file %s: %w", s.TokenFile, err))
		}
		out.token = tok
	}
	return out, errors.Join(errs...)
}

// readKeyFile reads a planner key file (protocol.ParseKeyList).
func readKeyFile(path string) ([]ed25519.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return protocol.ParseKeyList(path, data)
}

// envKeys splits TETHER_PLANNER_KEY: one or more keys, separated by commas
// or white space.
func envKeys(v string) []string {
	return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}
