// Package faultproxy is a TCP proxy for tests that puts faults between a
// client and a server on loopback: it can cut every connection, black-hole
// them (half-open TCP: bytes stop flowing, no FIN and no RST reach either
// side), add latency, stall traffic as packet loss would, and flap.
//
// Loss on a TCP stream shows as delay (retransmissions), never as missing
// bytes, so SetLoss stalls a chunk for a retransmission timeout instead of
// dropping it.
package faultproxy

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Mode is what the proxy does with traffic.
type Mode int

// Modes.
const (
	// Pass forwards traffic (with the configured delay and loss).
	Pass Mode = iota
	// Refuse closes every connection and every new one at once.
	Refuse
	// Blackhole keeps every connection open and forwards nothing: a
	// half-open link that only keepalives can detect.
	Blackhole
)

// Proxy is a running proxy. Methods are safe for concurrent use.
type Proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	mode  Mode
	delay time.Duration
	loss  float64
	rto   time.Duration
	conns map[*link]struct{}

	up, down atomic.Int64 // bytes client→server, server→client
	accepted atomic.Int64
	wg       sync.WaitGroup
	closed   atomic.Bool
}

type link struct {
	client, server net.Conn
	dead           chan struct{} // closed when this link is black-holed for good
	once           sync.Once
	halves         atomic.Int32 // pipes still running
}

func (l *link) kill() {
	l.client.Close()
	l.server.Close()
}

// New listens on 127.0.0.1:0 and forwards to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[*link]struct{}{}, rto: 200 * time.Millisecond}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the address clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Stats returns the bytes forwarded client→server and server→client, and
// the number of connections accepted.
func (p *Proxy) Stats() (up, down, accepted int64) {
	return p.up.Load(), p.down.Load(), p.accepted.Load()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.mu.Lock()
		mode := p.mode
		p.mu.Unlock()
		if mode == Refuse {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		l := &link{client: c, server: s, dead: make(chan struct{})}
		l.halves.Store(2)
		p.mu.Lock()
		if p.mode == Refuse || p.closed.Load() {
			// Cut (or closed) while dialing: this link must not survive it.
			p.mu.Unlock()
			l.kill()
			continue
		}
		if p.mode == Blackhole {
			// A connection made during a black hole hangs like the rest.
			l.once.Do(func() { close(l.dead) })
		}
		p.conns[l] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(l, c, s, &p.up)
		go p.pipe(l, s, c, &p.down)
	}
}

func (p *Proxy) pipe(l *link, from, to net.Conn, count *atomic.Int64) {
	defer p.wg.Done()
	defer func() {
		// Closing one side ends the other pipe too, unless the link is
		// black-holed: then both sides stay open and silent.
		select {
		case <-l.dead:
		default:
			l.kill()
		}
		if l.halves.Add(-1) == 0 {
			p.mu.Lock()
			delete(p.conns, l)
			p.mu.Unlock()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			p.mu.Lock()
			delay, loss, rto := p.delay, p.loss, p.rto
			p.mu.Unlock()
			if loss > 0 && rand.Float64() < loss {
				delay += rto
			}
			if delay > 0 {
				time.Sleep(delay)
			}
			select {
			case <-l.dead:
				// Half-open: swallow everything until this side goes away;
				// the other side hears nothing, not even the close.
				io.Copy(io.Discard, from)
				return
			default:
			}
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
			count.Add(int64(n))
		}
		if err != nil {
			return // EOF, a reset, or closed by Cut or Close
		}
	}
}

// Cut closes every connection (both sides see it at once) and refuses new
// ones until Heal.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.mode = Refuse
	links := p.linksLocked()
	p.mu.Unlock()
	for _, l := range links {
		l.kill()
	}
}

// Blackhole makes every open connection, and every new one, silent: no
// bytes, no FIN, no RST. Connections black-holed stay dead after Heal, as
// a half-open TCP connection does; new ones after Heal work.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mode = Blackhole
	for l := range p.conns {
		l.once.Do(func() { close(l.dead) })
	}
}

// Heal lets new connections through again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.mode = Pass
	p.mu.Unlock()
}

// SetDelay adds latency to every chunk in both directions.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// SetLoss stalls each chunk with probability prob for a retransmission
// timeout (200 ms), which is how packet loss looks on a TCP stream.
func (p *Proxy) SetLoss(prob float64) {
	p.mu.Lock()
	p.loss = prob
	p.mu.Unlock()
}

// Flap cuts and heals the link n times, down for down and up for up each
// time, and returns when done.
func (p *Proxy) Flap(n int, down, up time.Duration) {
	for i := 0; i < n && !p.closed.Load(); i++ {
		p.Cut()
		time.Sleep(down)
		p.Heal()
		time.Sleep(up)
	}
}

func (p *Proxy) linksLocked() []*link {
	out := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		out = append(out, l)
	}
	return out
}

// Close stops the proxy and closes every connection, black-holed or not.
func (p *Proxy) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	err := p.ln.Close()
	p.mu.Lock()
	links := p.linksLocked()
	p.mu.Unlock()
	for _, l := range links {
		l.kill()
	}
	p.wg.Wait()
	return err
}
