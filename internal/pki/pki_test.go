package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustInit(t *testing.T, dir string, hosts ...string) Files {
	t.Helper()
	f, err := Init(dir, hosts)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return f
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func loadCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := readCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func caPool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	p, err := loadPool(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestInitCreatesThenKeeps(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pki")
	first := mustInit(t, dir)
	all := []string{first.CACert, first.CAKey, first.ServerCert, first.ServerKey}
	if got := slices.Sorted(slices.Values(first.Created)); !slices.Equal(got, slices.Sorted(slices.Values(all))) {
		t.Fatalf("first Init created %v, want %v", got, all)
	}
	wantModes := map[string]os.FileMode{dir: 0o700, first.CACert: 0o644, first.CAKey: 0o600, first.ServerCert: 0o644, first.ServerKey: 0o600}
	for path, want := range wantModes {
		if got := mode(t, path); got != want {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
	before := map[string][]byte{}
	for _, p := range all {
		before[p] = readFile(t, p)
	}

	second := mustInit(t, dir)
	if len(second.Created) != 0 {
		t.Errorf("second Init created %v", second.Created)
	}
	for _, p := range all {
		if !bytes.Equal(before[p], readFile(t, p)) {
			t.Errorf("second Init rewrote %s", p)
		}
	}

	ca := loadCert(t, first.CACert)
	if !ca.IsCA || ca.Subject.CommonName != "Tether CA" {
		t.Errorf("CA: IsCA=%v CN=%q", ca.IsCA, ca.Subject.CommonName)
	}
	if years := ca.NotAfter.Sub(ca.NotBefore).Hours() / 24 / 365; years < 9.9 || years > 10.1 {
		t.Errorf("CA valid for %.1f years, want 10", years)
	}
}

// A new server certificate (its files removed) is signed by the kept CA.
func TestInitReissuesServerWithSameCA(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := mustInit(t, dir)
	ca := readFile(t, f.CACert)
	for _, p := range []string{f.ServerCert, f.ServerKey} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	f = mustInit(t, dir, "broker.example")
	if !bytes.Equal(ca, readFile(t, f.CACert)) {
		t.Fatal("CA was replaced")
	}
	if _, err := loadCert(t, f.ServerCert).Verify(x509.VerifyOptions{Roots: caPool(t, dir), DNSName: "broker.example"}); err != nil {
		t.Fatalf("reissued server certificate: %v", err)
	}
}

func TestServerCertificateHosts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := mustInit(t, dir, "broker.example", "10.1.2.3", "*.edge.example", "BROKER.example")
	cert := loadCert(t, f.ServerCert)
	roots := caPool(t, dir)
	for _, host := range []string{"127.0.0.1", "localhost", "::1", "broker.example", "10.1.2.3", "gw.edge.example"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	for _, host := range []string{"other.example", "10.1.2.4", "a.b.edge.example"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: host}); err == nil {
			t.Errorf("server certificate verified for %s", host)
		}
	}
	if len(cert.DNSNames) != 3 || len(cert.IPAddresses) != 3 {
		t.Errorf("SANs: DNS %v, IP %v: want 3 of each, without duplicates", cert.DNSNames, cert.IPAddresses)
	}
	if years := cert.NotAfter.Sub(cert.NotBefore).Hours() / 24 / 365; years < 1.9 || years > 2.1 {
		t.Errorf("server certificate valid for %.1f years, want 2", years)
	}
}

func TestInitReportsUncoveredHosts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := mustInit(t, dir, "a.example")
	before := readFile(t, f.ServerCert)
	f = mustInit(t, dir, "a.example", "b.example")
	if !slices.Equal(f.Uncovered, []string{"b.example"}) {
		t.Errorf("Uncovered = %v, want [b.example]", f.Uncovered)
	}
	if !bytes.Equal(before, readFile(t, f.ServerCert)) {
		t.Error("server certificate was replaced")
	}
}

func TestInitRefuses(t *testing.T) {
	t.Parallel()
	t.Run("bad hosts", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "pki")
		_, err := Init(dir, []string{"ok.example", "broker:8883", "mqtts://broker", ""})
		for _, want := range []string{`"broker:8883"`, `"mqtts://broker"`, `""`} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v does not name host %s", err, want)
			}
		}
		if _, serr := os.Stat(dir); !errors.Is(serr, os.ErrNotExist) {
			t.Error("Init wrote files despite bad hosts")
		}
	})
	t.Run("half a server pair", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		f := mustInit(t, dir)
		if err := os.Remove(f.ServerKey); err != nil {
			t.Fatal(err)
		}
		if _, err := Init(dir, nil); err == nil || !strings.Contains(err.Error(), f.ServerKey) {
			t.Errorf("error %v does not name %s", err, f.ServerKey)
		}
	})
	t.Run("CA key without certificate", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		f := mustInit(t, dir)
		key := readFile(t, f.CAKey)
		for _, p := range []string{f.CACert, f.ServerCert, f.ServerKey} {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := Init(dir, nil); err == nil || !strings.Contains(err.Error(), f.CACert) {
			t.Errorf("error %v does not name %s", err, f.CACert)
		}
		if !bytes.Equal(key, readFile(t, f.CAKey)) {
			t.Error("CA key was replaced")
		}
	})
	t.Run("server to issue without CA key", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		f := mustInit(t, dir)
		for _, p := range []string{f.CAKey, f.ServerCert, f.ServerKey} {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := Init(dir, nil); err == nil || !strings.Contains(err.Error(), f.CAKey) {
			t.Errorf("error %v does not name %s", err, f.CAKey)
		}
	})
}

// The CA key may live elsewhere once the server certificate exists.
func TestInitWithoutCAKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := mustInit(t, dir)
	if err := os.Remove(f.CAKey); err != nil {
		t.Fatal(err)
	}
	mustInit(t, dir)
	if _, err := os.Stat(f.CAKey); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Init made a CA key for an existing CA: %v", err)
	}
}

func TestIssueClient(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mustInit(t, dir)
	certFile, keyFile, err := IssueClient(dir, "dev-1", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "clients", "dev-1", "dev-1.pem"); certFile != want {
		t.Errorf("certificate at %s, want %s", certFile, want)
	}
	if m := mode(t, keyFile); m != 0o600 {
		t.Errorf("key mode %v, want 0600", m)
	}
	cert := loadCert(t, certFile)
	if cert.Subject.CommonName != "dev-1" {
		t.Errorf("CN %q", cert.Subject.CommonName)
	}
	if d := cert.NotAfter.Sub(time.Now()); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("valid for another %s, want 24h", d)
	}
	client := x509.VerifyOptions{Roots: caPool(t, dir), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if _, err := cert.Verify(client); err != nil {
		t.Errorf("client certificate does not verify against its CA: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: caPool(t, dir)}); err == nil {
		t.Error("client certificate verified for server auth")
	}
	other := t.TempDir()
	mustInit(t, other)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: caPool(t, other), KeyUsages: client.KeyUsages}); err == nil {
		t.Error("client certificate verified against another CA")
	}

	before := readFile(t, certFile)
	c2, k2, err := IssueClient(dir, "dev-1", time.Hour)
	if !errors.Is(err, ErrExists) || c2 != certFile || k2 != keyFile {
		t.Errorf("second IssueClient = %s, %s, %v; want the same paths and ErrExists", c2, k2, err)
	}
	if !bytes.Equal(before, readFile(t, certFile)) {
		t.Error("second IssueClient rewrote the certificate")
	}

	// "dev" and "dev-key" must not share files.
	if _, _, err := IssueClient(dir, "dev-1-key", time.Hour); err != nil {
		t.Errorf("client dev-1-key: %v", err)
	}
}

func TestIssueClientWithinCALifetime(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := mustInit(t, dir)
	certFile, _, err := IssueClient(dir, "dev", 100*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got, ca := loadCert(t, certFile).NotAfter, loadCert(t, f.CACert).NotAfter; !got.Equal(ca) {
		t.Errorf("client certificate ends %s, after its CA (%s)", got, ca)
	}
}

func TestIssueClientRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, _, err := IssueClient(dir, "", time.Hour); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("IssueClient(\"\"): %v, want an error saying the name is empty", err)
	}
	for _, name := range []string{"../escape", "a/b", ".hidden", strings.Repeat("x", 64)} {
		_, _, err := IssueClient(dir, name, time.Hour)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", name)) || !strings.Contains(err.Error(), "want") {
			t.Errorf("IssueClient(%q): %v, want an error naming it and the rule", name, err)
		}
	}
	if _, _, err := IssueClient(dir, "dev", time.Hour); err == nil || !strings.Contains(err.Error(), filepath.Join(dir, CACertFile)) {
		t.Errorf("without a CA: %v, want an error naming ca.pem", err)
	}
	mustInit(t, dir)
	if _, _, err := IssueClient(dir, "dev", 0); err == nil {
		t.Error("zero validity accepted")
	}
	entries, _ := os.ReadDir(filepath.Join(dir, ClientsDir))
	if len(entries) != 0 {
		t.Errorf("refused requests left %d entries in clients/", len(entries))
	}
}

// The configurations work together: a handshake over a pipe, with and
// without a client certificate, and a certificate of another CA refused.
func TestConfigsHandshake(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := mustInit(t, dir)
	certFile, keyFile, err := IssueClient(dir, "dev-7", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	mustInit(t, other)
	strangerCert, strangerKey, err := IssueClient(other, "dev-7", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ServerConfig(f.ServerCert, f.ServerKey, f.CACert)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name      string
		cert, key string
		wantCN    string
		ok        bool
	}{
		{"no client certificate", "", "", "", true},
		{"certificate of the CA", certFile, keyFile, "dev-7", true},
		{"certificate of another CA", strangerCert, strangerKey, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			client, err := ClientConfig(f.CACert, tt.cert, tt.key)
			if err != nil {
				t.Fatal(err)
			}
			client.ServerName = "localhost"
			cs, err := handshake(t, server, client)
			if !tt.ok {
				if err == nil {
					t.Fatal("handshake succeeded")
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			cn := ""
			if len(cs.VerifiedChains) > 0 {
				cn = cs.VerifiedChains[0][0].Subject.CommonName
			}
			if cn != tt.wantCN {
				t.Errorf("verified client CN %q, want %q", cn, tt.wantCN)
			}
		})
	}
}

// handshake runs a TLS handshake over an in-memory pipe and returns the
// server's view of it.
func handshake(t *testing.T, server, client *tls.Config) (tls.ConnectionState, error) {
	t.Helper()
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	deadline := time.Now().Add(10 * time.Second)
	_ = sc.SetDeadline(deadline)
	_ = cc.SetDeadline(deadline)
	clientErr := make(chan error, 1)
	go func() {
		c := tls.Client(cc, client)
		err := c.Handshake()
		if err == nil {
			// TLS 1.3 clients finish before the server has checked their
			// certificate: the server's verdict arrives on the next read.
			_, err = c.Read(make([]byte, 1))
		}
		clientErr <- err
		cc.Close()
	}()
	s := tls.Server(sc, server)
	err := s.Handshake()
	if err == nil {
		_, err = s.Write([]byte{1})
	}
	return s.ConnectionState(), errors.Join(err, <-clientErr)
}

func TestBadFilesAreNamed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	f := mustInit(t, dir)
	other := mustInit(t, t.TempDir())
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name  string
		load  func() error
		names []string
	}{
		{"missing server certificate", func() error { _, err := ServerConfig(missing, f.ServerKey, ""); return err }, []string{missing}},
		{"garbage server certificate", func() error { _, err := ServerConfig(garbage, f.ServerKey, ""); return err }, []string{garbage}},
		{"garbage server key", func() error { _, err := ServerConfig(f.ServerCert, garbage, ""); return err }, []string{garbage}},
		{"key of another certificate", func() error { _, err := ServerConfig(f.ServerCert, other.ServerKey, ""); return err }, []string{f.ServerCert, other.ServerKey}},
		{"garbage client CA", func() error { _, err := ServerConfig(f.ServerCert, f.ServerKey, garbage); return err }, []string{garbage}},
		{"missing client CA", func() error { _, err := ServerConfig(f.ServerCert, f.ServerKey, missing); return err }, []string{missing}},
		{"missing CA", func() error { _, err := ClientConfig(missing, "", ""); return err }, []string{missing}},
		{"key given as CA", func() error { _, err := ClientConfig(f.CAKey, "", ""); return err }, []string{f.CAKey}},
		{"client certificate without key", func() error { _, err := ClientConfig(f.CACert, f.ServerCert, ""); return err }, []string{f.ServerCert}},
		{"client key without certificate", func() error { _, err := ClientConfig(f.CACert, "", f.ServerKey); return err }, []string{f.ServerKey}},
	}
	for _, tt := range tests {
		err := tt.load()
		if err == nil {
			t.Errorf("%s: no error", tt.name)
			continue
		}
		for _, n := range tt.names {
			if !strings.Contains(err.Error(), n) {
				t.Errorf("%s: error %q does not name %s", tt.name, err, n)
			}
		}
	}

	if _, err := ServerConfig(f.ServerCert, f.ServerKey, f.CACert); err != nil {
		t.Errorf("good files: %v", err)
	}
	if _, err := ClientConfig("", "", ""); err != nil {
		t.Errorf("system roots: %v", err)
	}
}
