package server

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/broker"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/protocol"
)

// A broker the server does not run: a mochi broker of the test's own,
// which lets in only the users it is given. The e2e tests do the same
// against Mosquitto.
func externalBroker(t *testing.T, users map[string]string) string {
	t.Helper()
	b, err := broker.New(broker.Config{MQTTAddr: "127.0.0.1:0", Users: users, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.MQTTAddr()
}

func TestExternalBroker(t *testing.T) {
	t.Parallel()
	addr := externalBroker(t, map[string]string{"planner": "planner-secret", "op": "op-secret"})
	dir := t.TempDir()
	ctx := context.Background()
	srv, err := Start(ctx, Config{
		DataDir:  dir,
		HTTPAddr: "127.0.0.1:0",
		External: &ExternalBroker{URL: "mqtt://" + addr, Username: "planner", Password: "planner-secret", DashboardWSPort: 8083, DashboardWSTLS: true},
		Log:      zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })

	ep := srv.Endpoints()
	if ep.MQTTURL() != "mqtt://"+addr || ep.External == "" || ep.WS != "127.0.0.1:8083" || !ep.WSTLS {
		t.Errorf("endpoints: %+v (MQTTURL %s)", ep, ep.MQTTURL())
	}
	if _, err := os.Stat(filepath.Join(dir, PlannerKeyFile)); err != nil {
		t.Errorf("planner key file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, OperatorTokenFile)); err == nil {
		t.Errorf("%s written: an external broker's server has no tokens of its own", OperatorTokenFile)
	}
	if _, err := os.Stat(filepath.Join(dir, "broker")); err == nil {
		t.Error("an embedded broker's data dir was made")
	}

	// The dashboard is told where the broker's WebSocket listener is.
	res, err := http.Get("http://" + ep.HTTP + "/config.json")
	if err != nil {
		t.Fatal(err)
	}
	var page struct {
		WSPort int  `json:"ws_port"`
		WSTLS  bool `json:"ws_tls"`
	}
	err = json.NewDecoder(res.Body).Decode(&page)
	res.Body.Close()
	if err != nil || page.WSPort != 8083 || !page.WSTLS {
		t.Errorf("dashboard config: %+v, %v; want port 8083 with TLS", page, err)
	}
	res, err = http.Get("http://" + ep.HTTP + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Errorf("healthz: %s", res.Status)
	}

	// Admin requests: the signing keys are still the server's; identities
	// are the broker's.
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := bus.Dial(dctx, bus.Config{Brokers: []string{"mqtt://" + addr}, Username: "op", Password: "op-secret", CleanSession: true, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var topics protocol.Topics
	ask := func(req protocol.AdminRequest) protocol.AdminResult {
		t.Helper()
		nonce := bus.RandomID("r")
		answers := make(chan []byte, 1)
		if err := c.Subscribe(dctx, topics.AdminResult("dev", nonce), 1, func(m bus.Message) { answers <- m.Payload }); err != nil {
			t.Fatal(err)
		}
		payload, err := protocol.Encode(req)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Publish(dctx, topics.Admin("dev", nonce), payload, false, 1); err != nil {
			t.Fatal(err)
		}
		select {
		case raw := <-answers:
			res, err := protocol.DecodeAdminResult(raw)
			if err != nil {
				t.Fatal(err)
			}
			return res
		case <-dctx.Done():
			t.Fatalf("no answer to %s", req.Op)
		}
		return protocol.AdminResult{}
	}
	if res := ask(protocol.AdminRequest{Op: protocol.OpKeyList}); !res.OK || len(res.Keys) != 1 {
		t.Errorf("key.list: %+v", res)
	}
	if res := ask(protocol.AdminRequest{Op: protocol.OpKeyRotate}); !res.OK || len(res.Keys) != 2 {
		t.Errorf("key.rotate: %+v", res)
	}
	for _, req := range []protocol.AdminRequest{
		{Op: protocol.OpTokenCreate, Role: protocol.RoleViewer},
		{Op: protocol.OpTokenList},
		{Op: protocol.OpDeviceAdd, ID: "d1"},
		{Op: protocol.OpDeviceList},
		{Op: protocol.OpDeviceRevoke, ID: "d1"},
		{Op: protocol.OpEnrollCreate, Uses: 1, TTL: protocol.Duration(time.Hour)},
		{Op: protocol.OpEnrollList},
	} {
		res := ask(req)
		if res.OK || !strings.Contains(res.Error, "external broker") || !strings.Contains(res.Error, "docs/brokers.md") {
			t.Errorf("%s: %+v, want refused with a pointer to docs/brokers.md", req.Op, res)
		}
	}
}

func TestExternalBrokerRefusedCredentials(t *testing.T) {
	t.Parallel()
	addr := externalBroker(t, map[string]string{"planner": "planner-secret"})
	_, err := Start(context.Background(), Config{
		DataDir:  t.TempDir(),
		External: &ExternalBroker{URL: "mqtt://" + addr, Username: "planner", Password: "wrong"},
		Log:      zerolog.Nop(),
	})
	if err == nil || !strings.Contains(err.Error(), "external broker") || !strings.Contains(err.Error(), bus.ErrNotAuthorized.Error()) {
		t.Fatalf("Start with a wrong password: %v", err)
	}
}

func TestExternalBrokerConfig(t *testing.T) {
	t.Parallel()
	ext := &ExternalBroker{URL: "mqtt://127.0.0.1:1"}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{External: ext, MQTTAddr: "127.0.0.1:1883", WSAddr: "127.0.0.1:1884"}, "MQTTAddr, WSAddr"},
		{Config{External: ext, Dev: true}, "Dev"},
		{Config{External: ext, InsecureAllowAnonymous: true}, "InsecureAllowAnonymous"},
		{Config{External: &ExternalBroker{}}, "URL required"},
		{Config{External: &ExternalBroker{URL: "http://x:1"}}, "unknown scheme"},
		{Config{External: &ExternalBroker{URL: "mqtt://x:1", DashboardWSPort: 70000}}, "70000"},
	} {
		tc.cfg.DataDir = t.TempDir()
		_, err := Start(context.Background(), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %q", tc.cfg, err, tc.want)
		}
	}
}

func TestExternalEndpointsHidePasswords(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		"mqtts://planner:s3cret@broker.example:8883": "mqtts://broker.example:8883",
		"broker.example:1883":                        "mqtt://broker.example:1883",
		"wss://u:p@broker.example/mqtt":              "wss://broker.example/mqtt",
	} {
		ep := externalEndpoints(ExternalBroker{URL: raw})
		if ep.MQTTURL() != want || strings.Contains(ep.External, "s3cret") {
			t.Errorf("%s: shown as %s, want %s", raw, ep.MQTTURL(), want)
		}
	}
	if ep := externalEndpoints(ExternalBroker{URL: "mqtts://b:8883"}); !ep.TLS {
		t.Errorf("mqtts:// not TLS: %+v", ep)
	}
}
