package podmantest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Image is the busybox image Setup provides.
const Image = "localhost/tether-busybox:test"

// imageVersion is stored as a label on Image; bump it when the applets or
// files change, and Setup re-imports the image.
const imageVersion = "1"

// versionLabel holds imageVersion. It is deliberately not a tether.* label:
// image labels are copied onto every container.
const versionLabel = "io.tether-edge.podmantest.version"

// Applets linked in Image's /bin.
var applets = []string{
	"sh", "sleep", "echo", "cat", "httpd", "wget", "ls", "true", "false", "env",
	"kill", "ps", "date", "test", "[", "printenv", "hostname", "id", "mkdir",
	"rm", "touch", "grep", "head", "tail", "seq", "nc", "uname",
}

// ContainersConf is the containers.conf Setup uses when CONTAINERS_CONF is
// not set: runc because crun cannot drive cgroups in hybrid mode, and
// ulimits no higher than a sandbox lets a process raise them.
const ContainersConf = `[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
`

// serviceTimeout bounds the wait for the service to answer.
const serviceTimeout = 20 * time.Second

// Setup prepares real Podman for a test and returns the URI of a Podman
// service started for it (unix:///.../podman.sock, stopped when the test
// ends) and the name of a busybox image in local storage.
//
// Without podman in PATH the test is skipped, or fails when $CI is set.
// If CONTAINERS_CONF is unset, Setup points it (for the whole test
// process, so that parallel tests can call Setup too) at a file holding
// ContainersConf. The image is imported from the static busybox binary
// once per machine, under a file lock, so parallel test binaries don't
// race. Setup is safe to call from parallel tests.
func Setup(t testing.TB) (socket, image string) {
	t.Helper()
	bin := requirePodman(t)
	if err := configure(); err != nil {
		t.Fatalf("podmantest: %v", err)
	}
	if err := ensureImage(bin); err != nil {
		fail(t, "podmantest: image %s: %v", Image, err)
	}
	return startService(t, bin), Image
}

// NewDevice returns a device id unique to this test and removes every
// container labelled with it when the test ends.
func NewDevice(t testing.TB) string {
	t.Helper()
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	device := "pt-" + hex.EncodeToString(b)
	CleanupDevice(t, device)
	return device
}

// CleanupDevice removes, when the test ends, every container labelled
// tether.device=device, whatever state it is in: a backstop for tests that
// fail before removing what they started.
func CleanupDevice(t testing.TB, device string) {
	t.Helper()
	t.Cleanup(func() {
		bin, err := exec.LookPath("podman")
		if err != nil {
			return
		}
		out, err := podmanCmd(bin, "ps", "-aq", "--filter", "label=tether.device="+device).Output()
		if err != nil {
			t.Errorf("podmantest: list containers of %s: %v", device, err)
			return
		}
		ids := strings.Fields(string(out))
		if len(ids) == 0 {
			return
		}
		args := append([]string{"rm", "--force", "--volumes", "--time", "0"}, ids...)
		if out, err := podmanCmd(bin, args...).CombinedOutput(); err != nil {
			t.Errorf("podmantest: remove containers of %s: %v\n%s", device, err, out)
		}
	})
}

// podmanCmd runs the local podman CLI. Variables that would turn it into a
// remote client are dropped: tests set CONTAINER_HOST="" to test the
// driver's own fallback, and the CLI treats even an empty one as remote.
func podmanCmd(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "CONTAINER_HOST", "CONTAINER_CONNECTION", "CONTAINER_SSHKEY":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	return cmd
}

func requirePodman(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("podman")
	if err != nil {
		fail(t, "podmantest: podman is not in PATH; install podman, runc and busybox-static (see deploy/podman)")
	}
	return bin
}

// fail skips the test, or fails it when $CI is set: CI must run what a
// developer's machine may skip.
func fail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

var (
	configureOnce sync.Once
	configureErr  error
)

// configure sets CONTAINERS_CONF once per process unless already set.
func configure() error {
	configureOnce.Do(func() {
		if os.Getenv("CONTAINERS_CONF") != "" {
			return
		}
		dir, err := stateDir()
		if err != nil {
			configureErr = err
			return
		}
		path := filepath.Join(dir, "containers.conf")
		if err := writeFileAtomic(path, []byte(ContainersConf)); err != nil {
			configureErr = err
			return
		}
		configureErr = os.Setenv("CONTAINERS_CONF", path)
	})
	return configureErr
}

// stateDir is shared by every test process on the machine.
func stateDir() (string, error) {
	dir := filepath.Join(os.TempDir(), "tether-podmantest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("state dir: %w", err)
	}
	return dir, nil
}

func writeFileAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

var imageMu sync.Mutex

// ensureImage imports Image unless it exists with the current version.
// A flock serialises test processes, the mutex goroutines (flock is per
// open file, so it would serialise those too, but the mutex saves a
// process a pointless second check).
func ensureImage(bin string) error {
	imageMu.Lock()
	defer imageMu.Unlock()
	dir, err := stateDir()
	if err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "image.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	out, err := podmanCmd(bin, "image", "inspect", "--format", `{{index .Labels "`+versionLabel+`"}}`, Image).Output()
	if err == nil && strings.TrimSpace(string(out)) == imageVersion {
		return nil
	}
	bb, err := findStaticBusybox()
	if err != nil {
		return err
	}
	tarball, err := os.CreateTemp("", "tether-busybox-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tarball.Name())
	if err := writeRootfs(tarball, bb); err != nil {
		tarball.Close()
		return fmt.Errorf("build rootfs: %w", err)
	}
	if err := tarball.Close(); err != nil {
		return err
	}
	cmd := podmanCmd(bin, "import",
		"--change", `CMD ["/bin/sh"]`,
		"--change", "LABEL "+versionLabel+"="+imageVersion,
		tarball.Name(), Image)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("podman import: %v\n%s", err, out)
	}
	return nil
}

// findStaticBusybox finds a statically linked busybox: a dynamic one
// would need its libraries inside the image.
func findStaticBusybox() (string, error) {
	candidates := []string{os.Getenv("BUSYBOX"), "/bin/busybox", "/usr/bin/busybox"}
	if p, err := exec.LookPath("busybox"); err == nil {
		candidates = append(candidates, p)
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if static, err := isStatic(c); err == nil && static {
			return c, nil
		}
	}
	return "", errors.New("no statically linked busybox found (apt-get install busybox-static, or set BUSYBOX)")
}

func isStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// writeRootfs writes the image's root file system as a tar: busybox, its
// applet links, /tmp and a page for httpd in /www.
func writeRootfs(w io.Writer, busybox string) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	now := time.Now()
	dirs := []string{"bin/", "tmp/", "www/"}
	for _, d := range dirs {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode, ModTime: now}); err != nil {
			return err
		}
	}
	file := func(name string, mode int64, body []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: now}); err != nil {
			return err
		}
		_, err := tw.Write(body)
		return err
	}
	if err := file("bin/busybox", 0o755, bb); err != nil {
		return err
	}
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: now}); err != nil {
			return err
		}
	}
	if err := file("www/index.html", 0o644, []byte("hello from tether\n")); err != nil {
		return err
	}
	return tw.Close()
}

// startService starts `podman system service` on a socket of its own and
// stops it when the test ends.
func startService(t testing.TB, bin string) string {
	t.Helper()
	// Not t.TempDir: a unix socket path must stay under 108 bytes, and
	// test names make TempDir paths long.
	dir, err := os.MkdirTemp("", "tpm")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "podman.sock")
	logPath := filepath.Join(dir, "service.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := podmanCmd(bin, "system", "service", "--time=0", "unix://"+sock)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a test binary killed by go test's timeout takes the
	// service with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("podmantest: start podman service: %v", err)
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = os.RemoveAll(dir)
	})
	if err := waitPing(sock, exited); err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("podmantest: podman service on %s: %v\n%s", sock, err, b)
	}
	return "unix://" + sock
}

// waitPing polls the service's /_ping until it answers 200.
func waitPing(sock string, exited <-chan struct{}) error {
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(serviceTimeout)
	var last error
	for time.Now().Before(deadline) {
		resp, err := client.Get("http://d/_ping")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("ping: %s %s", resp.Status, bytes.TrimSpace(body))
		}
		last = err
		select {
		case <-exited:
			return errors.New("service exited during startup")
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("no answer within %v: %w", serviceTimeout, last)
}
