package edged

import (
	"context"
	"errors"
	"path/filepath"

	"github.com/tether-edge/tether/edged/driver"
	"github.com/tether-edge/tether/edged/exec"
	"github.com/tether-edge/tether/edged/fake"
	"github.com/tether-edge/tether/edged/podman"
	"github.com/tether-edge/tether/protocol"
)

// DaemonConfig is Config plus how to reach the drivers; Drivers in Config
// is ignored.
type DaemonConfig struct {
	Config
	// PodmanSocket is the Podman API socket (unix:///path). Empty: use
	// CONTAINER_HOST, else start `podman system service` on a socket in the
	// data dir when podman is installed, else run exec tasks only.
	PodmanSocket string
	// DisablePodman runs exec tasks only.
	DisablePodman bool
	// FakeRuntime replaces both drivers by in-memory fakes (for fleet
	// simulation and connectivity tests): tasks "run" without running.
	FakeRuntime bool
	// Fake configures the fakes of FakeRuntime (start latency, crashes);
	// Name and Log are set by RunDaemon.
	Fake fake.Options
}

// RunDaemon sets up the drivers and runs the agent until ctx ends. It
// refuses to start when no desired document could ever be accepted (no
// planner key configured or stored, no enrollment due, no AcceptUnsigned)
// before it starts any driver.
func RunDaemon(ctx context.Context, cfg DaemonConfig) error {
	log := cfg.Log.With().Str("device", cfg.DeviceID).Logger()
	cfg.Drivers = nil
	a, err := New(cfg.Config)
	if err != nil {
		return err
	}
	if cfg.FakeRuntime {
		log.Warn().Msg("fake runtime: tasks are simulated, nothing really runs")
		po, eo := cfg.Fake, cfg.Fake
		po.Name, po.Log = protocol.DriverPodman, log
		eo.Name, eo.Log = protocol.DriverExec, log
		a.setDrivers([]driver.Driver{fake.New(po), fake.New(eo)})
		return a.Run(ctx)
	}
	var drivers []driver.Driver
	ex, err := exec.New(filepath.Join(cfg.DataDir, "exec"), log.With().Str("driver", "exec").Logger())
	if err != nil {
		a.state.close()
		return err
	}
	defer ex.Close()
	drivers = append(drivers, ex)
	if !cfg.DisablePodman {
		pd, err := podman.Connect(ctx, podman.Config{Socket: cfg.PodmanSocket, DataDir: cfg.DataDir, Log: log.With().Str("driver", "podman").Logger()})
		switch {
		case err == nil:
			defer pd.Close()
			drivers = append(drivers, pd)
		case errors.Is(err, podman.ErrUnavailable):
			log.Warn().Err(err).Msg("podman not available: running exec tasks only")
		default:
			log.Error().Err(err).Msg("podman driver failed to start: running exec tasks only")
		}
	}
	a.setDrivers(drivers)
	return a.Run(ctx)
}
