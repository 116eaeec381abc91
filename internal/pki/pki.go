package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tether-edge/tether/protocol"
)

// File names inside the directory of Init and IssueClient.
const (
	CACertFile     = "ca.pem"
	CAKeyFile      = "ca-key.pem"
	ServerCertFile = "server.pem"
	ServerKeyFile  = "server-key.pem"
	// ClientsDir holds one directory per client, named after it, with
	// NAME.pem and NAME-key.pem: what one device needs besides ca.pem.
	ClientsDir = "clients"
)

const (
	caCommonName     = "Tether CA"
	serverCommonName = "Tether broker"
	caValidity       = 10 * 365 * 24 * time.Hour
	serverValidity   = 2 * 365 * 24 * time.Hour
	// Certificates are valid from an hour ago, so that a device whose clock
	// is a little behind the CA's accepts them.
	backdate = time.Hour
)

// DefaultHosts are always in the server certificate, whatever Init is asked
// for, so that local clients can verify it.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1"}

// ErrExists is wrapped by IssueClient when the client's files exist already.
var ErrExists = errors.New("already exists")

// Files are the paths Init manages, and what one call did.
type Files struct {
	CACert, CAKey, ServerCert, ServerKey string
	// Created lists the paths written by this call; the others existed and
	// were kept.
	Created []string
	// Uncovered lists the hosts asked for that a kept server certificate
	// does not name: remove server.pem and server-key.pem and run Init again
	// to reissue it.
	Uncovered []string
}

// Init makes sure dir holds a CA and a server certificate it signed, and
// returns their paths. What is missing is created: dir (mode 0700), a CA
// (ECDSA P-256, 10 years, CN "Tether CA"), and a server certificate valid
// for 2 years, within the CA's lifetime, for hosts and DefaultHosts (IP
// addresses become IP SANs, the rest DNS SANs; a name may start with "*.").
//
// Existing files are never replaced, so Init is idempotent: a CA and its key
// are kept as they are, and the CA key is needed only to issue a missing
// server certificate (it may live elsewhere once that exists). A certificate
// whose key is missing, or the reverse, is an error naming both files.
func Init(dir string, hosts []string) (Files, error) {
	if dir == "" {
		return Files{}, errors.New("pki: no directory given")
	}
	san, err := parseHosts(append(append([]string(nil), DefaultHosts...), hosts...))
	if err != nil {
		return Files{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, fmt.Errorf("pki: %w", err)
	}
	f := Files{
		CACert:     filepath.Join(dir, CACertFile),
		CAKey:      filepath.Join(dir, CAKeyFile),
		ServerCert: filepath.Join(dir, ServerCertFile),
		ServerKey:  filepath.Join(dir, ServerKeyFile),
	}

	haveCert, haveKey, err := pairState(f.CACert, f.CAKey)
	if err != nil {
		return Files{}, err
	}
	switch {
	case !haveCert && haveKey:
		return Files{}, fmt.Errorf("pki: %s exists without %s: restore the certificate or remove the key", f.CAKey, f.CACert)
	case !haveCert:
		if err := createCA(f.CACert, f.CAKey); err != nil {
			return Files{}, err
		}
		f.Created = append(f.Created, f.CAKey, f.CACert)
	}

	haveCert, haveKey, err = pairState(f.ServerCert, f.ServerKey)
	if err != nil {
		return Files{}, err
	}
	switch {
	case haveCert != haveKey:
		return Files{}, fmt.Errorf("pki: %s and %s must both exist or both be absent: remove the one left", f.ServerCert, f.ServerKey)
	case haveCert:
		cert, err := readCert(f.ServerCert)
		if err != nil {
			return Files{}, err
		}
		for _, h := range san.names {
			if cert.VerifyHostname(h) != nil {
				f.Uncovered = append(f.Uncovered, h)
			}
		}
	default:
		ca, caKey, err := loadCA(f.CACert, f.CAKey)
		if err != nil {
			return Files{}, fmt.Errorf("issue server certificate: %w", err)
		}
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: serverCommonName},
			DNSNames:    san.dns,
			IPAddresses: san.ips,
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		if err := issue(tmpl, serverValidity, ca, caKey, f.ServerCert, f.ServerKey); err != nil {
			return Files{}, err
		}
		f.Created = append(f.Created, f.ServerKey, f.ServerCert)
	}
	return f, nil
}

// IssueClient issues a client certificate (extended key usage client auth)
// with CommonName name, a device id or another principal, signed by the CA
// in dir and valid for ttl, within the CA's lifetime. name must satisfy
// protocol.ValidateID, which also keeps it a plain file name. The files are
// dir/clients/NAME/NAME.pem and NAME-key.pem (mode 0600).
//
// If either file exists, nothing is written and their paths are returned
// with an error wrapping ErrExists: reissuing means removing them first.
func IssueClient(dir, name string, ttl time.Duration) (certFile, keyFile string, err error) {
	if err := protocol.ValidateID(name); err != nil {
		return "", "", fmt.Errorf("client name: %w", err)
	}
	if ttl <= 0 {
		return "", "", fmt.Errorf("client %s: validity %s: want a positive duration", name, ttl)
	}
	ca, caKey, err := loadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		return "", "", fmt.Errorf("client %s: %w", name, err)
	}
	clientDir := filepath.Join(dir, ClientsDir, name)
	certFile = filepath.Join(clientDir, name+".pem")
	keyFile = filepath.Join(clientDir, name+"-key.pem")
	haveCert, haveKey, err := pairState(certFile, keyFile)
	if err != nil {
		return "", "", err
	}
	if haveCert || haveKey {
		return certFile, keyFile, fmt.Errorf("client %s: %s: %w", name, clientDir, ErrExists)
	}
	if err := os.MkdirAll(clientDir, 0o700); err != nil {
		return "", "", fmt.Errorf("client %s: %w", name, err)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if err := issue(tmpl, ttl, ca, caKey, certFile, keyFile); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// ServerConfig is the broker's TLS configuration: TLS 1.2 or later with the
// certificate in certFile and its key in keyFile. With clientCAFile, clients
// may present a certificate, which must then verify against the CAs in that
// file (tls.VerifyClientCertIfGiven): clients without one still connect and
// authenticate otherwise. Errors name the file at fault.
func ServerConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile != "" {
		pool, err := loadPool(clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// ClientConfig is a client's TLS configuration: TLS 1.2 or later, servers
// verified against the CAs in caFile, or the system's roots when caFile is
// "", and, when certFile and keyFile are given (both or neither), that
// client certificate. Errors name the file at fault.
func ClientConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile != "" && keyFile != "":
		cert, err := loadKeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	case certFile != "":
		return nil, fmt.Errorf("client certificate %s: no key file given", certFile)
	case keyFile != "":
		return nil, fmt.Errorf("client key %s: no certificate file given", keyFile)
	}
	return cfg, nil
}

// sans are a server certificate's subject alternative names.
type sans struct {
	names []string // every host, as given after normalising
	dns   []string
	ips   []net.IP
}

// dnsName is a host name, optionally with a leading wildcard label.
var dnsName = regexp.MustCompile(`^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

func parseHosts(hosts []string) (sans, error) {
	var s sans
	seen := map[string]bool{}
	var errs []error
	for _, h := range hosts {
		name := strings.ToLower(strings.TrimSuffix(h, "."))
		if ip, err := netip.ParseAddr(name); err == nil && ip.Zone() == "" {
			ip = ip.Unmap()
			name = ip.String()
			if !seen[name] {
				s.ips = append(s.ips, net.IP(ip.AsSlice()))
			}
		} else if dnsName.MatchString(name) && len(name) <= 253 {
			if !seen[name] {
				s.dns = append(s.dns, name)
			}
		} else {
			errs = append(errs, fmt.Errorf("host %q: want a DNS name or an IP address, without scheme or port", h))
			continue
		}
		if !seen[name] {
			seen[name] = true
			s.names = append(s.names, name)
		}
	}
	return s, errors.Join(errs...)
}

func createCA(certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: caCommonName},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Only leaf certificates below it: nobody can build a sub-CA with a
		// certificate this CA issued.
		MaxPathLenZero: true,
	}
	if err := fillValidity(tmpl, caValidity, nil); err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("create CA certificate: %w", err)
	}
	return writePair(certFile, der, keyFile, key)
}

// issue signs tmpl, given its subject and usages, with a new key and writes
// both files.
func issue(tmpl *x509.Certificate, validity time.Duration, ca *x509.Certificate, caKey crypto.Signer, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key for %s: %w", certFile, err)
	}
	if err := fillValidity(tmpl, validity, ca); err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("sign %s: %w", certFile, err)
	}
	return writePair(certFile, der, keyFile, key)
}

// fillValidity sets a random serial number and the validity period, cut to
// the issuer's when it ends sooner.
func fillValidity(tmpl *x509.Certificate, validity time.Duration, issuer *x509.Certificate) error {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return fmt.Errorf("serial number: %w", err)
	}
	now := time.Now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = now.Add(validity)
	if issuer != nil && issuer.NotAfter.Before(tmpl.NotAfter) {
		tmpl.NotAfter = issuer.NotAfter
	}
	return nil
}

// writePair writes the key (0600), then the certificate (0644). Neither may
// exist; if the certificate cannot be written the key is removed again.
func writePair(certFile string, certDER []byte, keyFile string, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode %s: %w", keyFile, err)
	}
	if err := writeNew(keyFile, &pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}, 0o600); err != nil {
		return err
	}
	if err := writeNew(certFile, &pem.Block{Type: "CERTIFICATE", Bytes: certDER}, 0o644); err != nil {
		_ = os.Remove(keyFile)
		return err
	}
	return nil
}

// writeNew creates path, which must not exist, with exactly mode, and syncs
// it: losing a CA key after devices trust the CA means reissuing all.
func writeNew(path string, b *pem.Block, mode os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("pki: %w", cerr)
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	if err := f.Chmod(mode); err != nil { // the umask may have narrowed it
		return fmt.Errorf("pki: %w", err)
	}
	if err := pem.Encode(f, b); err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// pairState reports which of a certificate and its key exist.
func pairState(certFile, keyFile string) (haveCert, haveKey bool, err error) {
	if haveCert, err = exists(certFile); err != nil {
		return false, false, err
	}
	if haveKey, err = exists(keyFile); err != nil {
		return false, false, err
	}
	return haveCert, haveKey, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("pki: %w", err)
	}
}

// loadCA reads a CA certificate and its key, which must match.
func loadCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	pair, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	if !pair.Leaf.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("%s: key of type %T cannot sign", keyFile, pair.PrivateKey)
	}
	return pair.Leaf, signer, nil
}

// loadKeyPair reads a certificate (and any chain after it) and its key.
// Unlike tls.LoadX509KeyPair, every error names the file at fault, and an
// expired certificate is refused.
func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, _, err := readPEM(certFile, "CERTIFICATE")
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, _, err := readPEM(keyFile, "PRIVATE KEY")
	if err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s with key %s: %w", certFile, keyFile, err)
	}
	if end := pair.Leaf.NotAfter; time.Now().After(end) {
		return tls.Certificate{}, fmt.Errorf("certificate %s expired on %s", certFile, end.Format(time.DateOnly))
	}
	return pair, nil
}

func readCert(file string) (*x509.Certificate, error) {
	_, b, err := readPEM(file, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return cert, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	data, _, err := readPEM(file, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: no valid PEM certificate", file)
	}
	return pool, nil
}

// readPEM reads file and returns it with its first PEM block whose type
// ends with want ("PRIVATE KEY" matches EC and RSA keys too), or an error if
// it has none.
func readPEM(file, want string) ([]byte, *pem.Block, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err // *fs.PathError names the file
	}
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, nil, fmt.Errorf("%s: no PEM %s in it", file, strings.ToLower(want))
		}
		if strings.HasSuffix(b.Type, want) {
			return data, b, nil
		}
	}
}
