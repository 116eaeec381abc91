//go:build remote

package podman

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	osexec "os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// service is a `podman system service` started by Connect and kept alive
// until Close: restarted with backoff if it dies. Containers do not depend
// on it (each has its own conmon), so its restarts never touch workloads.
type service struct {
	bin, sock, logPath string
	log                zerolog.Logger

	quit    chan struct{} // closed by stop
	stopped chan struct{} // closed when the supervisor has returned

	mu        sync.Mutex
	cmd       *osexec.Cmd
	exited    chan struct{} // closed when cmd has exited
	startedAt time.Time
	closing   bool
}

// stopGrace is how long the service gets to exit after SIGTERM.
const stopGrace = 10 * time.Second

func newService(bin, sock, logPath string, log zerolog.Logger) *service {
	return &service{bin: bin, sock: sock, logPath: logPath, log: log, quit: make(chan struct{}), stopped: make(chan struct{})}
}

// start starts one service process. Only Connect (before supervise runs)
// and supervise call it.
func (s *service) start() error {
	// Left behind by a service that died: podman refuses to listen on an
	// existing path.
	if err := os.Remove(s.sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open service log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := osexec.Command(s.bin, "system", "service", "--time=0", "unix://"+s.sock)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = serviceEnv(os.Environ())
	// The service inherits edged's environment (CONTAINERS_CONF and
	// friends) except what would make it a remote client. Its own process group keeps a terminal's Ctrl-C away from
	// it, so edged stops it in order on shutdown; Pdeathsig stops it when
	// edged dies without shutting down. (Pdeathsig follows the OS thread
	// that forked; Go only retires threads of goroutines that exit while
	// locked to them, which nothing here does.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s system service: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		closing := s.closing
		s.mu.Unlock()
		if !closing {
			s.log.Error().Err(err).Int("pid", cmd.Process.Pid).Str("log", s.logPath).Msg("podman service exited")
		}
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited, s.startedAt = cmd, exited, time.Now()
	s.mu.Unlock()
	s.log.Info().Int("pid", cmd.Process.Pid).Str("socket", s.sock).Msg("podman service started")
	return nil
}

// supervise restarts the service whenever it exits, until stop. A
// service that ran for less than a minute is restarted with a growing
// delay, so a broken configuration does not spin.
func (s *service) supervise() {
	defer close(s.stopped)
	backoff := time.Second
	for {
		s.mu.Lock()
		exited, since := s.exited, s.startedAt
		s.mu.Unlock()
		select {
		case <-exited:
		case <-s.quit:
			return
		}
		if time.Since(since) > time.Minute {
			backoff = time.Second
		}
		for {
			select {
			case <-time.After(backoff):
			case <-s.quit:
				return
			}
			backoff = min(2*backoff, 30*time.Second)
			err := s.start()
			if err == nil {
				break
			}
			s.log.Error().Err(err).Dur("retry_in", backoff).Msg("restart podman service")
		}
	}
}

// stop ends the supervisor, then the service: SIGTERM, and SIGKILL after
// stopGrace. It is idempotent.
func (s *service) stop() {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		close(s.quit)
	}
	s.mu.Unlock()
	<-s.stopped // after this nothing starts a new process
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(stopGrace):
		s.log.Warn().Int("pid", cmd.Process.Pid).Msg("podman service ignored SIGTERM; killing")
		_ = cmd.Process.Kill()
		<-exited
	}
	s.log.Info().Int("pid", cmd.Process.Pid).Msg("podman service stopped")
}

// serviceEnv drops the variables that switch the podman CLI into remote
// mode: with CONTAINER_HOST set, even empty, `podman system service`
// refuses its socket argument.
func serviceEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "CONTAINER_HOST", "CONTAINER_CONNECTION", "CONTAINER_SSHKEY":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// logTail returns the end of the service log, for error messages.
func (s *service) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return ""
	}
	b = bytes.TrimSpace(b)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
