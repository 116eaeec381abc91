//go:build !remote

package podman_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tether-edge/tether/edged/podman"
)

// TestStub: built without the bindings, Connect says so and wraps
// ErrUnavailable, so edged can run exec-only. The real tests need
// -tags remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp.
func TestStub(t *testing.T) {
	_, err := podman.Connect(context.Background(), podman.Config{})
	if !errors.Is(err, podman.ErrUnavailable) {
		t.Fatalf("Connect = %v, want ErrUnavailable", err)
	}
	t.Log(err)
}
