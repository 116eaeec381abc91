package broker

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/listeners"
)

func withOrigin(origin string) clientOpt {
	return func(o *paho.ClientOptions) { o.SetHTTPHeaders(http.Header{"Origin": {origin}}) }
}

func TestWebSocket(t *testing.T) {
	t.Parallel()
	b := startBroker(t, Config{WSAddr: "127.0.0.1:0", AllowAnonymousLoopback: true})
	wsURL := "ws://" + b.WSAddr()

	fromWS := make(chan paho.Message, 4)
	tcp := mustConnect(t, "tcp://"+b.MQTTAddr(), clientID("planner"), deliverTo(fromWS))
	wait(t, "tcp subscribe", tcp.Subscribe("tether/test/ws/up", 1, nil))

	toWS := make(chan paho.Message, 4)
	ws := mustConnect(t, wsURL, clientID("dashboard"), deliverTo(toWS))
	wait(t, "ws subscribe", ws.Subscribe("tether/test/ws/down", 1, nil))

	wait(t, "tcp publish", tcp.Publish("tether/test/ws/down", 1, false, "to-dashboard"))
	if m := receive(t, toWS, 1)[0]; string(m.Payload()) != "to-dashboard" {
		t.Fatalf("dashboard got %q", m.Payload())
	}
	wait(t, "ws publish", ws.Publish("tether/test/ws/up", 1, false, "from-dashboard"))
	if m := receive(t, fromWS, 1)[0]; string(m.Payload()) != "from-dashboard" {
		t.Fatalf("planner got %q", m.Payload())
	}
}

// AllowAnonymousLoopback must not admit a web page that a local browser
// shows: the browser connects from 127.0.0.1 but sends the page's Origin.
func TestWebSocketBrowserOrigin(t *testing.T) {
	t.Parallel()
	b := startBroker(t, Config{WSAddr: "127.0.0.1:0", AllowAnonymousLoopback: true})
	wsURL := "ws://" + b.WSAddr()

	if _, err := connect(t, wsURL, clientID("evil"), withOrigin("https://evil.example")); err == nil {
		t.Error("anonymous browser client from a web origin was admitted")
	}
	if _, err := connect(t, wsURL, clientID("local-dashboard"), withOrigin("http://localhost:3000")); err != nil {
		t.Errorf("anonymous browser client from a local origin: %v", err)
	}
}

// A connection that never sends CONNECT is closed after the timeout.
func TestConnectDeadline(t *testing.T) {
	t.Parallel()
	l := connectDeadline{
		Listener: listeners.NewTCP(listeners.Config{ID: "t", Address: "127.0.0.1:0"}),
		timeout:  100 * time.Millisecond,
	}
	if err := l.Init(slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(func(string) {}) })

	readErr := make(chan error, 1)
	go l.Serve(func(_ string, c net.Conn) error {
		defer c.Close()
		_, err := io.ReadAll(c)
		readErr <- err
		return err
	})

	c, err := net.Dial("tcp", l.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case err := <-readErr:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read ended with %v, want a deadline error", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("idle connection was not closed")
	}
}
