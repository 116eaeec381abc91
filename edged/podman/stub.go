//go:build !remote

package podman

import (
	"context"
	"fmt"
	"time"

	"github.com/tether-edge/tether/edged/driver"
)

// Driver is a placeholder in builds without Podman support; Connect never
// returns one.
type Driver struct{}

var errNoSupport = fmt.Errorf("%w: edged was built without Podman support (build with -tags remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp)", ErrUnavailable)

// Connect always fails: this build has no Podman bindings.
func Connect(context.Context, Config) (*Driver, error) { return nil, errNoSupport }

// Close does nothing.
func (*Driver) Close() error { return nil }

// Name returns "podman".
func (*Driver) Name() string { return "podman" }

// List fails: no Podman support.
func (*Driver) List(context.Context, string) ([]driver.Instance, error) { return nil, errNoSupport }

// Start fails: no Podman support.
func (*Driver) Start(context.Context, driver.Spec) (driver.Instance, error) {
	return driver.Instance{}, errNoSupport
}

// Stop fails: no Podman support.
func (*Driver) Stop(context.Context, string, time.Duration) error { return errNoSupport }

// Remove fails: no Podman support.
func (*Driver) Remove(context.Context, string) error { return errNoSupport }

// Watch fails: no Podman support.
func (*Driver) Watch(context.Context) (<-chan struct{}, error) { return nil, errNoSupport }

var (
	_ driver.Driver  = (*Driver)(nil)
	_ driver.Watcher = (*Driver)(nil)
)
