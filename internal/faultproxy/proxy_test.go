package faultproxy

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// echoServer echoes lines back.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, r *bufio.Reader, msg string, timeout time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	return r.ReadString('\n')
}

func TestPassCutBlackholeHeal(t *testing.T) {
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "hi", 2*time.Second); err != nil || got != "hi\n" {
		t.Fatalf("pass: %q %v", got, err)
	}

	// Black hole: the write succeeds, nothing comes back, no error either
	// until the reader's own deadline.
	p.Blackhole()
	_, err = roundTrip(c, r, "lost", 300*time.Millisecond)
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("black hole: want a timeout, got %v", err)
	}
	p.Heal()
	// The half-open connection stays dead; a new one works.
	c2, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := roundTrip(c2, bufio.NewReader(c2), "again", 2*time.Second); err != nil || got != "again\n" {
		t.Fatalf("after heal: %q %v", got, err)
	}

	// Cut: the client sees the connection end.
	p.Cut()
	c2.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := bufio.NewReader(c2).ReadString('\n'); err == nil {
		t.Fatal("cut: connection still open")
	}
	// While cut, new connections are closed at once.
	c3, err := net.Dial("tcp", p.Addr())
	if err == nil {
		c3.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c3.Read(make([]byte, 1)); err == nil {
			t.Fatal("refused mode let a connection through")
		}
	}
	up, down, accepted := p.Stats()
	if up == 0 || down == 0 || accepted < 3 {
		t.Errorf("stats up=%d down=%d accepted=%d", up, down, accepted)
	}
}

func TestDelay(t *testing.T) {
	p, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.SetDelay(100 * time.Millisecond)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	if _, err := roundTrip(c, bufio.NewReader(c), "slow", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// Two hops of 100 ms each: a lower bound, which a busy machine cannot
	// make flaky.
	if el := time.Since(begin); el < 200*time.Millisecond {
		t.Errorf("round trip took %s, want at least 200ms", el)
	}
}
