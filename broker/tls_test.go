package broker

import (
	"crypto/tls"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/tether-edge/tether/internal/pki"
)

// recorder is an Authenticator that admits every client and remembers the
// Peer the broker showed it, so that only TLS can refuse a connection.
type recorder struct {
	mu    sync.Mutex
	peers map[string]Peer
}

func newRecorder() *recorder { return &recorder{peers: map[string]Peer{}} }

func (r *recorder) Authenticate(p Peer, _ []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.peers[p.ClientID] = p
	return nil
}

func (r *recorder) Authorize(Peer, string, bool) bool { return true }

func (r *recorder) peer(clientID string) (Peer, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, ok := r.peers[clientID]
	return p, ok
}

// testPKI is a CA with a server certificate for localhost and 127.0.0.1.
func testPKI(t *testing.T) (dir string, files pki.Files) {
	t.Helper()
	dir = t.TempDir()
	files, err := pki.Init(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return dir, files
}

func issueClient(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile, err := pki.IssueClient(dir, name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// withTLS makes the client verify the broker against caFile and, when
// certFile is set, present that client certificate.
func withTLS(t *testing.T, caFile, certFile, keyFile string) clientOpt {
	t.Helper()
	cfg, err := pki.ClientConfig(caFile, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return func(o *paho.ClientOptions) { o.SetTLSConfig(cfg) }
}

func TestTLS(t *testing.T) {
	t.Parallel()
	dir, files := testPKI(t)
	serverTLS, err := pki.ServerConfig(files.ServerCert, files.ServerKey, files.CACert)
	if err != nil {
		t.Fatal(err)
	}
	auth := newRecorder()
	b := startBroker(t, Config{WSAddr: "127.0.0.1:0", TLS: serverTLS, Authenticator: auth})
	mqtts, wss := "ssl://"+b.MQTTAddr(), "wss://"+b.WSAddr()

	devCert, devKey := issueClient(t, dir, "dev-1")
	otherDir, otherFiles := testPKI(t)
	strangerCert, strangerKey := issueClient(t, otherDir, "dev-1")

	tests := []struct {
		name     string
		url      string
		opts     []clientOpt
		ok       bool
		listener string
		cn       string
	}{
		{"server certificate only", mqtts, []clientOpt{withTLS(t, files.CACert, "", "")}, true, ListenerTCP, ""},
		{"client certificate", mqtts, []clientOpt{withTLS(t, files.CACert, devCert, devKey)}, true, ListenerTCP, "dev-1"},
		// The WebSocket listener asks for no client certificate (browsers
		// cancel the handshake when asked): one a client offers anyway is
		// not requested, so it neither authenticates nor refuses anybody.
		{"wss with client certificate", wss, []clientOpt{withTLS(t, files.CACert, devCert, devKey)}, true, ListenerWS, ""},
		{"wss without client certificate", wss, []clientOpt{withTLS(t, files.CACert, "", "")}, true, ListenerWS, ""},
		{"client certificate of another CA", mqtts, []clientOpt{withTLS(t, files.CACert, strangerCert, strangerKey)}, false, "", ""},
		{"wss with client certificate of another CA", wss, []clientOpt{withTLS(t, files.CACert, strangerCert, strangerKey)}, true, ListenerWS, ""},
		{"client that does not trust the CA", mqtts, []clientOpt{withTLS(t, otherFiles.CACert, "", "")}, false, "", ""},
		{"plaintext to the TLS port", "tcp://" + b.MQTTAddr(), nil, false, "", ""},
		{"ws to the wss port", "ws://" + b.WSAddr(), nil, false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := strings.ReplaceAll(t.Name(), "/", "-")
			_, err := connect(t, tt.url, append(tt.opts, clientID(id))...)
			p, seen := auth.peer(id)
			if !tt.ok {
				if err == nil {
					t.Fatal("connect succeeded")
				}
				t.Logf("refused: %v", err)
				if seen {
					t.Errorf("a refused client reached the Authenticator: %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			if !seen {
				t.Fatal("the Authenticator never saw the client")
			}
			if !p.TLS || p.CertCommonName != tt.cn || p.Listener != tt.listener {
				t.Errorf("Peer{TLS: %v, CertCommonName: %q, Listener: %q}, want {true, %q, %q}", p.TLS, p.CertCommonName, p.Listener, tt.cn, tt.listener)
			}
		})
	}
}

// Messages flow between a TLS client and a wss client.
func TestTLSMessages(t *testing.T) {
	t.Parallel()
	_, files := testPKI(t)
	serverTLS, err := pki.ServerConfig(files.ServerCert, files.ServerKey, "")
	if err != nil {
		t.Fatal(err)
	}
	b := startBroker(t, Config{WSAddr: "127.0.0.1:0", TLS: serverTLS, Authenticator: newRecorder()})
	trust := withTLS(t, files.CACert, "", "")

	got := make(chan paho.Message, 1)
	device := mustConnect(t, "ssl://"+b.MQTTAddr(), clientID("device"), trust, deliverTo(got))
	wait(t, "subscribe", device.Subscribe("tether/test/tls", 1, nil))
	dashboard := mustConnect(t, "wss://"+b.WSAddr(), clientID("dashboard"), trust)
	wait(t, "publish", dashboard.Publish("tether/test/tls", 1, false, "over wss"))
	if m := receive(t, got, 1)[0]; string(m.Payload()) != "over wss" {
		t.Fatalf("device got %q", m.Payload())
	}
}

// A certificate the server only requested, without verifying it, must not
// pass for an identity.
func TestTLSUnverifiedCertificateHasNoName(t *testing.T) {
	t.Parallel()
	dir, files := testPKI(t)
	serverTLS, err := pki.ServerConfig(files.ServerCert, files.ServerKey, "")
	if err != nil {
		t.Fatal(err)
	}
	serverTLS.ClientAuth = tls.RequestClientCert
	auth := newRecorder()
	b := startBroker(t, Config{WSAddr: "127.0.0.1:0", TLS: serverTLS, Authenticator: auth})
	cert, key := issueClient(t, dir, "dev-1")
	for _, url := range []string{"ssl://" + b.MQTTAddr(), "wss://" + b.WSAddr()} {
		id := "unverified-" + strings.Split(url, ":")[0]
		mustConnect(t, url, clientID(id), withTLS(t, files.CACert, cert, key))
		if p, _ := auth.peer(id); !p.TLS || p.CertCommonName != "" {
			t.Errorf("%s: Peer{TLS: %v, CertCommonName: %q}, want {true, \"\"}", url, p.TLS, p.CertCommonName)
		}
	}
}

func TestPlaintextPeer(t *testing.T) {
	t.Parallel()
	auth := newRecorder()
	b := startBroker(t, Config{WSAddr: "127.0.0.1:0", Authenticator: auth})
	for _, url := range []string{"tcp://" + b.MQTTAddr(), "ws://" + b.WSAddr()} {
		id := "plain-" + strings.Split(url, ":")[0]
		mustConnect(t, url, clientID(id))
		p, seen := auth.peer(id)
		if !seen || p.TLS || p.CertCommonName != "" {
			t.Errorf("%s: seen=%v Peer{TLS: %v, CertCommonName: %q}, want {false, \"\"}", url, seen, p.TLS, p.CertCommonName)
		}
	}
}

func TestTLSConfigWithoutCertificate(t *testing.T) {
	t.Parallel()
	_, err := New(Config{MQTTAddr: "127.0.0.1:0", TLS: &tls.Config{}, AllowAnonymousLoopback: true, Log: testLog(t)})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("New with an empty TLS config: %v, want an error about the certificate", err)
	}
}
