package podman

import (
	"errors"

	"github.com/rs/zerolog"
)

// ErrUnavailable is wrapped by Connect's error when no Podman service can
// be reached or started (or edged was built without Podman support); edged
// then runs with the exec driver only.
var ErrUnavailable = errors.New("podman unavailable")

// ErrImageNotFound is wrapped by Start's error when the task's image is
// not in local storage. The driver never pulls: edge devices often reach no
// registry, and a pull inside the reconcile loop would stall it.
var ErrImageNotFound = errors.New("image not in local storage")

// Config says how to reach Podman.
type Config struct {
	// Socket is the service URI, unix:///path/podman.sock; empty means
	// $CONTAINER_HOST, and failing that a service started by Connect.
	Socket string
	// DataDir is where a service started by Connect gets its socket
	// (podman.sock) and log (podman-service.log).
	DataDir string
	Log     zerolog.Logger
}
