//go:build remote

package edged

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/podman"
	"github.com/tether-edge/tether/internal/podmantest"
	"github.com/tether-edge/tether/protocol"
)

// TestOfflineBootRestartAndAdoptionPodman runs the offline-boot scenario
// against real Podman: containers are found by their labels, a container
// killed behind edged's back is replaced, and a restarted edged adopts the
// running container without restarting it.
func TestOfflineBootRestartAndAdoptionPodman(t *testing.T) {
	socket, image := podmantest.Setup(t)
	device := podmantest.NewDevice(t)
	offlineBootScenario(t, scenario{
		device: device,
		task: protocol.Task{Name: "app", Driver: "podman", Config: protocol.TaskConfig{Image: image, Command: []string{"sleep", "3600"}},
			Resources: protocol.Resources{CPU: 100, Memory: 32},
			Restart:   &protocol.RestartPolicy{Attempts: 3, Delay: protocol.Duration(100 * time.Millisecond), Interval: protocol.Duration(time.Minute), Mode: protocol.RestartFail}},
		open: func() driver.Driver {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			d, err := podman.Connect(ctx, podman.Config{Socket: socket, Log: zerolog.New(zerolog.NewTestWriter(t))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		},
		kill: func(i driver.Instance) {
			if out, err := exec.Command("podman", "kill", i.ID).CombinedOutput(); err != nil {
				t.Fatalf("podman kill: %v\n%s", err, out)
			}
		},
	})
}
