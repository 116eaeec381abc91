// Package podman is the "podman" driver: it runs tasks as containers
// through the REST API of a Podman service, using the Podman Go bindings.
//
// The bindings only compile with the build tags
// remote,exclude_graphdriver_btrfs,exclude_graphdriver_devicemapper,containers_image_openpgp
// and stay inside this package. Built without the "remote" tag the package
// still compiles, but Connect returns an error wrapping ErrUnavailable, so
// the rest of the tree builds and tests with plain go commands and edged
// runs exec-only.
//
// Connect finds the service in this order: Config.Socket, $CONTAINER_HOST,
// or else a `podman system service` it starts itself on DATADIR/podman.sock
// and stops in Close. Containers are found by their labels (never by
// memory), so a restarted edged adopts the containers that still run.
// Podman never restarts a container (no restart policy is set): edged owns
// restarts. Images are never pulled; they must be in local storage.
package podman
