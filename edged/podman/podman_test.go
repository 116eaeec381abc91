//go:build remote

package podman_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/driver/drivertest"
	"github.com/tether-edge/tether/edged/podman"
	"github.com/tether-edge/tether/internal/podmantest"
	"github.com/tether-edge/tether/protocol"
)

func connect(t *testing.T, socket string) *podman.Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := podman.Connect(ctx, podman.Config{Socket: socket, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func task(image string, cmd ...string) protocol.Task {
	return protocol.Task{Driver: protocol.DriverPodman, Config: protocol.TaskConfig{Image: image, Command: cmd}}
}

func TestContract(t *testing.T) {
	t.Parallel()
	socket, image := podmantest.Setup(t)
	exit3 := task(image, "sh", "-c", "sleep 0.5; exit $CODE")
	exit3.Env = map[string]string{"CODE": "3"}
	broken := task(image, "/nonexistent")
	drivertest.Run(t, func(t *testing.T) driver.Driver { return connect(t, socket) }, drivertest.Options{
		Long:      task(image, "sleep", "3600"),
		Exit3:     exit3,
		Broken:    &broken,
		NewDevice: func(t *testing.T) string { return podmantest.NewDevice(t) },
		// busybox sleep runs as PID 1 and so ignores SIGTERM: every Stop
		// waits for the timeout. Keep it short.
		StopTimeout: time.Second,
	})
}

func spec(device, name string, tk protocol.Task) driver.Spec {
	return driver.Spec{
		Name:   device + "-" + name,
		Labels: map[string]string{driver.LabelAlloc: device + "-a", driver.LabelDevice: device, driver.LabelTask: name},
		Task:   tk,
	}
}

// TestCreateOptions checks how a task maps onto the container: resources,
// host network, no restart policy, a capped log.
func TestCreateOptions(t *testing.T) {
	t.Parallel()
	socket, image := podmantest.Setup(t)
	d := connect(t, socket)
	device := podmantest.NewDevice(t)
	tk := task(image, "sleep", "3600")
	tk.Resources = protocol.Resources{CPU: 500, Memory: 64}
	tk.Config.Network = "host"
	inst, err := d.Start(context.Background(), spec(device, "opts", tk))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("podman", "inspect", "--format",
		"{{.HostConfig.Memory}} {{.HostConfig.CpuShares}} {{.HostConfig.NetworkMode}} [{{.HostConfig.RestartPolicy.Name}}] {{.HostConfig.LogConfig.Size}}", inst.ID).CombinedOutput()
	if err != nil {
		t.Fatalf("podman inspect: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "67108864 500 host [] 16.78MB"; got != want {
		t.Errorf("inspect = %q, want %q", got, want)
	}
}

func TestMissingImage(t *testing.T) {
	t.Parallel()
	socket, _ := podmantest.Setup(t)
	d := connect(t, socket)
	device := podmantest.NewDevice(t)
	_, err := d.Start(context.Background(), spec(device, "noimg", task("localhost/tether-no-such-image:1", "true")))
	if !errors.Is(err, podman.ErrImageNotFound) || !strings.Contains(err.Error(), "localhost/tether-no-such-image:1") {
		t.Fatalf("Start with a missing image: %v, want ErrImageNotFound naming the image", err)
	}
	if list, _ := d.List(context.Background(), device); len(list) != 0 {
		t.Errorf("nothing should be created for a missing image: %+v", list)
	}
}

// TestConnectStartsService: with no socket and no CONTAINER_HOST, Connect
// starts its own service in DataDir and Close stops it.
func TestConnectStartsService(t *testing.T) {
	podmantest.Setup(t) // configures CONTAINERS_CONF and the image
	t.Setenv("CONTAINER_HOST", "")
	dir, err := os.MkdirTemp("", "tpd") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := podman.Connect(ctx, podman.Config{DataDir: dir, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	if _, err := d.List(ctx, "nobody"); err != nil {
		t.Fatalf("List through own service: %v", err)
	}
	sock := filepath.Join(dir, "podman.sock")
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("no socket at %s: %v", sock, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// After Close nothing answers on the socket any more.
	if _, err := podman.Connect(ctx, podman.Config{Socket: "unix://" + sock, Log: zerolog.Nop()}); !errors.Is(err, podman.ErrUnavailable) {
		t.Errorf("Connect after Close: %v, want ErrUnavailable", err)
	}
}

// TestServiceRestartAndWatchReconnect kills the service Connect started:
// the driver restarts it, and Watch reconnects and still reports exits.
func TestServiceRestartAndWatchReconnect(t *testing.T) {
	_, image := podmantest.Setup(t)
	t.Setenv("CONTAINER_HOST", "")
	dir, err := os.MkdirTemp("", "tpd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	d, err := podman.Connect(ctx, podman.Config{DataDir: dir, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	ch, err := d.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := podman.ServicePID(d)
	if pid == 0 {
		t.Fatal("no service pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	device := podmantest.NewDevice(t)
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := d.List(ctx, device)
		if podman.ServicePID(d) != pid && err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service not restarted: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	inst, err := d.Start(ctx, spec(device, "after", task(image, "sh", "-c", "sleep 0.5; exit 4")))
	if err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case <-ch:
			list, err := d.List(ctx, device)
			if err == nil && len(list) == 1 && list[0].ID == inst.ID && list[0].State == driver.StateExited {
				if list[0].ExitCode != 4 {
					t.Errorf("ExitCode = %d, want 4", list[0].ExitCode)
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("no watch signal after the service restarted")
		}
	}
}

func TestConnectUnavailable(t *testing.T) {
	t.Setenv("CONTAINER_HOST", "")
	t.Setenv("PATH", t.TempDir())
	_, err := podman.Connect(context.Background(), podman.Config{DataDir: t.TempDir(), Log: zerolog.Nop()})
	if !errors.Is(err, podman.ErrUnavailable) {
		t.Fatalf("Connect without podman: %v, want ErrUnavailable", err)
	}
}
